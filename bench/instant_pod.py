"""A pod that answers at once: the null backend of `sagesched bench overhead`.

It speaks just enough of vLLM's OpenAI server (completions and chat, streaming with usage,
/v1/models, /metrics with vLLM's gauge names) that whatever latency a client sees through the
router, beyond a direct call to this pod, is the router's own.
"""
from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from sagesched import engine_metrics as em


class InstantPod:
    def __init__(self, model: str = "instant", tokens: int = 8, host: str = "127.0.0.1", port: int = 0) -> None:
        self.model = model
        # While set, streams send their first token and then wait: how `bench overhead` holds many
        # streams open at once.
        self.hold: asyncio.Event | None = None
        self.tokens = tokens
        self.host = host
        self.port = port
        self.running = 0
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
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
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
        labels = f'{{{em.VLLM_LABEL_MODEL}="{self.model}"}}'
        text = (f"{em.VLLM_RUNNING}{labels} {self.running}\n{em.VLLM_WAITING}{labels} 0\n"
                f"{em.VLLM_KV_USAGE}{labels} 0.0\n")
        return web.Response(text=text)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chat = request.path.endswith("chat/completions")
        n = int(body.get("max_tokens") or body.get("max_completion_tokens") or self.tokens)
        usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
        rid, created = "cmpl-instant", int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            choice = ({"index": 0, "message": {"role": "assistant", "content": "x" * n}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": "x" * n, "finish_reason": "length"})
            return web.json_response({"id": rid, "object": kind, "created": created, "model": self.model,
                                      "choices": [choice], "usage": usage})
        self.running += 1
        try:
            out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await out.prepare(request)
            kind += ".chunk" if chat else ""
            parts = []
            if self.hold is not None:
                first = {"id": rid, "object": kind, "created": created, "model": self.model, "choices": [
                    {"index": 0, "delta": {"content": ""}} if chat else {"index": 0, "text": ""}]}
                await out.write(b"data: " + json.dumps(first).encode() + b"\n\n")
                await self.hold.wait()
            for i in range(n):
                last = i == n - 1
                choice = ({"index": 0, "delta": {"content": "x"}, "finish_reason": "length" if last else None}
                          if chat else {"index": 0, "text": "x", "finish_reason": "length" if last else None})
                chunk = {"id": rid, "object": kind, "created": created, "model": self.model, "choices": [choice]}
                parts.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                chunk = {"id": rid, "object": kind, "created": created, "model": self.model, "choices": [],
                         "usage": usage}
                parts.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            parts.append(b"data: [DONE]\n\n")
            await out.write(b"".join(parts))
            await out.write_eof()
            return out
        finally:
            self.running -= 1
