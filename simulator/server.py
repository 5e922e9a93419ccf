"""HTTP routes of the simulated vLLM server (aiohttp).

Handlers validate like vLLM's OpenAI server (4xx in its error shape, unknown fields ignored),
generate the whole deterministic answer up front, then pace its delivery with the engine's
timing model. Client disconnects cancel the handler (``handler_cancellation=True``), and the
``async with engine.sequence(...)`` block gives the batch slot back on the way out.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from simulator import text, wire
from simulator.engine import Engine, TimingModel
from simulator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from simulator.metrics import MetricsRenderer

@dataclass(frozen=True)
class Config:
    """Everything the CLI can set; defaults give a fast, well-behaved backend."""

    model: str = "sim-model"
    ttft_ms: float = 20.0
    tokens_per_s: float = 200.0
    prefill_tokens_per_s: float = 50_000.0
    max_num_seqs: int = 256
    max_model_len: int = 8192
    kv_cache_tokens: int = 0  # 0: max_num_seqs * 1024
    error_rate: float = 0.0
    mid_stream_error_rate: float = 0.0
    seed: int = 0


class ApiError(Exception):
    """A 4xx/5xx in vLLM's error shape, raised anywhere during validation."""

    def __init__(self, status: int, message: str, err_type: str = "BadRequestError",
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.err_type, self.param = status, message, err_type, param

    def response(self) -> web.Response:
        return web.Response(status=self.status, content_type="application/json",
                            body=wire.error_body(self.message, self.err_type, self.status,
                                                 self.param))


@dataclass
class Prompt:
    """One prompt as the model sees it: text for seeding, token count for usage."""

    text: str
    tokens: int


@dataclass
class GenRequest:
    """The validated fields of a chat or text completion request that the simulator uses."""

    prompts: list[Prompt]
    n: int
    max_tokens: int | None
    stop: list[str]
    stream: bool
    include_usage: bool
    continuous_usage: bool
    seed: int | None
    min_tokens: int
    ignore_eos: bool


# ---- validation helpers ---------------------------------------------------------------------

def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "BadRequestError", param)


def _opt_int(body: dict[str, Any], key: str, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{key} must be an integer, got {value!r}", key)
    if value < minimum:
        raise _bad(f"{key} must be at least {minimum}, got {value}.", key)
    return value


def _stop_list(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise _bad("stop must be a string or a list of strings", "stop")


def _common(body: dict[str, Any], prompts: list[Prompt], max_tokens_keys: tuple[str, ...]
            ) -> GenRequest:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream must be a boolean", "stream")
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise _bad("stream_options must be an object", "stream_options")
        if not stream:
            raise _bad("Stream options can only be defined when `stream=True`.", "stream_options")
    include_usage = bool(opts and opts.get("include_usage"))
    max_tokens = None
    for key in max_tokens_keys:
        max_tokens = _opt_int(body, key, 1)
        if max_tokens is not None:
            break
    n = _opt_int(body, "n", 1) or 1
    return GenRequest(prompts=prompts, n=n, max_tokens=max_tokens, stop=_stop_list(body),
                      stream=stream, include_usage=include_usage,
                      continuous_usage=include_usage and bool(opts.get("continuous_usage_stats")),
                      seed=_opt_int(body, "seed", -(2 ** 63)),
                      min_tokens=_opt_int(body, "min_tokens", 0) or 0,
                      ignore_eos=body.get("ignore_eos") is True)


def _messages_prompt(body: dict[str, Any]) -> Prompt:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list of messages", "messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad("each message must be an object with a string 'role'", "messages")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _bad("message content must be a string or a list of parts", "messages")
    rendered = text.render_chat(messages, bool(body.get("add_generation_prompt", True)))
    return Prompt(rendered, text.count_tokens(rendered))


def _completion_prompts(body: dict[str, Any]) -> list[Prompt]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [Prompt(prompt, text.count_tokens(prompt))]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [Prompt(p, text.count_tokens(p)) for p in prompt]
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [Prompt(repr(prompt), len(prompt))]
        if all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt):
            return [Prompt(repr(p), len(p)) for p in prompt]
    raise _bad("prompt must be a string, a list of strings, or a list of token ids", "prompt")


# ---- the app ---------------------------------------------------------------------------------

class Simulator:
    """Route handlers plus the state they share (engine, fault RNGs, metrics)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        kv = config.kv_cache_tokens or config.max_num_seqs * 1024
        self.engine = Engine(
            timing=TimingModel(ttft_s=config.ttft_ms / 1000.0,
                               token_interval_s=1.0 / config.tokens_per_s,
                               prefill_s_per_token=1.0 / config.prefill_tokens_per_s),
            max_num_seqs=config.max_num_seqs, kv_capacity_tokens=kv)
        self.metrics = MetricsRenderer(self.engine, config.model)
        # Separate streams so the error sequence doesn't shift when mid-stream faults change.
        self._error_rng = random.Random(config.seed)
        self._break_rng = random.Random(config.seed + 1)
        self.created = int(time.time())

    # -- shared steps

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise _bad(f"Invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise _bad("The request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.config.model:
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
        return body

    def _limit_tokens(self, req: GenRequest) -> int:
        """Apply max_model_len the way vLLM does: reject overflow, default to what is left."""
        limit = self.config.max_model_len
        longest = max(p.tokens for p in req.prompts)
        if req.max_tokens is None:
            if longest >= limit:
                raise _bad(f"This model's maximum context length is {limit} tokens. However, "
                           f"your request has {longest} input tokens. Please reduce the length "
                           "of the input messages.")
            return limit - longest
        if longest + req.max_tokens > limit:
            raise _bad(f"This model's maximum context length is {limit} tokens. However, you "
                       f"requested {longest + req.max_tokens} tokens ({longest} in the messages, "
                       f"{req.max_tokens} in the completion). Please reduce the length of the "
                       "messages or completion.")
        return req.max_tokens

    def _injected_failure(self) -> web.Response | None:
        rate = self.config.error_rate
        if rate > 0 and self._error_rng.random() < rate:
            return ApiError(500, "Simulated engine failure (--error-rate).",
                            "InternalServerError").response()
        return None

    def _generate(self, req: GenRequest, max_tokens: int) -> list[text.Completion]:
        seed = self.config.seed if req.seed is None else hash((self.config.seed, req.seed))
        return [text.complete(p.text, seed=seed, index=i, max_tokens=max_tokens, stop=req.stop,
                              min_tokens=req.min_tokens, ignore_eos=req.ignore_eos)
                for p in req.prompts for i in range(req.n)]

    # -- generation endpoints

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            req = _common(body, [_messages_prompt(body)], ("max_completion_tokens", "max_tokens"))
            max_tokens = self._limit_tokens(req)
        except ApiError as err:
            return err.response()
        return await self._serve(request, req, max_tokens, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            req = _common(body, _completion_prompts(body), ("max_tokens",))
            if req.max_tokens is None:
                req.max_tokens = 16  # OpenAI/vLLM default for text completions
            max_tokens = self._limit_tokens(req)
        except ApiError as err:
            return err.response()
        return await self._serve(request, req, max_tokens, chat=False)

    async def _serve(self, request: web.Request, req: GenRequest, max_tokens: int, *,
                     chat: bool) -> web.StreamResponse:
        failure = self._injected_failure()
        if failure is not None:
            return failure
        outputs = self._generate(req, max_tokens)
        prompt_tokens = sum(p.tokens for p in req.prompts)
        if req.stream:
            return await self._stream(request, req, outputs, prompt_tokens, chat=chat)
        completion_tokens = sum(len(o.pieces) for o in outputs)
        async with self.engine.sequence(prompt_tokens, len(outputs)) as seq:
            await seq.run_to_end(max(len(o.pieces) for o in outputs))
            seq.finish_reason = outputs[0].finish_reason
        build = wire.chat_response if chat else wire.completion_response
        body = build(model=self.config.model,
                     choices=[(o.text, o.finish_reason, o.stop_reason) for o in outputs],
                     prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        return web.Response(body=body, content_type="application/json")

    async def _stream(self, request: web.Request, req: GenRequest,
                      outputs: list[text.Completion], prompt_tokens: int, *,
                      chat: bool) -> web.StreamResponse:
        w = wire.StreamWire(chat=chat, model=self.config.model, prompt_tokens=prompt_tokens,
                            continuous_usage=req.continuous_usage)
        total = max(len(o.pieces) for o in outputs)
        break_at = 0
        rate = self.config.mid_stream_error_rate
        if rate > 0 and self._break_rng.random() < rate:
            break_at = max(1, total // 2)
        resp = web.StreamResponse(headers={"Content-Type": wire.SSE_CONTENT_TYPE})
        await resp.prepare(request)  # vLLM sends headers before the first token
        try:
            async with self.engine.sequence(prompt_tokens, len(outputs)) as seq:
                emitted = 0
                while emitted < total:
                    step = await seq.advance((break_at or total) - emitted)
                    chunks = [w.role(i) for i in range(len(outputs))] if chat and not emitted else []
                    for t in range(emitted, emitted + step):
                        for i, out in enumerate(outputs):
                            pieces = out.pieces
                            if t < len(pieces) - 1:
                                if pieces[t]:
                                    chunks.append(w.token(i, pieces[t], t + 1))
                            elif t == len(pieces) - 1:
                                chunks.append(w.final(i, pieces[t], out.finish_reason,
                                                      out.stop_reason, t + 1))
                    emitted += step
                    if break_at and emitted >= break_at:
                        chunks.append(wire.error_event("Simulated engine failure "
                                                       "(--mid-stream-error-rate)."))
                        chunks.append(wire.DONE)
                        await resp.write(b"".join(chunks))
                        return resp  # sequence leaves as an abort
                    await resp.write(b"".join(chunks))
                seq.finish_reason = outputs[0].finish_reason
            tail = [w.usage(sum(len(o.pieces) for o in outputs))] if req.include_usage else []
            tail.append(wire.DONE)
            await resp.write(b"".join(tail))
            await resp.write_eof()
        except ConnectionResetError:
            pass  # client went away; the sequence was released as an abort
        return resp

    # -- other vLLM routes

    async def models(self, request: web.Request) -> web.Response:
        return web.Response(body=wire.models_response(
            model=self.config.model, max_model_len=self.config.max_model_len,
            created=self.created), content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def tokenize(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            if "messages" in body:
                prompt = _messages_prompt(body).text
            elif isinstance(body.get("prompt"), str):
                prompt = body["prompt"]
            else:
                raise _bad("Either prompt (a string) or messages is required", "prompt")
        except ApiError as err:
            return err.response()
        ids = text.token_ids(prompt)
        return web.Response(body=wire.dumps({
            "count": len(ids), "max_model_len": self.config.max_model_len, "tokens": ids,
            "token_strs": None}), content_type="application/json")

    async def metrics_route(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def version(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"version":"0.0.0+simulator"}',
                            content_type="application/json")


def _request_counter(counts: dict[str, int]):
    """Counts every request by path before any handler or validation runs, so a test can
    prove that a request never reached this backend (``GET /sim/stats``)."""

    @web.middleware
    async def count(request: web.Request, handler):
        counts[request.path] = counts.get(request.path, 0) + 1
        return await handler(request)

    return count


def create_app(config: Config) -> web.Application:
    """The aiohttp application; ``app["simulator"]`` exposes the state (engine, config)."""
    sim = Simulator(config)
    counts: dict[str, int] = {}
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_request_counter(counts)])
    app["request_counts"] = counts

    async def stats(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"requests": counts}),
                            content_type="application/json")

    app.router.add_get("/sim/stats", stats)
    app["simulator"] = sim
    app.router.add_post("/v1/chat/completions", sim.chat_completions)
    app.router.add_post("/v1/completions", sim.completions)
    app.router.add_get("/v1/models", sim.models)
    app.router.add_get("/health", sim.health)
    app.router.add_post("/tokenize", sim.tokenize)
    app.router.add_get("/metrics", sim.metrics_route)
    app.router.add_get("/version", sim.version)
    return app
