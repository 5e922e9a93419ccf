"""A vLLM-compatible simulated backend.

It speaks the same HTTP API as ``vllm serve`` (OpenAI routes, SSE framing, usage, /tokenize,
/metrics) with a continuous-batching timing model and deterministic text, so the gateway can be
developed, tested and benchmarked without a GPU. Run it with ``python -m simulator``; start real
subprocesses from tests with :class:`simulator.process.SimulatorProcess`.
"""
