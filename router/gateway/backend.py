"""`GatewayBackend` over the router's own request path: gateway mode is standalone mode without the
proxy. A request is parsed (`router.parse`), predicted, queued and dispatched by the same `Router`
(`Router.admit`), its response is accounted by the same code that reads pods in standalone mode
(`gateway.usage` → `Upstream.account`), and it is released and recorded by `Router.release`. What
Envoy would send upstream is what the standalone proxy sends (`proxy.upstream_body`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from sagesched.router.errors import RouterError, no_pods
from sagesched.router.gateway.placement import GatewayPlacement
from sagesched.router.gateway.protocol import PRIORITY_HEADER, GatewayError, GatewayRequest, NoEndpoint
from sagesched.router.gateway.usage import ResponseMeter
from sagesched.router.parse import parse_request
from sagesched.router.pipeline import Router
from sagesched.router.pods import PodEntry
from sagesched.router.proxy import upstream_body
from sagesched.router.request import Api, LiveRequest

log = logging.getLogger(__name__)

API_BY_PATH = {api.path: api for api in Api}


def endpoint_of(pod: PodEntry) -> str:
    """The pod's `host:port`, as the gateway addresses it (and reports it back as served)."""
    return _netloc(pod.base_url)


@lru_cache(maxsize=4096)
def _netloc(url: str) -> str:  # every decision names up to 3 pods: parse each pod's URL once
    return urlsplit(url).netloc


def in_subset(pod: PodEntry, subset: frozenset[str]) -> bool:
    """A hint lists `ip:port` endpoints or bare IPs (every port of that address)."""
    address = urlsplit(pod.base_url)
    return address.netloc in subset or address.hostname in subset


def _clients_stream_options(body: dict, client: dict) -> None:
    """The client's own `stream_options`, for a response Envoy hands over unchanged: a usage chunk
    the router asked for would reach a client that did not ask for it."""
    if client.get("stream_options") is None:
        body.pop("stream_options", None)
    else:
        body["stream_options"] = client["stream_options"]


@dataclass(eq=False)
class GatewayTicket:
    """One picked request: where it goes and the body Envoy should send there. `req` is None for
    requests outside the inference API (model listing and the like), routed but not scheduled."""

    endpoints: list[str]
    body: bytes
    req: LiveRequest | None = None
    meter: ResponseMeter | None = None


class RouterBackend:
    def __init__(self, router: Router, max_fallbacks: int = 2) -> None:
        self.router = router
        self.max_fallbacks = max_fallbacks
        self.placement = GatewayPlacement.install(router.scheduler, max_fallbacks)
        router.on_swap.append(self.placement.attach)

    # --- request path ------------------------------------------------------------------------------
    async def pick(self, request: GatewayRequest, subset: frozenset[str] | None) -> GatewayTicket:
        api = API_BY_PATH.get(request.path.split("?", 1)[0])
        if api is None:
            return self._unscheduled(request, subset)
        router = self.router
        try:
            req = parse_request(api, request.json, router.now(), request.headers, router.dispatcher.tenant_header)
            if PRIORITY_HEADER in request.headers:
                req.priority = request.priority
            allowed = self._allowed(subset, req.model)
            placement = self.placement.expect(req.id, allowed)
            try:
                pod = await router.admit(req)
            finally:
                self.placement.forget(req.id)
        except RouterError as err:
            router.metrics.errors.labels(err.kind).inc()
            router.metrics.requests.labels(request.model, str(err.status)).inc()
            raise GatewayError(err.message, status=err.status, error_type=err.type, code=err.code,
                               param=err.param, headers=err.headers) from None
        names = [pod.name, *placement.fallbacks]
        endpoints = [endpoint_of(router.pods.pods[n]) for n in names if n in router.pods.pods]
        sent = upstream_body(req, pod, router.engine_priority(req))
        if not request.response_rewritable:
            _clients_stream_options(sent, request.json)
        body = json.dumps(sent).encode()
        meter = ResponseMeter(req, router.now, lambda: router.on_token(req), streaming=req.stream)
        return GatewayTicket(endpoints, body, req, meter)

    def _allowed(self, subset: frozenset[str] | None, model: str) -> frozenset[str] | None:
        """Pod names the subset hint allows (None: no hint); 503 when it allows no live pod of `model`."""
        if subset is None:
            return None
        names = frozenset(e.name for e in self.router.pods.pods.values() if in_subset(e, subset))
        if not any(self.router.pods.pods[n].reachable and model in self.router.pods.pods[n].models for n in names):
            raise no_pods(model)
        return names

    def _unscheduled(self, request: GatewayRequest, subset: frozenset[str] | None) -> GatewayTicket:
        """Not an inference call: the least-loaded reachable pods, without queueing or accounting."""
        pods = sorted((e for e in self.router.pods.pods.values()
                       if e.reachable and (subset is None or in_subset(e, subset))),
                      key=lambda e: len(e.inflight))
        if not pods:
            raise NoEndpoint("no ready endpoint")
        return GatewayTicket([endpoint_of(e) for e in pods[:1 + self.max_fallbacks]], request.body)

    # --- response path -----------------------------------------------------------------------------
    def served(self, ticket: GatewayTicket, endpoint: str | None, status: int, content_type: str) -> None:
        req = ticket.req
        if req is None or ticket.meter is None:
            return
        req.status = status
        ticket.meter.streaming = "text/event-stream" in content_type if content_type else req.stream
        if status >= 400:  # the pod refused it; its error goes to the client as is
            req.finish_reason = "error"
            self.router.metrics.errors.labels("upstream").inc()
        if endpoint and endpoint != ticket.endpoints[0]:
            # Envoy fell back down our list: accounting stays with the picked pod until release.
            log.info("request %s served by fallback %s (picked %s)", req.id, endpoint, ticket.endpoints[0])

    def response_body(self, ticket: GatewayTicket, chunk: bytes, end_of_stream: bool) -> bytes:
        """Account one chunk of the pod's answer; the bytes the client should get."""
        if ticket.req is None or ticket.meter is None:
            return chunk
        out = ticket.meter.feed(chunk, end_of_stream)
        if end_of_stream:
            ticket.req.finished_at = self.router.now()
        return out

    def finish(self, ticket: GatewayTicket, ok: bool) -> None:
        """The exchange ended: completed (`ok`), refused by the pod, or abandoned mid-way."""
        req = ticket.req
        if req is None:
            return
        status = str(req.status)
        if not ok and req.status < 400:
            req.finish_reason = req.finish_reason or "abort"
            self.router.metrics.errors.labels("cancelled").inc()
            status = "499"
        self.router.metrics.requests.labels(req.model, status).inc()
        self.router.release(req)
