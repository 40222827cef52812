"""Stage 5, stream: send the request to its pod and relay the answer, counting tokens on the way.

One pool of keep-alive connections for all pods (`router.upstream_http`). Streaming responses are relayed event by event
(SSE passthrough); each content event counts as one generated token, which is the attained service
the scheduler conditions on. The pod's own `usage` report is asked for (`stream_options.
include_usage`) and replaces the count at the end; it is forwarded only if the client asked for it.
Events are parsed as JSON only when they carry a finish reason or usage, so relaying stays cheap.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sagesched.router.continuation import ROLE as _ROLE  # a chat stream's opening chunk: no token yet
from sagesched.router.errors import upstream_connection_error, upstream_timeout
from sagesched.router.pods import PodEntry
from sagesched.router.request import LiveRequest
from sagesched.router.settings import RouterSettings
from sagesched.router.upstream_http import PodConnectionError, PodPool, PodResponse

_FINISH = re.compile(rb'"finish_reason":\s*"([a-z_]+)"')
_USAGE = re.compile(rb'"usage":\s*\{')
_DONE = b"data: [DONE]"
T = TypeVar("T")
log = logging.getLogger(__name__)


def upstream_body(req: LiveRequest, pod: PodEntry, engine_priority: int | None) -> dict[str, Any]:
    """The client's JSON with the router's additions: usage reporting when streaming, and our
    priority for engines that run their queue by it (others reject the field, so it is removed).
    Top-level nulls are dropped: OpenAI reads them as "not given", vLLM's schema refuses some
    (`n: null` is a 400 there)."""
    source = req.continuation.body if req.continuation else req.body
    body = {k: v for k, v in source.items() if v is not None}
    if req.stream:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    if pod.priority_mode and engine_priority is not None:
        body["priority"] = engine_priority
    else:
        body.pop("priority", None)
    return body


def upstream_headers(req: LiveRequest, pod: PodEntry) -> dict[str, str]:
    """What the pod hears besides the body: the request id (the client's if it sent one, so the
    engine's logs and response ids match the client's), the client's trace context, and the pod's
    API key (engines started with --api-key refuse anything else). The client's own Authorization
    is for the router and never forwarded."""
    return {"X-Request-Id": req.public_id, **req.trace_headers, **pod.auth_headers}


def raise_fd_limit(wanted: int) -> int:
    """Let the process hold `wanted` open files, as far as the hard limit allows; the soft limit
    now. A soft limit of 1,024 (many containers' default) would refuse connections long before a
    connection pool of thousands fills."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def split_events(buf: bytes) -> tuple[list[bytes], bytes]:
    """The complete SSE events in `buf` (each ending in a blank line) and the incomplete rest."""
    events = []
    start = 0
    while (end := buf.find(b"\n\n", start)) >= 0:  # an index, not re-slicing the rest per event
        events.append(buf[start:end + 2])
        start = end + 2
    return events, buf[start:]


class Upstream:
    def __init__(self, settings: RouterSettings) -> None:
        self.settings = settings
        self._pool: PodPool | None = None

    async def start(self) -> None:
        wanted = 2 * self.settings.max_upstream_connections  # a held stream: its client's socket and its pod's
        if (limit := raise_fd_limit(wanted)) < wanted:
            log.warning("open files limited to %d (hard limit): about %d concurrent streams", limit, limit // 2)
        self._pool = PodPool(limit=self.settings.max_upstream_connections,
                             connect_timeout_s=self.settings.connect_timeout_s)

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def open(self, req: LiveRequest, pod: PodEntry, engine_priority: int | None
                   ) -> AsyncIterator[PodResponse]:
        """The pod's response (headers read, body not yet). Leaving the block early closes the
        connection, which is how an engine learns the client went away and aborts the request.

        Raises `upstream_error` (502: the pod could not be reached or dropped the connection, the
        request may be retried elsewhere) or `upstream_timeout` (504: it accepted but did not answer).
        Streams get a first-byte bound and an idle bound per read so a hung pod fails the request;
        unary answers come only when the engine is done, so they are bounded by the pod's own signs
        of life (`_unless_hung`) and the total."""
        assert self._pool is not None
        s = self.settings
        post = self._pool.post(pod.base_url, req.api.path, upstream_headers(req, pod),
                               upstream_body(req, pod, engine_priority), total_s=s.upstream_timeout_s,
                               first_byte_s=s.first_byte_timeout_s if req.stream else None,
                               idle_s=s.idle_timeout_s if req.stream else None)
        try:
            resp = await (post if req.stream else self._unless_hung(pod, post))
        except TimeoutError:
            raise upstream_timeout(f"pod {pod.name} sent no response within the timeout") from None
        except PodConnectionError as exc:  # never connected (refused, timed out) or dropped: retried
            raise upstream_connection_error(f"pod {pod.name} failed: {exc}") from None
        try:
            yield resp
        except TimeoutError:  # idle or total: the pod went silent mid-answer
            raise upstream_timeout(f"pod {pod.name} went silent mid-answer") from None
        except PodConnectionError as exc:
            raise upstream_connection_error(f"pod {pod.name} failed: {exc}") from None
        finally:
            resp.release()  # back to the pool when fully read, otherwise the connection is closed

    async def unary(self, req: LiveRequest, resp: PodResponse) -> bytes:
        """A non-streaming answer: its body, with usage and finish reason taken into `req`."""
        assert req.pod is not None
        raw = await self._unless_hung(req.pod, resp.read())
        if resp.status == 200:
            self.account_unary(req, raw)
        return raw

    async def _unless_hung(self, pod: PodEntry, work: Awaitable[T]) -> T:
        """`work`'s result, unless `pod` hangs meanwhile. Engines answer a non-streaming request
        only when it is done, so the answer's silence proves nothing; a pod that has not answered
        its metrics scrapes for `idle_timeout_s` either is hung, and the request fails (504) instead
        of waiting out `upstream_timeout_s`."""
        silence = self.settings.idle_timeout_s
        task = asyncio.ensure_future(work)
        try:
            while not (await asyncio.wait({task}, timeout=silence))[0]:
                if not pod.answering(silence):
                    raise upstream_timeout(f"pod {pod.name} stopped answering (its metrics silent {silence:.0f}s)")
        finally:
            task.cancel()  # nothing when it is done; otherwise the request ends here
        return task.result()

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

    async def runs(self, req: LiveRequest, resp: PodResponse, now: Callable[[], float],
                    on_token: Callable[[], None]) -> AsyncIterator[list[bytes]]:
        """Per read from the pod: the complete SSE events in it (each ending in a blank line) that
        the client gets, in order. A preempted request's run ends after the read that follows the
        decision (unless that read finished it): the caller closes the connection and resumes it.

        Progress goes to `on_token` once per read, with the read's last count: tokens that arrive
        together reach the scheduler together, so a burst costs one progress report, not one each."""
        buf = b""
        rewrite = req.continuation.rewrite if req.continuation else None
        async for chunk in resp.chunks():
            events, buf = split_events(buf + chunk if buf else chunk)
            if run := self.accounted(req, events, rewrite, now, on_token):
                yield run
            if req.preempted and not req.finish_reason:
                return
        if buf.strip() and (run := self.accounted(req, [buf], rewrite, now, on_token)):
            yield run

    @classmethod
    def accounted(cls, req: LiveRequest, events: list[bytes], rewrite: Callable[[bytes], bytes | None] | None,
                  now: Callable[[], float], on_token: Callable[[], None]) -> list[bytes]:
        """`events` (rewritten for a continuation, if any) taken into `req` in order, then one
        progress report if they held tokens; returns those the client gets."""
        tokens = req.output_tokens
        run = []
        for event in events:
            if rewrite is not None and (event := rewrite(event)) is None:
                continue
            if cls.account(req, event, now):
                run.append(event)
        if req.output_tokens != tokens:
            on_token()
        return run

    @staticmethod
    def account(req: LiveRequest, event: bytes, now: Callable[[], float]) -> bool:
        """Update `req` from one event; False for events the client did not ask for. The caller
        reports progress (`req.output_tokens`) to the scheduler once it has accounted a read.

        A content event is progress whether or not it carries usage (with `stream_options.
        continuous_usage_stats` every event does); its usage, when present, is the exact token
        count (an event may hold several tokens), otherwise each event counts as one."""
        if event.startswith(_DONE):
            return True
        data = json.loads(event[event.index(b"{"):]) if _USAGE.search(event) else None
        content = not _ROLE.search(event) and (data is None or bool(data.get("choices")))
        if content and req.first_token_at is None:
            req.first_token_at = now()
        if data is not None:
            req.usage = data["usage"]
            req.output_tokens = int(req.usage.get("completion_tokens", req.output_tokens))
        elif content:
            req.output_tokens += 1
        if content:
            if req.progress is not None:
                req.progress.see(event)
        elif data is not None and not data.get("choices"):  # the usage-only last chunk
            return req.client_wants_usage
        m = _FINISH.search(event)
        if m:
            req.finish_reason = m.group(1).decode()
        return True
