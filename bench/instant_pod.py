"""A pod that answers at once: the null backend of `sagesched bench overhead`.

It speaks just enough of vLLM's OpenAI server (completions and chat, streaming with usage,
/v1/models, /metrics with vLLM's gauge names) that whatever latency a client sees through the
router, beyond a direct call to this pod, is the router's own. Answers are built once per shape and
reused, so the pod spends as little CPU as it can: on a small machine it shares cores with the
router under test.

`python -m sagesched.bench.instant_pod --pods N` serves N of them in one process (its own, so the
router's process does none of their work) and prints their URLs as one JSON line once listening.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from functools import lru_cache

from aiohttp import web

from sagesched.engines import vllm
from sagesched.http_serve import serve_app
from sagesched.router.proxy import raise_fd_limit


class InstantPod:
    def __init__(self, model: str = "instant", tokens: int = 8, host: str = "127.0.0.1", port: int = 0,
                 interval: float = 0.0) -> None:
        self.model = model
        self.tokens = tokens
        # Seconds between streamed tokens; 0 sends the whole answer in one write. A slow stream is
        # how `bench overhead --streams` keeps thousands of streams open at once.
        self.interval = interval
        self.host = host
        self.port = port
        self.running = 0
        self.created = int(time.time())
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> "InstantPod":
        app = web.Application()
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/chat/completions", self._generate)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        self._runner, self.port = await serve_app(app, self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "instant"}]})

    async def _metrics(self, request: web.Request) -> web.Response:
        labels = f'{{{vllm.LABEL_MODEL}="{self.model}"}}'
        text = (f"{vllm.RUNNING}{labels} {self.running}\n{vllm.WAITING}{labels} 0\n"
                f"{vllm.KV_USAGE}{labels} 0.0\n")
        return web.Response(text=text)

    @lru_cache(maxsize=64)
    def _events(self, chat: bool, n: int, usage: bool) -> tuple[bytes, ...]:
        """The SSE events of an `n`-token answer (token events, then usage and [DONE])."""
        kind = "chat.completion.chunk" if chat else "text_completion"
        events = []
        for i in range(n):
            last = i == n - 1
            choice = ({"index": 0, "delta": {"content": "x"}, "finish_reason": "length" if last else None}
                      if chat else {"index": 0, "text": "x", "finish_reason": "length" if last else None})
            events.append(self._event({"id": "cmpl-instant", "object": kind, "created": self.created,
                                       "model": self.model, "choices": [choice]}))
        if usage:
            events.append(self._event({"id": "cmpl-instant", "object": kind, "created": self.created,
                                       "model": self.model, "choices": [], "usage": _usage(n)}))
        events.append(b"data: [DONE]\n\n")
        return tuple(events)

    @staticmethod
    def _event(chunk: dict) -> bytes:
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chat = request.path.endswith("chat/completions")
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or self.tokens)
        if not body.get("stream"):
            kind = "chat.completion" if chat else "text_completion"
            choice = ({"index": 0, "message": {"role": "assistant", "content": "x" * n}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": "x" * n, "finish_reason": "length"})
            return web.json_response({"id": "cmpl-instant", "object": kind, "created": self.created,
                                      "model": self.model, "choices": [choice], "usage": _usage(n)})
        events = self._events(chat, n, bool((body.get("stream_options") or {}).get("include_usage")))
        self.running += 1
        try:
            out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await out.prepare(request)
            if self.interval > 0:
                for event in events[:n - 1]:
                    await out.write(event)
                    await asyncio.sleep(self.interval)
                events = events[max(n - 1, 0):]
            await out.write(b"".join(events))
            await out.write_eof()
            return out
        finally:
            self.running -= 1


def _usage(n: int) -> dict[str, int]:
    return {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}


async def _serve(args: argparse.Namespace) -> None:
    pods = [await InstantPod(model=args.model, tokens=args.tokens, interval=args.interval).start()
            for _ in range(args.pods)]
    print(json.dumps([p.url for p in pods]), flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    """Serve instant pods until killed (the benchmark's pods process)."""
    p = argparse.ArgumentParser(prog="python -m sagesched.bench.instant_pod")
    p.add_argument("--pods", type=int, default=4)
    p.add_argument("--model", default="instant")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--interval", type=float, default=0.0, help="seconds between streamed tokens")
    args = p.parse_args(argv)
    raise_fd_limit(1 << 20)  # as many held streams as the hard limit allows, whatever the router's limit
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
