"""``python -m simulator``: serve one simulated vLLM model until SIGTERM/SIGINT.

It answers chat, completions, responses, embeddings, rerank, score, tokenize and detokenize
like ``vllm serve``. The fault flags set the starting values of what ``POST /sim/faults``
changes at run time (``GET /sim/faults`` shows them).

Prefill costs only the prompt tokens the prefix cache lacks: the first token comes after
--ttft-ms plus uncached tokens / --prefill-tokens-per-s; with --shared-prefill concurrent
prefills take turns on the GPU, in admission order.

Once listening it prints ``SIMULATOR_LISTENING port=<n>`` on stdout (flushed), so a parent that
passed ``--port 0`` learns the port without a race (see :mod:`simulator.process`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from simulator.server import Config, create_app


def _rate(value: str) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction in [0, 1]")
    return rate


def _positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return number


def _status(value: str) -> int:
    status = int(value)
    if not 400 <= status <= 599:
        raise argparse.ArgumentTypeError(f"{value} is not an HTTP error status (400-599)")
    return status


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return number


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Config]:
    d = Config()
    p = argparse.ArgumentParser(prog="python -m simulator",
                                description="\n\n".join(__doc__.split("\n\n")[:3]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--model", default=d.model, help="the one served model name")
    p.add_argument("--ttft-ms", type=float, default=d.ttft_ms,
                   help="time to first token on an idle engine, before prefill cost")
    p.add_argument("--tokens-per-s", type=_positive, default=d.tokens_per_s,
                   help="decode speed of one sequence when it runs alone")
    p.add_argument("--prefill-tokens-per-s", type=_positive, default=d.prefill_tokens_per_s,
                   help="uncached prompt tokens prefilled per second, added to TTFT (e.g. "
                        "8000: a 4,000-token uncached history costs ~500 ms)")
    p.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs,
                   help="sequences in one continuous batch; the rest wait FIFO")
    p.add_argument("--max-model-len", type=int, default=d.max_model_len)
    p.add_argument("--kv-cache-tokens", type=int, default=d.kv_cache_tokens,
                   help="KV-cache capacity in tokens (0: max-num-seqs * 1024), shared by "
                        "running sequences and the prefix cache")
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                   default=d.enable_prefix_caching,
                   help="reuse the KV of cached leading prompt blocks, as vLLM v1 does by "
                        "default; their tokens cost no prefill (default: on)")
    p.add_argument("--block-size", type=_positive_int, default=d.block_size,
                   help="tokens per KV-cache block; only full blocks are cached")
    p.add_argument("--shared-prefill", action=argparse.BooleanOptionalAction,
                   default=d.shared_prefill,
                   help="prefill concurrent requests one after another on one GPU lane, in "
                        "admission order (default: off, each prefills as if alone)")
    p.add_argument("--embedding-dim", type=_positive_int, default=d.embedding_dim,
                   help="length of /v1/embeddings vectors (requests may ask for fewer)")
    p.add_argument("--error-rate", type=_rate, default=d.error_rate,
                   help="fraction of generation and pooling requests answered with "
                        "--error-status before any byte")
    p.add_argument("--error-status", type=_status, default=d.error_status,
                   help="HTTP status of those injected errors (e.g. 429, 503)")
    p.add_argument("--mid-stream-error-rate", type=_rate, default=d.mid_stream_error_rate,
                   help="fraction of streams cut halfway with vLLM's in-stream error event")
    p.add_argument("--ttfb-delay-ms", type=_non_negative, default=d.ttfb_delay_ms,
                   help="extra wait before the first byte of every generation and pooling "
                        "request (to trip a gateway's time-to-first-byte timeout)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seeds generated text and fault injection")
    args = p.parse_args(argv)
    config = Config(model=args.model, ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s,
                    prefill_tokens_per_s=args.prefill_tokens_per_s,
                    max_num_seqs=max(1, args.max_num_seqs), max_model_len=args.max_model_len,
                    kv_cache_tokens=args.kv_cache_tokens,
                    enable_prefix_caching=args.enable_prefix_caching,
                    block_size=args.block_size, shared_prefill=args.shared_prefill,
                    error_rate=args.error_rate,
                    error_status=args.error_status,
                    mid_stream_error_rate=args.mid_stream_error_rate,
                    ttfb_delay_ms=args.ttfb_delay_ms, embedding_dim=args.embedding_dim,
                    seed=args.seed)
    return args, config


async def serve(host: str, port: int, config: Config) -> None:
    """Run until SIGTERM/SIGINT; open streams get a short grace period, then are cut."""
    from aiohttp import web

    runner = web.AppRunner(create_app(config), handler_cancellation=True, access_log=None,
                           shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    print(f"SIMULATOR_LISTENING port={bound}", flush=True)
    print(f"simulator: serving {config.model!r} on http://{host}:{bound}", file=sys.stderr,
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args, config = parse_args(argv)
    try:
        import uvloop
    except ImportError:  # still works, just slower
        asyncio.run(serve(args.host, args.port, config))
    else:
        uvloop.run(serve(args.host, args.port, config))


if __name__ == "__main__":
    main()
