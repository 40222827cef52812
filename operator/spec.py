"""A SageSchedPolicy spec as a typed object, and the rules the CRD schema cannot express.

The schema (manifests/crds/sageschedpolicies.yaml) rejects wrong types, enums and ranges at admission;
`parse_spec` re-applies the same defaults (kmock and old API servers do not default) and checks
the cross-field rules. A spec that breaks them raises `InvalidSpec`, which the operator turns into
the InvalidSpec condition instead of retrying forever.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

POLICY_NAMES = ("sagesched", "fcfs", "sjf-mean", "round-robin", "least-requests", "llmd", "oracle")
ENGINES = ("vllm", "sglang", "auto")
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
class PolicySpec:
    policy_name: str
    pod_selector: LabelSelector | None = None
    inference_pool: str | None = None
    engine: str = "auto"
    scheduling: str = "fcfs"  # the engines' queue order: "priority" = they take our priority field
    serving_port: int | None = None  # None: the metrics port (vLLM serves /metrics on its API port)
    metrics_port: int | None = None  # None: the serving port
    metrics_path: str = "/metrics"
    models: tuple[str, ...] = ()
    scrape_interval: float = 0.2
    scrape_timeout: float = 1.0
    snapshot_ttl: float = 5.0
    policy: Mapping[str, Any] = field(default_factory=dict)
    predictor: Mapping[str, Any] = field(default_factory=dict)

    def endpoint_ports(self, pool_ports: tuple[int, ...] = ()) -> list[tuple[int, int]]:
        """(serving, metrics) port of each engine on a pod. An InferencePool's targetPorts are one
        engine each (data-parallel ranks), serving its own /metrics unless metricsPort is set."""
        serving = pool_ports or (self.serving_port or self.metrics_port or DEFAULT_PORT,)
        return [(port, self.metrics_port or port) for port in serving]


def parse_spec(spec: Mapping[str, Any]) -> PolicySpec:
    """Typed spec with defaults; raises InvalidSpec for specs that can never work."""
    has_selector = spec.get("podSelector") is not None
    has_pool = spec.get("inferencePoolRef") is not None
    if has_selector and has_pool:
        raise InvalidSpec("AmbiguousPods", "set either podSelector or inferencePoolRef, not both")
    if not has_selector and not has_pool:
        raise InvalidSpec("NoPodSource", "set podSelector or inferencePoolRef")
    selector = LabelSelector.from_dict(spec["podSelector"]) if has_selector else None
    if selector is not None and selector.empty:
        raise InvalidSpec("BadSelector", "an empty podSelector would select every pod in the namespace")
    pool = (spec.get("inferencePoolRef") or {}).get("name") if has_pool else None
    if has_pool and not pool:
        raise InvalidSpec("BadPoolRef", "inferencePoolRef.name is required")

    policy = dict(spec.get("policy") or {})
    name = policy.get("name")
    if name not in POLICY_NAMES:
        raise InvalidSpec("UnknownPolicy", f"unknown policy {name!r}; expected one of {', '.join(POLICY_NAMES)}")
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
        policy_name=name, pod_selector=selector, inference_pool=pool, engine=engine, scheduling=scheduling,
        serving_port=spec.get("servingPort"), metrics_port=spec.get("metricsPort"), metrics_path=path,
        models=tuple(spec.get("models") or ()), scrape_interval=interval,
        scrape_timeout=min(timeout, max(interval, 0.01) * 5), snapshot_ttl=ttl,
        policy=policy, predictor=dict(spec.get("predictor") or {}),
    )


def pool_source(pool_body: Mapping[str, Any]) -> PodSource:
    """An InferencePool's pods and ports: v1 nests matchLabels and lists targetPorts, v1alpha2 has a
    flat label map and one targetPortNumber."""
    spec = pool_body.get("spec") or {}
    raw = spec.get("selector") or {}
    if "matchLabels" not in raw and "matchExpressions" not in raw:
        raw = {"matchLabels": raw}
    ports = [p.get("number") for p in spec.get("targetPorts") or []] or [spec.get("targetPortNumber")]
    return PodSource(LabelSelector.from_dict(raw), tuple(int(p) for p in ports if p))
