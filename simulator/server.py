"""HTTP routes of the simulated vLLM server (aiohttp).

Handlers validate like vLLM's OpenAI server (4xx in its error shape, unknown fields ignored, a
foreign ``model`` is a 404), generate the whole deterministic answer up front, then pace its
delivery with the engine's timing model. Client disconnects cancel the handler
(``handler_cancellation=True``), and the ``async with engine.sequence(...)`` block gives the
batch slot back on the way out.

Routes, as ``vllm serve`` has them:

- generation: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/responses`` (OpenAI
  Responses API, streamed as ``event:``/``data:`` SSE);
- pooling: ``POST /v1/embeddings``, ``/v1/rerank`` (also ``/rerank``, ``/v2/rerank``),
  ``/v1/score`` (also ``/score``): they queue and prefill in the same engine, generate nothing;
- ``POST /tokenize``, ``/detokenize``, ``GET /v1/models``, ``/health``, ``/metrics``,
  ``/version``;
- simulator only: ``GET /sim/stats`` (requests per path, prefix-cache counters),
  ``GET``/``POST /sim/faults`` (injected errors and delays, see :mod:`simulator.faults`).

Generation requests go through the prefix cache (:mod:`simulator.prefix_cache`) unless
``enable_prefix_caching`` is off: only their uncached prompt tokens cost prefill time, and the
blocks of prompt and answer stay cached for the next turn. Pooling requests skip the cache, as
vLLM does not prefix-cache pooling models by default, and pay their whole prefill.

Faults hit every generation and pooling route after validation: ``ttfb_delay_ms`` first, then
``error_rate`` (an ``error_status`` answer before any byte); ``mid_stream_error_rate`` cuts
streams (chat, completions, responses) halfway.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from simulator import pooling, responses, text, wire
from simulator.engine import Engine, Sequence, TimingModel
from simulator.faults import FaultError, Faults, error_type
from simulator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from simulator.metrics import MetricsRenderer
from simulator.parsing import (
    ApiError,
    GenRequest,
    Prompt,
    bad,
    check_pool_lengths,
    common,
    completion_prompts,
    embed_request,
    messages_prompt,
    rerank_request,
    responses_request,
    score_pairs,
    token_list,
)
from simulator.prefix_cache import DEFAULT_BLOCK_SIZE, PromptBlocks

__all__ = ["ApiError", "Config", "Simulator", "create_app"]

_MID_STREAM_MESSAGE = "Simulated engine failure (--mid-stream-error-rate)."


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
    enable_prefix_caching: bool = True
    block_size: int = DEFAULT_BLOCK_SIZE
    shared_prefill: bool = False
    error_rate: float = 0.0
    error_status: int = 500
    mid_stream_error_rate: float = 0.0
    ttfb_delay_ms: float = 0.0
    embedding_dim: int = 384
    seed: int = 0


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


class Simulator:
    """Route handlers plus the state they share (engine, faults, metrics)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        kv = config.kv_cache_tokens or config.max_num_seqs * 1024
        self.engine = Engine(
            timing=TimingModel(ttft_s=config.ttft_ms / 1000.0,
                               token_interval_s=1.0 / config.tokens_per_s,
                               prefill_s_per_token=1.0 / config.prefill_tokens_per_s,
                               shared_prefill=config.shared_prefill),
            max_num_seqs=config.max_num_seqs, kv_capacity_tokens=kv,
            prefix_caching=config.enable_prefix_caching, block_size=config.block_size)
        self.metrics = MetricsRenderer(self.engine, config.model)
        self.faults = Faults(error_rate=config.error_rate, error_status=config.error_status,
                             mid_stream_error_rate=config.mid_stream_error_rate,
                             ttfb_delay_ms=config.ttfb_delay_ms, seed=config.seed)
        self.created = int(time.time())

    # -- shared steps

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise bad(f"Invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise bad("The request body must be a JSON object")
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
                raise bad(f"This model's maximum context length is {limit} tokens. However, "
                          f"your request has {longest} input tokens. Please reduce the length "
                          "of the input messages.")
            return limit - longest
        if longest + req.max_tokens > limit:
            raise bad(f"This model's maximum context length is {limit} tokens. However, you "
                      f"requested {longest + req.max_tokens} tokens ({longest} in the messages, "
                      f"{req.max_tokens} in the completion). Please reduce the length of the "
                      "messages or completion.")
        return req.max_tokens

    async def _fault_gate(self) -> web.Response | None:
        """The faults that strike before the first byte: the delay, then maybe an error."""
        faults = self.faults
        if faults.ttfb_delay_ms > 0:
            await asyncio.sleep(faults.ttfb_delay_ms / 1000.0)
        if faults.fail_now():
            status = faults.error_status
            return ApiError(status, f"Simulated engine failure (error_rate={faults.error_rate}).",
                            error_type(status)).response()
        return None

    def _generate(self, req: GenRequest, max_tokens: int) -> list[text.Completion]:
        seed = self.config.seed if req.seed is None else hash((self.config.seed, req.seed))
        return [text.complete(p.text, seed=seed, index=i, max_tokens=max_tokens, stop=req.stop,
                              min_tokens=req.min_tokens, ignore_eos=req.ignore_eos)
                for p in req.prompts for i in range(req.n)]

    def _blocks(self, prompts: list[Prompt]) -> list[PromptBlocks] | None:
        """The prompts as the prefix cache sees them (None when caching is off)."""
        cache = self.engine.cache
        if cache is None:
            return None
        size = cache.block_size
        return [PromptBlocks.from_ids(p.ids, size) if p.ids is not None
                else PromptBlocks.from_text(p.text, p.tokens, size) for p in prompts]

    async def _prefill(self, prompt_tokens: int) -> None:
        """A pooling request's engine time: queue for a slot, prefill, produce no tokens."""
        async with self.engine.sequence(prompt_tokens, 1) as seq:
            await seq.prefill()
            seq.finish_reason = "stop"

    # -- chat and text completions

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            req = common(body, [messages_prompt(body)], ("max_completion_tokens", "max_tokens"))
            max_tokens = self._limit_tokens(req)
        except ApiError as err:
            return err.response()
        return await self._serve(request, req, max_tokens, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            req = common(body, completion_prompts(body), ("max_tokens",))
            if req.max_tokens is None:
                req.max_tokens = 16  # OpenAI/vLLM default for text completions
            max_tokens = self._limit_tokens(req)
        except ApiError as err:
            return err.response()
        return await self._serve(request, req, max_tokens, chat=False)

    async def _serve(self, request: web.Request, req: GenRequest, max_tokens: int, *,
                     chat: bool) -> web.StreamResponse:
        failure = await self._fault_gate()
        if failure is not None:
            return failure
        outputs = self._generate(req, max_tokens)
        prompt_tokens = sum(p.tokens for p in req.prompts)
        if req.stream:
            return await self._stream(request, req, outputs, prompt_tokens, chat=chat)
        completion_tokens = sum(len(o.pieces) for o in outputs)
        async with self._sequence(req.prompts, outputs) as seq:
            await seq.run_to_end(max(len(o.pieces) for o in outputs))
            seq.finish_reason = outputs[0].finish_reason
        build = wire.chat_response if chat else wire.completion_response
        return _json(build(model=self.config.model,
                           choices=[(o.text, o.finish_reason, o.stop_reason) for o in outputs],
                           prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))

    def _sequence(self, prompts: list[Prompt], outputs: list[text.Completion]) -> Sequence:
        """The engine sequence of a generation request, through the prefix cache."""
        return self.engine.sequence(sum(p.tokens for p in prompts), len(outputs),
                                    prompts=self._blocks(prompts),
                                    outputs=[o.pieces for o in outputs])

    def _break_point(self, total: int) -> int:
        """Where a stream is cut (0: it is not), drawn once per stream."""
        return max(1, total // 2) if self.faults.break_now() else 0

    async def _stream(self, request: web.Request, req: GenRequest,
                      outputs: list[text.Completion], prompt_tokens: int, *,
                      chat: bool) -> web.StreamResponse:
        w = wire.StreamWire(chat=chat, model=self.config.model, prompt_tokens=prompt_tokens,
                            continuous_usage=req.continuous_usage)
        total = max(len(o.pieces) for o in outputs)
        break_at = self._break_point(total)
        resp = web.StreamResponse(headers={"Content-Type": wire.SSE_CONTENT_TYPE})
        await resp.prepare(request)  # vLLM sends headers before the first token
        try:
            async with self._sequence(req.prompts, outputs) as seq:
                emitted = 0
                while emitted < total:
                    step = await seq.advance((break_at or total) - emitted)
                    opening = chat and not emitted
                    chunks = [w.role(i) for i in range(len(outputs))] if opening else []
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
                        chunks += [wire.error_event(_MID_STREAM_MESSAGE), wire.DONE]
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

    # -- the Responses API

    async def responses(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            req = responses_request(body)
            max_tokens = self._limit_tokens(req)
        except ApiError as err:
            return err.response()
        failure = await self._fault_gate()
        if failure is not None:
            return failure
        out = self._generate(req, max_tokens)[0]
        builder = responses.ResponseBuilder(model=self.config.model, body=body,
                                            max_output_tokens=max_tokens)
        prompt_tokens = req.prompts[0].tokens
        if req.stream:
            return await self._stream_response(request, builder, out, req.prompts)
        async with self._sequence(req.prompts, [out]) as seq:
            await seq.run_to_end(len(out.pieces))
            seq.finish_reason = out.finish_reason
        return _json(orjson.dumps(builder.final(out.text, out.finish_reason, prompt_tokens,
                                                len(out.pieces))))

    async def _stream_response(self, request: web.Request, builder: responses.ResponseBuilder,
                               out: text.Completion, prompts: list[Prompt]
                               ) -> web.StreamResponse:
        """created + in_progress at once; the item opens with the first token; one delta event
        per non-empty token; the closing events and ``response.completed`` (with usage) last."""
        w = responses.ResponseStream(builder)
        prompt_tokens = prompts[0].tokens
        pieces, total = out.pieces, len(out.pieces)
        break_at = self._break_point(total)
        resp = web.StreamResponse(headers={"Content-Type": wire.SSE_CONTENT_TYPE})
        await resp.prepare(request)
        try:
            await resp.write(w.opening())
            async with self._sequence(prompts, [out]) as seq:
                emitted = 0
                while emitted < total:
                    step = await seq.advance((break_at or total) - emitted)
                    chunks = [] if emitted else [w.item_added()]
                    chunks += [w.delta(p) for p in pieces[emitted:emitted + step] if p]
                    emitted += step
                    if break_at and emitted >= break_at:
                        await resp.write(b"".join(chunks) + w.error(_MID_STREAM_MESSAGE))
                        return resp  # sequence leaves as an abort
                    await resp.write(b"".join(chunks))
                seq.finish_reason = out.finish_reason
            await resp.write(w.closing(out.text, out.finish_reason, prompt_tokens, total))
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return resp

    # -- pooling: embeddings, rerank, score

    async def embeddings(self, request: web.Request) -> web.Response:
        dim = self.config.embedding_dim
        try:
            req = embed_request(await self._body(request), dim)
            check_pool_lengths([p.tokens for p in req.prompts], self.config.max_model_len)
        except ApiError as err:
            return err.response()
        failure = await self._fault_gate()
        if failure is not None:
            return failure
        prompt_tokens = sum(p.tokens for p in req.prompts)
        await self._prefill(prompt_tokens)
        vectors = [pooling.embed(p.text, dim, req.dimensions) for p in req.prompts]
        data: list[list[float] | str] = (
            [pooling.to_base64(v) for v in vectors] if req.base64 else list(vectors))
        return _json(wire.embedding_response(model=self.config.model, embeddings=data,
                                             prompt_tokens=prompt_tokens))

    async def rerank(self, request: web.Request) -> web.Response:
        try:
            req = rerank_request(await self._body(request))
            counts = [text.count_tokens(req.query) + text.count_tokens(d) for d in req.documents]
            check_pool_lengths(counts, self.config.max_model_len)
        except ApiError as err:
            return err.response()
        failure = await self._fault_gate()
        if failure is not None:
            return failure
        await self._prefill(sum(counts))
        scores = [pooling.overlap(req.query, d) for d in req.documents]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties by index
        if 0 < req.top_n < len(order):
            order = order[:req.top_n]
        results = [self._rerank_result(i, req.documents[i], scores[i], req.return_documents)
                   for i in order]
        return _json(wire.rerank_response(model=self.config.model, results=results,
                                          prompt_tokens=sum(counts)))

    @staticmethod
    def _rerank_result(index: int, document: str, score: float,
                       with_document: bool) -> dict[str, Any]:
        result: dict[str, Any] = {"index": index}
        if with_document:
            result["document"] = {"text": document, "multi_modal": None}
        result["relevance_score"] = score
        return result

    async def score(self, request: web.Request) -> web.Response:
        try:
            pairs = score_pairs(await self._body(request))
            counts = [text.count_tokens(a) + text.count_tokens(b) for a, b in pairs]
            check_pool_lengths(counts, self.config.max_model_len)
        except ApiError as err:
            return err.response()
        failure = await self._fault_gate()
        if failure is not None:
            return failure
        await self._prefill(sum(counts))
        return _json(wire.score_response(model=self.config.model,
                                         scores=[pooling.overlap(a, b) for a, b in pairs],
                                         prompt_tokens=sum(counts)))

    # -- other vLLM routes

    async def models(self, request: web.Request) -> web.Response:
        return _json(wire.models_response(model=self.config.model,
                                          max_model_len=self.config.max_model_len,
                                          created=self.created))

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def tokenize(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            if "messages" in body:
                prompt = messages_prompt(body).text
            elif isinstance(body.get("prompt"), str):
                prompt = body["prompt"]
            else:
                raise bad("Either prompt (a string) or messages is required", "prompt")
        except ApiError as err:
            return err.response()
        ids = text.token_ids(prompt)
        return _json(wire.dumps({"count": len(ids), "max_model_len": self.config.max_model_len,
                                 "tokens": ids, "token_strs": None}))

    async def detokenize(self, request: web.Request) -> web.Response:
        """The inverse of ``/tokenize``: ids it handed out decode to the exact text."""
        try:
            ids = token_list((await self._body(request)).get("tokens"), "tokens")
        except ApiError as err:
            return err.response()
        return _json(wire.dumps({"prompt": text.detokenize(ids)}))

    async def metrics_route(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def version(self, request: web.Request) -> web.Response:
        return _json(b'{"version":"0.0.0+simulator"}')

    # -- simulator controls

    async def get_faults(self, request: web.Request) -> web.Response:
        return _json(orjson.dumps(self.faults.as_dict()))

    async def set_faults(self, request: web.Request) -> web.Response:
        """Change some fault settings at once; answers with all of them as they now are."""
        try:
            body = orjson.loads(await request.read())
            self.faults.update(body)
        except (orjson.JSONDecodeError, FaultError) as exc:
            return bad(str(exc)).response()
        return _json(orjson.dumps(self.faults.as_dict()))


def _request_counter(counts: dict[str, int]):
    """Counts every request by path before any handler or validation runs, so a test can
    prove that a request never reached this backend (``GET /sim/stats``)."""

    @web.middleware
    async def count(request: web.Request, handler):
        counts[request.path] = counts.get(request.path, 0) + 1
        return await handler(request)

    return count


def _add_routes(app: web.Application, sim: Simulator) -> None:
    post = app.router.add_post
    post("/v1/chat/completions", sim.chat_completions)
    post("/v1/completions", sim.completions)
    post("/v1/responses", sim.responses)
    post("/v1/embeddings", sim.embeddings)
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        post(path, sim.rerank)
    for path in ("/v1/score", "/score"):
        post(path, sim.score)
    post("/tokenize", sim.tokenize)
    post("/detokenize", sim.detokenize)
    app.router.add_get("/v1/models", sim.models)
    app.router.add_get("/health", sim.health)
    app.router.add_get("/metrics", sim.metrics_route)
    app.router.add_get("/version", sim.version)
    app.router.add_get("/sim/faults", sim.get_faults)
    post("/sim/faults", sim.set_faults)


def create_app(config: Config) -> web.Application:
    """The aiohttp application; ``app["simulator"]`` exposes the state (engine, config)."""
    sim = Simulator(config)
    counts: dict[str, int] = {}
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_request_counter(counts)])
    app["request_counts"] = counts

    async def stats(request: web.Request) -> web.Response:
        cache = sim.engine.cache
        return _json(orjson.dumps({"requests": counts,
                                   "prefix_cache": cache.as_dict() if cache else None}))

    app.router.add_get("/sim/stats", stats)
    app["simulator"] = sim
    _add_routes(app, sim)
    return app
