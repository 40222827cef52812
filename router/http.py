"""The OpenAI-compatible HTTP front end (aiohttp): a thin layer over `Router.serve`.

Routes: POST /v1/chat/completions, POST /v1/completions (streaming and not), GET /v1/models,
/health (the process is up), /ready (it has a reachable pod), /metrics (Prometheus).
"""
from __future__ import annotations

import asyncio
import aiohttp
from aiohttp import web

from .errors import RouterError, internal_error, upstream_error
from .parse import parse_body, parse_request
from .pipeline import Router
from .request import Api, LiveRequest

ROUTER_KEY = web.AppKey("router", Router)
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_response(router: Router, err: RouterError, model: str) -> web.Response:
    router.metrics.errors.labels(err.kind).inc()
    router.metrics.requests.labels(model, str(err.status)).inc()
    return web.Response(body=err.to_bytes(), status=err.status, headers=err.headers,
                        content_type="application/json")


async def _generate(request: web.Request, api: Api) -> web.StreamResponse:
    router = request.app[ROUTER_KEY]
    model = ""
    try:
        body = parse_body(await request.read())
        model = body.get("model") if isinstance(body.get("model"), str) else ""
        req = parse_request(api, body, router.now(), request.headers.get("X-Request-Id"))
        response = await _serve(request, router, req)
    except RouterError as err:
        return error_response(router, err, model)
    except asyncio.CancelledError:
        router.metrics.errors.labels("cancelled").inc()
        router.metrics.requests.labels(model, "499").inc()
        raise
    except Exception as exc:
        return error_response(router, internal_error(f"{exc.__class__.__name__}: {exc}"), model)
    router.metrics.requests.labels(model, str(response.status)).inc()
    return response


async def _serve(request: web.Request, router: Router, req: LiveRequest) -> web.StreamResponse:
    async with router.serve(req) as pod:
        async with router.upstream.open(req, pod, router.engine_priority(req)) as resp:
            if resp.status != 200:  # the pod refused it: its error goes to the client as is
                req.finish_reason = "error"
                req.status = resp.status
                raw = await resp.read()
                router.metrics.errors.labels("upstream").inc()
                return web.Response(body=raw, status=resp.status, content_type="application/json")
            if not req.stream:
                raw = await router.upstream.unary(req, resp)
                req.finished_at = router.now()
                return web.Response(body=raw, content_type="application/json")
            out = web.StreamResponse(headers=SSE_HEADERS)
            await out.prepare(request)
            try:
                async for event in router.upstream.events(req, resp, router.now, lambda: router.on_token(req)):
                    await out.write(event)
            except RouterError as err:  # headers are gone already: report in-band, as OpenAI does
                req.finish_reason = "error"
                router.metrics.errors.labels(err.kind).inc()
                await out.write(b"data: " + err.to_bytes() + b"\n\n")
            except ConnectionResetError:  # the client left mid-stream; leaving aborts the pod's request
                req.finish_reason = "abort"
                router.metrics.errors.labels("cancelled").inc()
                return out
            except aiohttp.ClientError as exc:
                req.finish_reason = "error"
                err = upstream_error(f"pod {pod.name} stream broke: {exc}")
                router.metrics.errors.labels(err.kind).inc()
                await out.write(b"data: " + err.to_bytes() + b"\n\n")
            req.finished_at = router.now()
            await out.write_eof()
            return out


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
    app = web.Application(middlewares=[openai_errors], client_max_size=64 * 1024 * 1024)
    app[ROUTER_KEY] = router
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app
