"""The OpenAI-compatible HTTP front end (aiohttp): a thin layer over `Router.serve`.

Routes: POST /v1/chat/completions, POST /v1/completions (streaming and not), GET /v1/models,
/health (the process is up), /ready (it has a reachable pod), /metrics (Prometheus).
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from sagesched.router.errors import RouterError, internal_error, pod_failed
from sagesched.router.parse import parse_body, parse_request
from sagesched.router.pipeline import Router
from sagesched.router.request import Api, LiveRequest
from sagesched.router.upstream_http import PodResponse

ROUTER_KEY = web.AppKey("router", Router)
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE_EVENT = b"data: [DONE]\n\n"


class EventStream(web.StreamResponse):
    """The client's SSE stream, in as few socket writes as its events allow: each write is a
    system call and a wake-up of the client, the largest per-request cost of relaying an answer.
    The stream's end (the last chunk of the chunked encoding) leaves with its last event. The
    headers leave with the first events when those are already here (a short answer: one write in
    all), and otherwise at the end of the event loop's turn (`prepare`), as the pod's did: a client
    learns its request was accepted even while it waits for a first token behind others (holding
    the headers until the first events kept clients of queued requests waiting for any answer)."""

    _send_headers_immediately = False  # aiohttp >= 3.12: the writer holds them for the first write
    ended = False

    async def prepare(self, request: web.BaseRequest):
        writer = await super().prepare(request)
        if hasattr(writer, "send_headers"):
            asyncio.get_running_loop().call_soon(_flush_headers, writer)
        return writer

    async def send(self, req: LiveRequest, data: bytes) -> None:
        """Relay `data`; with `req` finished and `data` ending in its [DONE], end the stream too."""
        if req.finish_reason and data.endswith(DONE_EVENT):
            self.ended = True
            await self.write_eof(data)
        else:
            await self.write(data)


def _flush_headers(writer) -> None:
    """Send held headers (a no-op once the first write carried them); a client gone meanwhile is the
    stream's own business, not an error of the event loop's."""
    try:
        writer.send_headers()
    except ConnectionResetError:
        pass


def error_response(router: Router, err: RouterError, model: str) -> web.Response:
    router.metrics.errors.labels(err.kind).inc()
    router.metrics.requests.labels(model, str(err.status)).inc()
    return web.Response(body=err.to_bytes(), status=err.status, headers=err.headers,
                        content_type="application/json")


async def _generate(request: web.Request, api: Api) -> web.StreamResponse:
    router = request.app[ROUTER_KEY]
    model = ""
    try:
        body = parse_body(await _read_body(request, router.settings.client_timeout_s))
        model = body.get("model") if isinstance(body.get("model"), str) else ""
        req = parse_request(api, body, router.now(), request.headers, router.dispatcher.tenant_header)
        response = await _serve(request, router, req)
    except RouterError as err:
        if err.status == 408:
            return await _hang_up(request, error_response(router, err, model))
        return error_response(router, err, model)
    except asyncio.CancelledError:
        router.metrics.errors.labels("cancelled").inc()
        router.metrics.requests.labels(model, "499").inc()
        raise
    except web.HTTPException as exc:  # e.g. 413 from the body size limit: the middleware shapes it
        router.metrics.errors.labels("bad_request").inc()
        router.metrics.requests.labels(model, str(exc.status)).inc()
        raise
    except Exception as exc:
        return error_response(router, internal_error(f"{exc.__class__.__name__}: {exc}"), model)
    router.metrics.requests.labels(model, str(response.status)).inc()
    return response


async def _read_body(request: web.Request, timeout_s: float) -> bytes:
    """The request body, if it all arrives within `timeout_s`. aiohttp's keep-alive timer drops a
    client whose headers never complete, not one that trickles (or withholds) its body. A body
    that came whole with the headers (the usual case) needs no timer."""
    if request.content.is_eof():
        return await request.read()
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise RouterError(408, f"The request body did not arrive within {timeout_s:g}s.", kind="client_timeout",
                          type="timeout_error", code="client_timeout") from None


async def _hang_up(request: web.Request, response: web.Response) -> web.Response:
    """Send `response`, then close the connection: with the body still unread, aiohttp would keep
    it open `lingering_time` longer, waiting for bytes a slow client may never send."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the transport flushes the response before it closes
    return response


async def _serve(request: web.Request, router: Router, req: LiveRequest) -> web.StreamResponse:
    out: EventStream | None = None
    try:
        async with router.open(req) as resp:
            if resp.status != 200:
                req.finish_reason = "error"
                raw = await resp.read()
                if resp.status >= 500:  # the pod failed: a bad gateway for the client, never our own 500
                    raise pod_failed(resp.status, raw)
                req.status = resp.status  # the pod refused the request: its error goes back as is
                router.metrics.errors.labels("upstream").inc()
                return web.Response(body=raw, status=resp.status, headers=_pod_headers(req, resp))
            if not req.stream:
                raw = await router.upstream.unary(req, resp)
                req.finished_at = router.now()
                return web.Response(body=raw, headers=_pod_headers(req, resp))
            out = EventStream(headers={**SSE_HEADERS, "X-Request-Id": req.public_id})
            await out.prepare(request)
            async for run in router.relay(req, resp):  # one write per read from the pod
                await out.send(req, run[0] if len(run) == 1 else b"".join(run))
            req.finished_at = router.now()
    except RouterError as err:
        if out is None:
            raise
        # Headers are gone already: report in-band, as OpenAI does, then end the stream.
        req.finish_reason = "error"
        router.metrics.errors.labels(err.kind).inc()
        await _end_stream(out, b"data: " + err.to_bytes() + b"\n\n")
        return out
    except ConnectionResetError:  # the client left mid-stream; leaving aborts the pod's request
        req.finish_reason = "abort"
        router.metrics.errors.labels("cancelled").inc()
        return out or web.Response(status=499)
    if out is not None:
        await _end_stream(out, b"")
    return out


def _pod_headers(req: LiveRequest, resp: PodResponse) -> dict[str, str]:
    """A pod's whole answer goes back with its own content type (its errors are not always JSON)
    and the id the client knows the request by."""
    return {"Content-Type": resp.headers.get("Content-Type", "application/octet-stream"),
            "X-Request-Id": req.public_id}


async def _end_stream(out: EventStream, last: bytes) -> None:
    """Write the last bytes and close the stream, unless its last event closed it already; a client
    that already left changes nothing."""
    if out.ended:
        return
    try:
        if last:
            await out.write(last)
        await out.write_eof()
    except ConnectionResetError:
        pass


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, Api.CHAT)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, Api.COMPLETIONS)


async def models(request: web.Request) -> web.Response:
    router = request.app[ROUTER_KEY]
    return web.json_response({"object": "list", "data": router.pods.model_cards()})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    router = request.app[ROUTER_KEY]
    ok = router.is_ready()
    return web.json_response({"ready": ok, "pods": sum(p.reachable for p in router.pods.pods.values())},
                             status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    router = request.app[ROUTER_KEY]
    router.pods.views()  # refreshes snapshot ages
    body, content_type = router.metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def not_found(request: web.Request) -> web.Response:
    err = RouterError(404, f"No route {request.method} {request.path}", kind="not_found", type="NotFoundError")
    return web.Response(body=err.to_bytes(), status=404, content_type="application/json")


@web.middleware
async def openai_errors(request: web.Request, handler):
    """aiohttp's own 404/405 pages in OpenAI's error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        err = RouterError(exc.status, exc.reason, kind="not_found" if exc.status == 404 else "bad_request")
        return web.Response(body=err.to_bytes(), status=exc.status, content_type="application/json")


def build_app(router: Router) -> web.Application:
    # aiohttp's keep-alive timer runs from the connection's start and between requests, and closes a
    # connection still short of complete request headers: the idle/slow-client bound.
    app = web.Application(middlewares=[openai_errors], client_max_size=router.settings.max_body_bytes,
                          handler_args={"keepalive_timeout": router.settings.client_timeout_s})
    app[ROUTER_KEY] = router
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app
