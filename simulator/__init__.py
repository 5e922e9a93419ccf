"""A vLLM-compatible simulated backend.

It speaks the same HTTP API as ``vllm serve`` (OpenAI chat, completions, responses,
embeddings, rerank and score routes, SSE framing, usage, /tokenize, /detokenize, /metrics) with
a continuous-batching timing model and deterministic text, so the gateway can be developed,
tested and benchmarked without a GPU. Run it with ``python -m simulator``; start real
subprocesses from tests with :class:`simulator.process.SimulatorProcess`.
"""
