"""Stage 5, stream: send the request to its pod and relay the answer, counting tokens on the way.

One pooled `aiohttp.ClientSession` for all pods. Streaming responses are relayed event by event
(SSE passthrough); each content event counts as one generated token, which is the attained service
the scheduler conditions on. The pod's own `usage` report is asked for (`stream_options.
include_usage`) and replaces the count at the end; it is forwarded only if the client asked for it.
Events are parsed as JSON only when they carry a finish reason or usage, so relaying stays cheap.
"""
from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from .errors import upstream_connection_error, upstream_timeout
from .pods import PodEntry
from .request import LiveRequest
from .settings import RouterSettings

_FINISH = re.compile(rb'"finish_reason":\s*"([a-z_]+)"')
_USAGE = re.compile(rb'"usage":\s*\{')
_ROLE = re.compile(rb'"delta":\s*\{\s*"role"')  # a chat stream's opening chunk: no token yet
_DONE = b"data: [DONE]"


def upstream_body(req: LiveRequest, pod: PodEntry, engine_priority: int | None) -> dict[str, Any]:
    """The client's JSON with the router's additions: usage reporting when streaming, and our
    priority for engines that run their queue by it (others reject the field, so it is removed)."""
    body = dict(req.body)
    if req.stream:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    if pod.priority_mode and engine_priority is not None:
        body["priority"] = engine_priority
    else:
        body.pop("priority", None)
    return body


class Upstream:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.settings.max_upstream_connections, limit_per_host=0,
                                         keepalive_timeout=60)
        timeout = aiohttp.ClientTimeout(total=self.settings.upstream_timeout_s,
                                        sock_connect=self.settings.connect_timeout_s)
        # The router adds no compression and no cookies; bodies go through as they are.
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                              cookie_jar=aiohttp.DummyCookieJar())

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    @asynccontextmanager
    async def open(self, req: LiveRequest, pod: PodEntry, engine_priority: int | None
                   ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The pod's response (headers read, body not yet). Leaving the block early closes the
        connection, which is how an engine learns the client went away and aborts the request.

        Raises `upstream_error` (502: the pod could not be reached or dropped the connection, the
        request may be retried elsewhere) or `upstream_timeout` (504: it accepted but did not answer).
        Streams get a first-byte bound and an idle bound (`sock_read`, per read) so a hung pod fails
        the request; unary answers come only when the engine is done, so only the total applies."""
        assert self._session is not None
        s = self.settings
        options: dict[str, Any] = {}
        if req.stream:
            options["timeout"] = aiohttp.ClientTimeout(total=s.upstream_timeout_s, sock_connect=s.connect_timeout_s,
                                                       sock_read=s.idle_timeout_s)
        try:
            async with asyncio.timeout(s.first_byte_timeout_s if req.stream else None):
                resp = await self._session.post(f"{pod.base_url}{req.api.path}",
                                                json=upstream_body(req, pod, engine_priority), **options)
        except TimeoutError:
            raise upstream_timeout(f"pod {pod.name} sent no response within the timeout") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise upstream_connection_error(f"pod {pod.name} failed: {exc.__class__.__name__}: {exc}") from None
        try:
            yield resp
        except TimeoutError:  # sock_read or total: the pod went silent mid-answer
            raise upstream_timeout(f"pod {pod.name} went silent mid-answer") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise upstream_connection_error(f"pod {pod.name} failed: {exc.__class__.__name__}: {exc}") from None
        finally:
            resp.release()  # back to the pool when fully read, otherwise the connection is closed

    async def unary(self, req: LiveRequest, resp: aiohttp.ClientResponse) -> bytes:
        """A non-streaming answer: its body, with usage and finish reason taken into `req`."""
        raw = await resp.read()
        if resp.status == 200:
            self.account_unary(req, raw)
        return raw

    @staticmethod
    def account_unary(req: LiveRequest, raw: bytes) -> None:
        """Usage and finish reason of a complete non-streaming answer, taken into `req`."""
        try:
            data = json.loads(raw)
            usage = data.get("usage") or {}
            req.usage = usage
            req.output_tokens = int(usage.get("completion_tokens", 0))
            req.finish_reason = (data.get("choices") or [{}])[0].get("finish_reason") or ""
        except (ValueError, AttributeError, IndexError, TypeError):
            req.finish_reason = "error"

    async def _runs(self, req: LiveRequest, resp: aiohttp.ClientResponse, now: Callable[[], float],
                    on_token: Callable[[], None]) -> AsyncIterator[list[bytes]]:
        """Per read from the pod: the complete SSE events in it (each ending in a blank line) that
        the client gets, in order."""
        buf = b""
        async for chunk in resp.content.iter_any():
            buf = buf + chunk if buf else chunk
            run: list[bytes] = []
            start = 0
            while (end := buf.find(b"\n\n", start)) >= 0:  # an index, not re-slicing the rest per event
                event = buf[start:end + 2]
                start = end + 2
                if self.account(req, event, now, on_token):
                    run.append(event)
            buf = buf[start:]
            if run:
                yield run
        if buf.strip() and self.account(req, buf, now, on_token):
            yield [buf]

    async def events(self, req: LiveRequest, resp: aiohttp.ClientResponse, now: Callable[[], float],
                     on_token: Callable[[], None]) -> AsyncIterator[bytes]:
        """SSE events to forward to the client, one at a time (for front ends that translate each)."""
        async for run in self._runs(req, resp, now, on_token):
            for event in run:
                yield event

    async def relay(self, req: LiveRequest, resp: aiohttp.ClientResponse, now: Callable[[], float],
                    on_token: Callable[[], None]) -> AsyncIterator[bytes]:
        """SSE bytes to forward to an HTTP client as they arrive: the events of one read from the pod
        joined, so a burst of tokens costs the client's socket one write instead of one per token."""
        async for run in self._runs(req, resp, now, on_token):
            yield run[0] if len(run) == 1 else b"".join(run)

    @staticmethod
    def account(req: LiveRequest, event: bytes, now: Callable[[], float], on_token: Callable[[], None]) -> bool:
        """Update `req` from one event; False for events the client did not ask for."""
        if event.startswith(_DONE):
            return True
        if _USAGE.search(event):
            data = json.loads(event[event.index(b"{"):])
            req.usage = data["usage"]
            req.output_tokens = int(req.usage.get("completion_tokens", req.output_tokens))
            if not data.get("choices"):  # the usage-only last chunk
                return req.client_wants_usage
        elif not _ROLE.search(event):
            if req.first_token_at is None:
                req.first_token_at = now()
            req.output_tokens += 1
            on_token()
        m = _FINISH.search(event)
        if m:
            req.finish_reason = m.group(1).decode()
        return True
