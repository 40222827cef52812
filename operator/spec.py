"""A SageSchedPolicy spec as a typed object, and the rules the CRD schema cannot express.

The schema (manifests/crds/sageschedpolicies.yaml) rejects wrong types, enums and ranges at admission;
`parse_spec` re-applies the same defaults (kmock and old API servers do not default), checks
the cross-field rules and reads `spec.policy` as the typed `SchedulerConfig` (whose own checks, such
as a policy's parameter names, no schema can express). A spec that breaks them raises `InvalidSpec`, which the operator turns into
the InvalidSpec condition instead of retrying forever.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sagesched.engines import AUTO, ENGINES as REGISTERED_ENGINES
from sagesched.scheduling.config import SchedulerConfig

ENGINES = (*REGISTERED_ENGINES, AUTO)  # spec.engine: a registered engine, or detect it per pod
SCHEDULING = ("fcfs", "priority")
DEFAULT_PORT = 8000
MIN_SCRAPE_INTERVAL = 0.05
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class InvalidSpec(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "LabelSelector":
        raw = raw or {}
        labels = raw.get("matchLabels") or {}
        exprs = []
        for expr in raw.get("matchExpressions") or []:
            op = expr.get("operator")
            values = tuple(expr.get("values") or ())
            if op not in SELECTOR_OPERATORS:
                raise InvalidSpec("BadSelector", f"unknown selector operator {op!r}")
            if op in ("In", "NotIn") and not values:
                raise InvalidSpec("BadSelector", f"operator {op} on {expr.get('key')!r} needs values")
            if op in ("Exists", "DoesNotExist") and values:
                raise InvalidSpec("BadSelector", f"operator {op} on {expr.get('key')!r} takes no values")
            exprs.append((expr.get("key"), op, values))
        return cls(tuple(sorted(labels.items())), tuple(exprs))

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and (not present or labels[key] not in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True)
class PodSource:
    """Which pods, and the ports their engines serve on: an InferencePool's selector and targetPorts
    (empty for a policy's own podSelector, whose ports come from the spec)."""

    selector: LabelSelector
    ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class StaticEndpoint:
    """An engine outside Kubernetes (`spec.staticEndpoints`): routed at `address`, named `name`."""

    name: str
    address: str  # host:port of its OpenAI server

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]


@dataclass(frozen=True)
class PolicySpec:
    policy: SchedulerConfig
    pod_selector: LabelSelector | None = None
    inference_pool: str | None = None
    static_endpoints: tuple[StaticEndpoint, ...] = ()
    engine: str = "auto"
    scheduling: str = "fcfs"  # the engines' queue order: "priority" = they take our priority field
    serving_port: int | None = None  # None: the metrics port (vLLM serves /metrics on its API port)
    metrics_port: int | None = None  # None: the serving port
    metrics_path: str = "/metrics"
    models: tuple[str, ...] = ()
    scrape_interval: float = 0.2
    scrape_timeout: float = 1.0
    snapshot_ttl: float = 5.0

    @property
    def policy_name(self) -> str:
        return self.policy.name

    def endpoint_ports(self, pool_ports: tuple[int, ...] = ()) -> list[tuple[int, int]]:
        """(serving, metrics) port of each engine on a pod. An InferencePool's targetPorts are one
        engine each (data-parallel ranks), serving its own /metrics unless metricsPort is set."""
        serving = pool_ports or (self.serving_port or self.metrics_port or DEFAULT_PORT,)
        return [(port, self.metrics_port or port) for port in serving]


def parse_spec(spec: Mapping[str, Any]) -> PolicySpec:
    """Typed spec with defaults; raises InvalidSpec for specs that can never work."""
    has_selector = spec.get("podSelector") is not None
    has_pool = spec.get("inferencePoolRef") is not None
    static = tuple(_static_endpoint(e) for e in spec.get("staticEndpoints") or ())
    sources = has_selector + has_pool + bool(static)
    if sources > 1:
        raise InvalidSpec("AmbiguousPods", "set one of podSelector, inferencePoolRef or staticEndpoints")
    if not sources:
        raise InvalidSpec("NoPodSource", "set podSelector, inferencePoolRef or staticEndpoints")
    selector = LabelSelector.from_dict(spec["podSelector"]) if has_selector else None
    if selector is not None and selector.empty:
        raise InvalidSpec("BadSelector", "an empty podSelector would select every pod in the namespace")
    pool = (spec.get("inferencePoolRef") or {}).get("name") if has_pool else None
    if has_pool and not pool:
        raise InvalidSpec("BadPoolRef", "inferencePoolRef.name is required")

    try:
        policy = SchedulerConfig.from_spec(spec.get("policy") or {})
    except ValueError as exc:  # e.g. a parameter the policy does not take: schemas cannot say which
        raise InvalidSpec("BadPolicy", f"spec.policy: {exc}") from None
    engine = spec.get("engine", "auto")
    if engine not in ENGINES:
        raise InvalidSpec("UnknownEngine", f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    scheduling = spec.get("schedulingPolicy", "fcfs")
    if scheduling not in SCHEDULING:
        raise InvalidSpec("UnknownScheduling", f"schedulingPolicy must be one of {', '.join(SCHEDULING)}")

    interval = float(spec.get("scrapeIntervalSeconds", 0.2))
    timeout = float(spec.get("scrapeTimeoutSeconds", min(1.0, interval * 5)))
    ttl = float(spec.get("snapshotTTLSeconds", max(5.0, interval * 10)))
    if interval < MIN_SCRAPE_INTERVAL:
        raise InvalidSpec("BadInterval", f"scrapeIntervalSeconds must be >= {MIN_SCRAPE_INTERVAL}")
    if ttl <= interval:
        raise InvalidSpec("BadTTL", "snapshotTTLSeconds must exceed scrapeIntervalSeconds, "
                                    "or snapshots expire between scrapes")
    path = spec.get("metricsPath", "/metrics")
    if not path.startswith("/"):
        raise InvalidSpec("BadMetricsPath", "metricsPath must start with '/'")
    return PolicySpec(
        policy=policy, pod_selector=selector, inference_pool=pool, static_endpoints=static, engine=engine,
        scheduling=scheduling,
        serving_port=spec.get("servingPort"), metrics_port=spec.get("metricsPort"), metrics_path=path,
        models=tuple(spec.get("models") or ()), scrape_interval=interval,
        scrape_timeout=min(timeout, max(interval, 0.01) * 5), snapshot_ttl=ttl,
    )


def _static_endpoint(raw: Mapping[str, Any]) -> StaticEndpoint:
    address = str(raw.get("address") or "")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidSpec("BadEndpoint", f"staticEndpoints: address {address!r} is not host:port")
    return StaticEndpoint(name=raw.get("name") or address, address=address)


def pool_source(pool_body: Mapping[str, Any]) -> PodSource:
    """An InferencePool's pods and ports: v1 nests matchLabels and lists targetPorts, v1alpha2 has a
    flat label map and one targetPortNumber."""
    spec = pool_body.get("spec") or {}
    raw = spec.get("selector") or {}
    if "matchLabels" not in raw and "matchExpressions" not in raw:
        raw = {"matchLabels": raw}
    ports = [p.get("number") for p in spec.get("targetPorts") or []] or [spec.get("targetPortNumber")]
    return PodSource(LabelSelector.from_dict(raw), tuple(int(p) for p in ports if p))
