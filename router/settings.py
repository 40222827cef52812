"""The router's one typed settings object. CLI flags and the YAML config map onto it; the defaults
below are the documented defaults."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlparse

from sagesched.engines import ENGINES
from sagesched.scheduling.config import SchedulerConfig
from sagesched.scheduling.preemption import DEFAULT_BUCKET_TOKENS
from sagesched.scheduling.scheduler import DEFAULT_AGING_RATE


def redact_url(url: str | None) -> str | None:
    """`url` with any password replaced by ***, for logs and reprs."""
    if not url:
        return url
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.rsplit("@", 1)[1]
    user = f"{parsed.username}:" if parsed.username else ":"
    return parsed._replace(netloc=f"{user}***@{netloc}").geturl()


@dataclass
class Backend:
    """A statically configured engine pod (its OpenAI server's base URL)."""

    url: str
    name: str = ""
    models: list[str] = field(default_factory=list)  # empty = ask the pod's /v1/models
    engine: str = "vllm"  # a registered engine (sagesched.engines): its metric names and priority convention
    scheduling: str = "fcfs"  # "priority" when the engine runs its queue by our `priority` field
    profile: str = "h100-llama3-8b"  # engine step-time profile the cost model uses for this pod
    api_key: str | None = field(default=None, repr=False)  # the pod's --api-key; None = upstream_api_key

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:  # its metrics could not be read: refuse it now, not every scrape
            raise ValueError(f"backend {self.url}: unknown engine {self.engine!r}; expected one of {tuple(ENGINES)}")
        self.url = self.url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        if not self.name:
            parsed = urlparse(self.url)
            self.name = f"{parsed.hostname}:{parsed.port}" if parsed.port else str(parsed.hostname)

    @property
    def address(self) -> str:
        parsed = urlparse(self.url)
        return f"{parsed.hostname}:{parsed.port or 80}"


@dataclass
class RouterSettings:
    host: str = "0.0.0.0"
    port: int = 8000
    grpc_port: int | None = 50051  # None disables the gRPC API; 0 picks a free port
    ext_proc_port: int = 0  # gateway mode: Envoy ext_proc Endpoint Picker on this port; 0 = off
    ext_proc_fail_open: bool = False  # picker failure lets the request through unrouted (Envoy's
    # failure_mode_allow covers a picker that is down; this covers one that is up but failing)
    backends: list[Backend] = field(default_factory=list)
    redis_url: str | None = None  # pod snapshots + completion history shared through Redis
    store_policy: str | None = None  # read only the pods of this "<namespace>/<policy>"; None = all
    policy: str = "sagesched"
    policy_params: dict = field(default_factory=dict)
    aging_rate: float = DEFAULT_AGING_RATE  # a waiting rank shrinks by e^(-rate·wait/T), T = typical time on a pod
    # Clients' `priority` (gRPC priority, gateway x-sagesched-priority) orders the queue before the
    # policy does, within ±this; 0 = ignored, since any client could otherwise jump every queue.
    client_priority_limit: int = 0
    max_queue_per_model: int = 8192  # beyond this, 429 with Retry-After (a backlog of small objects: cheap to hold)
    retry_after_s: float = 1.0
    queue_timeout_s: float = 120.0  # 504 when no pod takes the request within this
    scrape_interval_s: float = 0.5  # static backends: how often /metrics is read
    snapshot_max_age_s: float = 5.0  # older pod metrics make the pod ineligible
    default_profile: str = "h100-llama3-8b"  # step-time profile for pods the store announces
    # Memory gate: admit only if this quantile of a pod's KV need fits its free KV (the capacity the
    # pod reports); None = off, the engine's own block check decides and preemption corrects.
    memory_gate_quantile: float | None = None
    # Live preemption, for preemptive policies (sagesched): a stream whose refreshed index has fallen
    # behind a waiting request's is stopped on its pod and resumed later as a continuation
    # (router/continuation.py), at most `max_preemptions_per_request` times; ranks are refreshed
    # every `preemption_bucket_tokens` generated tokens.
    # Tenant fairness, as the SageSchedPolicy's spec.policy.fairness block (YAML: enabled, tenantHeader,
    # weights, defaultWeight); empty: off
    fairness: dict = field(default_factory=dict)
    preemption: bool = True
    preemption_bucket_tokens: int = DEFAULT_BUCKET_TOKENS
    max_preemptions_per_request: int = 2
    predictor_address: str | None = None  # host:port of the predictor service; None = history only
    predictor_deadline_s: float = 0.005
    history_maxlen: int = 10_000
    upstream_timeout_s: float = 900.0
    # Pooled pod connections; each running stream holds one. The process raises its open-files
    # limit to twice this (client and pod sockets) where the hard limit allows.
    max_upstream_connections: int = 16384
    drain_timeout_s: float = 5.0  # at stop, for completion records still being written
    # On SIGTERM: readiness fails at once and in-flight requests get this long to finish (inside
    # Kubernetes' default 30 s termination grace period).
    shutdown_grace_s: float = 25.0
    # Upstream faults. A pod that does not accept a connection within `connect_timeout_s`, or (for
    # streams) sends no response headers within `first_byte_timeout_s` or goes silent for
    # `idle_timeout_s` between events, fails the request instead of holding it forever. Non-streaming
    # requests get no first-byte/idle bound (engines answer them only when done): `upstream_timeout_s`.
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 60.0
    idle_timeout_s: float = 60.0
    upstream_retries: int = 2  # re-dispatches of a request whose pod failed before sending anything
    eject_after_failures: int = 3  # consecutive connect errors / 5xx before a pod takes nothing new
    eject_cooldown_s: float = 1.0  # an ejected pod's wait before a readmission probe; doubles per
    # ejection until it serves a request well again (at most 60 s)
    store_outage_grace_s: float = 300.0  # while the pod store is unreachable, serve the last view this long
    # Hostile input and access.
    max_body_bytes: int = 8 * 1024 * 1024  # HTTP request bodies and gRPC messages beyond this: 413 / INVALID
    # An HTTP client that sends no complete request headers (on a new or an idle keep-alive
    # connection), or no complete body, within this is dropped: otherwise idle and slow clients hold
    # connections and handlers without bound. Responses, streams included, are not limited by it.
    client_timeout_s: float = 60.0
    admin_token: str | None = None  # gRPC GetState needs `authorization: Bearer <token>`; None = GetState off
    tls_cert: str | None = None  # PEM files; both set = HTTPS and a TLS gRPC port
    tls_key: str | None = None
    upstream_api_key: str | None = None  # sent as a Bearer token to pods started with --api-key
    # A pod the store stops listing (its operator is gone past the snapshots' TTL, or removed it) stays
    # known, stale, until its last snapshot is this old: requests wait through an operator restart.
    unlisted_pod_max_age_s: float = 300.0
    redis_prefix: str = "sagesched"  # key prefix of the pod snapshots in Redis: the operator's --redis-prefix

    def scheduler_config(self) -> SchedulerConfig:
        """The scheduling fields (flags, YAML keys) as the one typed configuration the CRD's
        `spec.policy` also maps onto; ValueError names each invalid field."""
        return SchedulerConfig.from_spec({
            "name": self.policy, "params": self.policy_params, "aging_rate": self.aging_rate,
            "admission": {"memory_gate_quantile": self.memory_gate_quantile},
            "preemption": {"enabled": self.preemption, "bucket_tokens": self.preemption_bucket_tokens,
                           "max_per_request": self.max_preemptions_per_request},
            "predictor": {"endpoint": self.predictor_address, "deadline_ms": self.predictor_deadline_s * 1000},
            "queue": {"max_per_model": self.max_queue_per_model, "timeout_seconds": self.queue_timeout_s,
                      "client_priority_limit": self.client_priority_limit},
            "fairness": self.fairness,
        })

    def __repr__(self) -> str:
        """Settings get logged; the admin token and a Redis password must not be."""
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["admin_token"] = "***" if self.admin_token else None
        shown["upstream_api_key"] = "***" if self.upstream_api_key else None
        shown["redis_url"] = redact_url(self.redis_url)
        return f"RouterSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: object) -> "RouterSettings":
        """Settings from a YAML mapping whose keys are this class's fields; `backends` may list URLs
        or mappings with Backend's fields. Non-None `overrides` (CLI flags) win."""
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown router settings in {path}: {sorted(unknown)}")
        data["backends"] = [Backend(url=b) if isinstance(b, str) else Backend(**b) for b in data.get("backends", [])]
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
