"""`sagesched router`: the data plane."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    # The registries, so a new policy or engine is offered here without an edit.
    from sagesched.engines import ENGINES
    from sagesched.scheduling.policies import POLICIES

    p = subparsers.add_parser("router", help="the OpenAI-compatible router (HTTP + gRPC; ext_proc picker for gateways)",
                              description="Serve OpenAI /v1/chat/completions and /v1/completions (streaming) "
                                          "and gRPC sagesched.v1.Router, scheduling requests onto pods.")
    p.add_argument("--config", help="YAML file whose keys are RouterSettings fields (flags override it)")
    p.add_argument("--backend", action="append", default=None, metavar="URL",
                   help="a static engine pod's base URL (repeatable)")
    p.add_argument("--profile", default=None,
                   help="step-time profile for pods (default h100-llama3-8b); KV capacity comes from each "
                        "pod's own metrics when it reports it")
    p.add_argument("--memory-gate", type=float, default=None, metavar="QUANTILE",
                   help="admit to a pod only if this quantile of its requests' KV need fits its free KV "
                        "(0.5: expected need; default off)")
    p.add_argument("--backend-scheduling", choices=("fcfs", "priority"), default=None,
                   help="static pods run vLLM with --scheduling-policy priority: send our priority")
    p.add_argument("--backend-engine", choices=tuple(ENGINES), default="vllm",
                   help="the engine static pods run: which metric names and priority direction (default %(default)s)")
    p.add_argument("--host", default=None, help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default 50051; -1 disables)")
    p.add_argument("--ext-proc-port", type=int, default=None,
                   help="gateway mode: serve the Envoy ext_proc Endpoint Picker on this port (default 0 = off)")
    p.add_argument("--ext-proc-fail-open", action="store_true", default=None,
                   help="on a picker error let the request through unrouted instead of answering 503 "
                        "(pairs with Envoy's failure_mode_allow, which covers an unreachable picker)")
    p.add_argument("--redis-url", default=None, help="read pod snapshots and keep history in this Redis")
    p.add_argument("--policy", choices=sorted(POLICIES), default=None, metavar="NAME",
                   help=f"scheduling policy ({', '.join(sorted(POLICIES))}); default sagesched")
    p.add_argument("--client-priority-limit", type=int, default=None, metavar="N",
                   help="honour clients' `priority` within ±N, ahead of the policy's order (default 0: ignored)")
    p.add_argument("--preemption", action=argparse.BooleanOptionalAction, default=None,
                   help="preemptive policies stop a running stream for a more urgent waiting one and resume it "
                        "later as a continuation (default on)")
    p.add_argument("--max-queue", type=int, default=None, help="queued requests per model before 429 (default 8192)")
    p.add_argument("--queue-timeout", type=float, default=None, help="seconds queued before 504 (default 120)")
    p.add_argument("--scrape-interval", type=float, default=None, help="static pods' /metrics period, s (0.5)")
    p.add_argument("--stale-after", type=float, default=None, help="pod metrics older than this are stale, s (5)")
    p.add_argument("--predictor", default=None, metavar="HOST:PORT", help="predictor service; unset = history only")
    p.add_argument("--predictor-deadline-ms", type=float, default=None, help="predictor deadline (default 5 ms)")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="largest HTTP request body / gRPC message accepted (default 8 MiB; larger: 413)")
    p.add_argument("--client-timeout", type=float, default=None,
                   help="drop an HTTP client that sends no complete request (headers, then body) within "
                        "this many seconds, or stays idle this long between requests (default 60)")
    p.add_argument("--admin-token", default=None,
                   help="token for the gRPC GetState admin call (env SAGESCHED_ADMIN_TOKEN; unset = call disabled)")
    p.add_argument("--tls-cert", default=None, help="PEM certificate: serve HTTPS and TLS gRPC (with --tls-key)")
    p.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert")
    p.add_argument("--upstream-api-key", default=None,
                   help="Bearer token for pods started with --api-key (env SAGESCHED_UPSTREAM_API_KEY)")
    p.add_argument("--connect-timeout", type=float, default=None, help="pod connect timeout, s (default 5)")
    p.add_argument("--first-byte-timeout", type=float, default=None,
                   help="streams: seconds until the pod's response headers (default 60)")
    p.add_argument("--idle-timeout", type=float, default=None,
                   help="streams: longest silence between the pod's events, s (default 60)")
    p.add_argument("--shutdown-grace", type=float, default=None,
                   help="on SIGTERM: seconds for in-flight requests to finish while readiness fails (default 25)")
    p.add_argument("--log-level", default="INFO",
                   help="Python logging level: DEBUG, INFO, WARNING, ERROR (default %(default)s)")
    p.set_defaults(func=run_router)


def settings_from_args(args: argparse.Namespace):
    import os

    from sagesched.router.settings import Backend, RouterSettings

    overrides = {
        "host": args.host, "port": args.port, "redis_url": args.redis_url, "policy": args.policy,
        "max_queue_per_model": args.max_queue, "queue_timeout_s": args.queue_timeout,
        "scrape_interval_s": args.scrape_interval, "snapshot_max_age_s": args.stale_after,
        "predictor_address": args.predictor, "ext_proc_port": args.ext_proc_port,
        "max_body_bytes": args.max_body_bytes, "client_timeout_s": args.client_timeout,
        "tls_cert": args.tls_cert, "tls_key": args.tls_key,
        "admin_token": args.admin_token or os.environ.get("SAGESCHED_ADMIN_TOKEN") or None,
        "upstream_api_key": args.upstream_api_key or os.environ.get("SAGESCHED_UPSTREAM_API_KEY") or None,
        "connect_timeout_s": args.connect_timeout, "first_byte_timeout_s": args.first_byte_timeout,
        "idle_timeout_s": args.idle_timeout,
        "ext_proc_fail_open": args.ext_proc_fail_open,
        "default_profile": args.profile, "memory_gate_quantile": args.memory_gate,
        "client_priority_limit": args.client_priority_limit, "shutdown_grace_s": args.shutdown_grace,
        "preemption": args.preemption,
        "predictor_deadline_s": None if args.predictor_deadline_ms is None else args.predictor_deadline_ms / 1000,
    }
    if args.grpc_port is not None:
        overrides["grpc_port"] = None if args.grpc_port < 0 else args.grpc_port
    settings = (RouterSettings.from_yaml(args.config, **overrides) if args.config
                else RouterSettings(**{k: v for k, v in overrides.items() if v is not None}))
    if args.grpc_port is not None and args.grpc_port < 0:
        settings.grpc_port = None
    for url in args.backend or []:
        settings.backends.append(Backend(url=url, scheduling=args.backend_scheduling or "fcfs",
                                         engine=args.backend_engine, profile=settings.default_profile))
    return settings


def run_router(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from sagesched.router.server import serve_forever

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(args)
    try:
        settings.scheduler_config()
    except ValueError as exc:  # e.g. policy_params the policy does not take: a message, not a traceback
        raise SystemExit(f"invalid scheduler configuration: {exc}") from None
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    if not settings.backends and not settings.redis_url:
        raise SystemExit("no pods: pass --backend URL (repeatable), --config, or --redis-url")
    install_uvloop()
    asyncio.run(serve_forever(settings))
    return 0


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()
