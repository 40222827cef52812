"""gRPC `sagesched.v1.Router`: a thin servicer over the same request path as HTTP.

Protobufs are translated into the OpenAI JSON the rest of the router speaks (the core never sees a
generated type); the pod is always streamed from, so token accounting works for unary calls too.
"""
from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from sagesched.router.errors import RouterError, bad_request, pod_failed, upstream_error
from sagesched.router.parse import REQUEST_ID_HEADER, parse_request
from sagesched.router.pipeline import Router
from sagesched.router.request import Api, LiveRequest
from sagesched.v1 import common_pb2, router_pb2, router_pb2_grpc

_STATUS_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # as gRPC itself answers a message over its size limit
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC code for an HTTP status; a 4xx without its own code is still the caller's fault."""
    default = grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.INTERNAL
    return _STATUS_TO_GRPC.get(status, default)


def to_openai(msg: router_pb2.GenerateRequest) -> tuple[Api, dict]:
    """GenerateRequest → (API, OpenAI request body)."""
    body: dict = {}
    if msg.extra_json:
        try:
            extra = json.loads(msg.extra_json)
        except ValueError as exc:
            raise bad_request(f"extra_json is not JSON: {exc}", param="extra_json") from None
        except RecursionError:
            raise bad_request("extra_json is nested too deeply", param="extra_json") from None
        if not isinstance(extra, dict):
            raise bad_request("extra_json must be a JSON object", param="extra_json")
        body.update(extra)
    body["model"] = msg.model
    which = msg.WhichOneof("input")
    if which == "chat":
        api = Api.CHAT
        body["messages"] = [{"role": m.role, "content": m.content} for m in msg.chat.messages]
    elif which == "prompt":
        api = Api.COMPLETIONS
        body["prompt"] = msg.prompt
    else:
        raise bad_request("one of `prompt` or `chat` is required", param="input")
    p = msg.params
    if p.max_tokens:
        body["max_tokens"] = p.max_tokens
    if p.HasField("temperature"):
        body["temperature"] = p.temperature
    if p.HasField("top_p"):
        body["top_p"] = p.top_p
    if p.stop:
        body["stop"] = list(p.stop)
    if p.ignore_eos:
        body["ignore_eos"] = True
    if p.min_tokens:
        body["min_tokens"] = p.min_tokens
    if msg.priority:
        body["priority"] = msg.priority
    body["stream"] = True
    return api, body


def _usage(req: LiveRequest) -> common_pb2.Usage:
    u = req.usage or {}
    return common_pb2.Usage(prompt_tokens=int(u.get("prompt_tokens", 0)),
                            completion_tokens=int(u.get("completion_tokens", req.output_tokens)),
                            total_tokens=int(u.get("total_tokens", 0)))


def _delta_text(api: Api, event: bytes) -> str:
    if not event.startswith(b"data: {"):
        return ""
    data = json.loads(event[6:])
    if "error" in data:
        raise upstream_error(data["error"].get("message", "pod error"))
    choices = data.get("choices") or []
    if not choices:
        return ""
    if api is Api.CHAT:
        return (choices[0].get("delta") or {}).get("content") or ""
    return choices[0].get("text") or ""


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, router: Router) -> None:
        self.router = router

    async def _authorize_admin(self, context) -> None:
        """GetState exposes pod addresses and load: off unless an admin token is configured, and
        then only for callers presenting it (compared in constant time)."""
        token = self.router.settings.admin_token
        if not token:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "admin API disabled (no --admin-token)")
        presented = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not hmac.compare_digest(presented.encode(), f"Bearer {token}".encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "admin token required")

    async def _chunks(self, msg: router_pb2.GenerateRequest, context) -> AsyncIterator[tuple[LiveRequest, str]]:
        router = self.router
        model = msg.model
        try:
            api, body = to_openai(msg)
            headers = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            if msg.request_id:
                headers[REQUEST_ID_HEADER] = msg.request_id
            req = parse_request(api, body, router.now(), headers, router.dispatcher.tenant_header)
            async with router.open(req) as resp:
                if resp.status != 200:
                    req.finish_reason = "error"
                    raw = await resp.read()
                    if resp.status >= 500:
                        raise pod_failed(resp.status, raw)
                    raise RouterError(resp.status, raw.decode(errors="replace")[:500], kind="pod_refused",
                                      type="upstream_error")
                async for run in router.relay(req, resp):
                    for event in run:
                        if text := _delta_text(api, event):
                            yield req, text
                req.finished_at = router.now()
            yield req, ""
        except RouterError as err:
            router.metrics.errors.labels(err.kind).inc()
            router.metrics.requests.labels(model, str(err.status)).inc()
            await context.abort(grpc_code(err.status), err.message)
        router.metrics.requests.labels(model, "200").inc()

    async def Generate(self, request, context):
        parts: list[str] = []
        req = None
        async for req, text in self._chunks(request, context):
            parts.append(text)
        return router_pb2.GenerateResponse(
            request_id=req.public_id, model=req.model, text="".join(parts), finish_reason=req.finish_reason,
            usage=_usage(req), pod=req.pod.name if req.pod else "")

    async def GenerateStream(self, request, context):
        async for req, text in self._chunks(request, context):
            if text:
                yield router_pb2.GenerateChunk(request_id=req.public_id, text=text)
            else:  # the closing chunk
                yield router_pb2.GenerateChunk(request_id=req.public_id, finish_reason=req.finish_reason,
                                               usage=_usage(req), pod=req.pod.name if req.pod else "")

    async def GetState(self, request, context):
        await self._authorize_admin(context)
        router = self.router
        now = router.now()
        views = {v.name: v for v in router.pods.views()}
        pods = []
        for entry in router.pods.pods.values():
            if request.model and request.model not in entry.models:
                continue
            view = views[entry.name]
            snap = entry.snapshot
            pods.append(router_pb2.PodState(
                name=entry.name, address=entry.base_url, models=list(entry.models), healthy=view.eligible,
                kv_cache_usage=view.kv_usage, running=view.num_running, waiting=view.num_waiting,
                inflight=len(entry.inflight), snapshot_age_seconds=snap.age(time.time()) if snap else -1.0))
        models = [request.model] if request.model else router.pods.model_names()
        queues = [router_pb2.QueueState(model=m, depth=router.dispatcher.depth[m],
                                        oldest_wait_seconds=router.dispatcher.oldest_wait(m, now))
                  for m in models]
        return router_pb2.RouterState(policy=router.policy, pods=pods, queues=queues)


async def start_grpc(router: Router, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """The Router service with the standard health service and reflection; TLS when the settings
    name a certificate and key; messages beyond `max_body_bytes` are refused by gRPC itself."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    limit = router.settings.max_body_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit)])
    router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(router), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service = router_pb2.DESCRIPTOR.services_by_name["Router"].full_name
    reflection.enable_server_reflection((service, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    settings = router.settings
    if settings.tls_cert and settings.tls_key:
        credentials = grpc.ssl_server_credentials(
            [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())])
        bound = server.add_secure_port(f"{host}:{port}", credentials)
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return server, bound
