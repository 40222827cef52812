"""An emulated vLLM pod: OpenAI HTTP server in front of the engine model, paced in real time.

One asyncio task per pod runs the engine: `step()`, sleep the step's duration times `time_scale`,
hand the step's tokens to the waiting handlers. Engine time is the emulated clock; an idle engine
catches up with the wall clock when work arrives, so metrics read as a real pod's would, in
emulated seconds. Many pods can share one process and one event loop, and may share a `clock`
instead (see `EmulatedClock`).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sagesched.emulator.metrics import PodMetrics
from sagesched.emulator.protocol import (
    APIError,
    ParsedRequest,
    ResponseShape,
    check_context,
    models_body,
    parse_request,
    usage,
)
from sagesched.emulator.text import generated_text, token_text
from sagesched.engine import DEFAULT_PROFILE, Engine, EngineRequest, StepOutcome, load_profile
from sagesched.http_serve import serve_app


@dataclass(frozen=True)
class PodConfig:
    """Settings of one emulated pod (the CLI flags map onto these)."""

    model: str = "llama-3-8b"
    profile: str = DEFAULT_PROFILE
    scheduling: str = "fcfs"
    max_queue: int | None = 1024  # waiting requests beyond which new ones get 429
    seed: int = 0
    time_scale: float = 1.0  # wall seconds per emulated second; 0.01 runs 100x faster
    metrics_flavor: str = "vllm"
    output_median: float = 256.0  # lognormal output length when the client does not force it
    output_sigma: float = 1.0
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port


# (request body, its engine request: emulated arrival, first-token and finish times fill in as it is served)
RequestObserver = Callable[[dict, EngineRequest], None]


class EmulatedClock(Protocol):
    """A clock in emulated seconds that pods can share instead of their own wall-derived one (the
    demo's stops while the host is stalled). `sleep_until(t)` returns once `now() >= t`."""

    def now(self) -> float: ...

    async def sleep_until(self, t: float) -> None: ...


class _Stream:
    """Hand-off between the engine loop and one request's handler."""

    __slots__ = ("req", "ready", "delivered", "done", "last_token_time")

    def __init__(self, req: EngineRequest) -> None:
        self.req = req
        self.ready = asyncio.Event()
        self.delivered = 0
        self.done = False
        self.last_token_time = 0.0


class EmulatedPod:
    """`async with EmulatedPod(PodConfig(...)) as pod:` serves at `pod.base_url` until exit."""

    def __init__(self, config: PodConfig | None = None) -> None:
        self.config = config or PodConfig()
        self.profile = load_profile(self.config.profile)
        self.engine = Engine(self.profile, self.config.scheduling, seed=self.config.seed)
        self.metrics = PodMetrics(self.engine, self.config.model, self.config.metrics_flavor)
        self.port = self.config.port
        self._streams: dict[str, _Stream] = {}
        self._next_id = 0
        self._created = int(time.time())
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._runner: web.AppRunner | None = None
        self._wall0 = 0.0
        # Called as each request is admitted: lets an in-process harness read the engine's own
        # (emulated) timings of each request once it is served (sagesched demo).
        self.on_request_admitted: RequestObserver | None = None
        # None: emulated time is (loop time - start) / time_scale. Set before the first request.
        self.clock: EmulatedClock | None = None

    @property
    def base_url(self) -> str:
        """Server root; the OpenAI client's base_url is this plus "/v1"."""
        return f"http://{self.config.host}:{self.port}"

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> "EmulatedPod":
        loop = asyncio.get_running_loop()
        self._wall0 = loop.time()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._loop_task = asyncio.create_task(self._run_engine(), name=f"engine:{self.config.port}")
        self._runner, self.port = await serve_app(self._app(), self.config.host, self.config.port,
                                                  handler_cancellation=True)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    async def wait_idle(self) -> None:
        """Return once the engine has no request left (finished or aborted)."""
        await self._idle.wait()

    async def __aenter__(self) -> "EmulatedPod":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    # --- engine loop ----------------------------------------------------------------------------------------
    def _emulated_now(self) -> float:
        if self.clock is not None:
            return self.clock.now()
        return (asyncio.get_running_loop().time() - self._wall0) / self.config.time_scale

    async def _run_engine(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.engine.has_work:
                self._wake.clear()
                self._idle.set()
                await self._wake.wait()
            out = self.engine.step()
            if self.clock is not None:
                await self.clock.sleep_until(self.engine.now)
            else:  # pace against the wall clock; a host that cannot keep up just runs behind
                await asyncio.sleep(max(0.0, self._wall0 + self.engine.now * self.config.time_scale - loop.time()))
            self._deliver(out)

    def _deliver(self, out: StepOutcome) -> None:
        now = self.engine.now
        for rid, n in out.tokens.items():
            stream = self._streams.get(rid)
            if stream is None:
                continue  # aborted while the step ran
            if stream.delivered:
                self.metrics.on_token_gap(now - stream.last_token_time)
            else:
                self.metrics.on_first_token(stream.req)
            stream.delivered += n
            stream.last_token_time = now
            stream.ready.set()
        for req in out.finished:
            self.metrics.on_finish(req)
            stream = self._streams.get(req.request_id)
            if stream is not None:
                stream.done = True
                stream.ready.set()

    # --- requests -------------------------------------------------------------------------------------------
    def _output_length(self, parsed: ParsedRequest) -> int:
        if parsed.ignore_eos:
            return parsed.max_tokens or self.profile.max_model_len - parsed.prompt_tokens
        drawn = self.engine.rng.lognormal(math.log(self.config.output_median), self.config.output_sigma)
        return max(1, parsed.min_tokens, int(round(drawn)))

    def _admit(self, parsed: ParsedRequest) -> _Stream:
        if parsed.model != self.config.model:
            raise APIError(404, f"The model `{parsed.model}` does not exist.", "NotFoundError", "model")
        check_context(parsed, self.profile.max_model_len)
        if parsed.priority != 0 and self.config.scheduling != "priority":
            raise APIError(400, f"Got priority {parsed.priority} but Priority scheduling is not enabled.",
                           param="priority")
        if self.config.max_queue is not None and self.engine.num_waiting >= self.config.max_queue:
            raise APIError(429, "The server is at its queue limit; retry later.", "RateLimitError")
        emulated_now = self._emulated_now()
        if not self.engine.has_work:
            self.engine.idle_until(emulated_now)
        self._next_id += 1
        req = EngineRequest(f"req-{self._next_id}", parsed.prompt_tokens, self._output_length(parsed),
                            parsed.max_tokens, parsed.priority, arrival=min(emulated_now, self.engine.now),
                            cache_key=parsed.cache_key, previously_computed=parsed.previously_computed)
        self.engine.add_request(req)
        stream = self._streams[req.request_id] = _Stream(req)
        self._idle.clear()
        self._wake.set()
        return stream

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await self._json(request)
            parsed = parse_request(body, chat)
            stream = self._admit(parsed)
        except APIError as err:
            return web.json_response(err.body(), status=err.status)
        try:
            if self.on_request_admitted is not None:
                self.on_request_admitted(body, stream.req)
            if parsed.stream:
                return await self._respond_streaming(request, parsed, stream)
            return await self._respond_whole(parsed, stream)
        finally:
            del self._streams[stream.req.request_id]
            if not stream.done:  # client went away: free the engine's slot, as vLLM does
                self.engine.abort(stream.req.request_id)

    @staticmethod
    async def _json(request: web.Request) -> object:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise APIError(400, f"malformed JSON: {err}") from err

    async def _respond_whole(self, parsed: ParsedRequest, stream: _Stream) -> web.Response:
        while not stream.done:
            await stream.ready.wait()
            stream.ready.clear()
        text = generated_text(stream.delivered, first=parsed.continued)
        shape = ResponseShape(parsed.chat, parsed.model)
        body = shape.full(text, stream.req.finish_reason, usage(parsed.prompt_tokens, stream.delivered))
        return web.json_response(body)

    async def _respond_streaming(self, request: web.Request, parsed: ParsedRequest, stream: _Stream) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        shape = ResponseShape(parsed.chat, parsed.model)
        if parsed.chat:
            await response.write(_sse(shape.chunk("", None, first=True)))
        sent = 0
        while not (stream.done and sent == stream.delivered):
            await stream.ready.wait()
            stream.ready.clear()
            chunks = []
            for i in range(sent, stream.delivered):
                last = stream.done and i == stream.delivered - 1
                text = token_text(parsed.continued + i)
                chunks.append(_sse(shape.chunk(text, stream.req.finish_reason if last else None)))
            sent = stream.delivered
            await response.write(b"".join(chunks))
        if parsed.include_usage:
            await response.write(_sse(shape.usage_chunk(usage(parsed.prompt_tokens, sent))))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(models_body(self.config.model, self.profile.max_model_len, self._created))

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def start_pods(n: int, config: PodConfig | None = None) -> list[EmulatedPod]:
    """Start `n` pods in this event loop: consecutive ports from `config.port` (or any free ports
    when it is 0), seeds `config.seed + i`. Stop them with `pod.stop()`."""
    config = config or PodConfig()
    pods = []
    for i in range(n):
        port = config.port + i if config.port else 0
        pods.append(await EmulatedPod(replace(config, port=port, seed=config.seed + i)).start())
    return pods


@contextlib.asynccontextmanager
async def running_pods(n: int, config: PodConfig | None = None) -> AsyncIterator[list[EmulatedPod]]:
    """`async with running_pods(3, PodConfig(time_scale=0.01)) as pods:` for other components' tests."""
    pods = await start_pods(n, config)
    try:
        yield pods
    finally:
        await asyncio.gather(*(pod.stop() for pod in pods))
