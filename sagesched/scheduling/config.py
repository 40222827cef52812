"""The one scheduler configuration: policy and parameters, aging, admission, preemption, predictor,
queue limits.

The same object sits behind the router's flags and YAML (`RouterSettings.scheduler_config`), the
CRD's `spec.policy` (camelCase keys: `SchedulerConfig.from_spec`) and what the operator publishes
for routers to apply live. `crd_schema()` renders it as the CRD's structural schema; a test holds
manifests/crds/sageschedpolicies.yaml to it, so the two cannot drift.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from sagesched.scheduling.admission import DEFAULT_QUANTILE, Admission
from sagesched.scheduling.fairness import Fairness
from sagesched.scheduling.picker import FILTERS, PICKERS, SCORERS, Pick
from sagesched.scheduling.plugins import Registry
from sagesched.scheduling.policies import POLICIES, make_policy
from sagesched.scheduling.preemption import DEFAULT_BUCKET_TOKENS, Preemption
from sagesched.scheduling.scheduler import DEFAULT_AGING_RATE, Scheduler

PolicyName = Literal[tuple(sorted(POLICIES))]  # type: ignore[valid-type]
DEFAULT_TENANT_HEADER = "x-sagesched-tenant"


class _Block(BaseModel):
    """camelCase on the wire (CRD, Redis), snake_case in Python; unknown keys are errors."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class AdmissionConfig(_Block):
    memory_gate_quantile: Optional[float] = Field(
        None, ge=0.5, le=0.999,
        description="Admit to a pod only if this quantile of its requests' KV need fits its free KV; "
                    "absent: off (the engine's block check decides, preemption corrects).")
    engine_buffer: int = Field(4, ge=1, le=1024, description="Requests a pod may hold not yet streaming.")
    affinity_buffer: int = Field(1, ge=0, le=1024,
                                 description="More such requests a pod may hold when it caches at least half of the "
                                             "request's prompt (prefix-cache affinity; 0: none).")


class PreemptionConfig(_Block):
    enabled: bool = Field(True, description="Preemptive policies may stop a running stream and resume it later.")
    bucket_tokens: int = Field(DEFAULT_BUCKET_TOKENS, ge=1, le=65536,
                               description="A running request's rank is refreshed every this many tokens.")
    max_per_request: int = Field(2, ge=0, le=100, description="Preemptions of one request before it runs to the end.")


class PredictorConfig(_Block):
    endpoint: Optional[str] = Field(None, description="host:port of the predictor gRPC service; absent: history only.")
    deadline_ms: float = Field(5.0, ge=0.1, le=10000, description="Wait at most this for a prediction.")


class QueueConfig(_Block):
    max_per_model: int = Field(8192, ge=0, le=1000000,
                               description="Queued requests per model before 429 (0: none wait; refused when no pod has room).")
    timeout_seconds: float = Field(120.0, ge=0.1, le=3600, description="Seconds queued before 504.")
    client_priority_limit: int = Field(
        0, ge=0, le=2**31 - 1,
        description="Clients' priority orders the queue ahead of the policy, clamped to +-this; 0: ignored "
                    "(any client could otherwise jump every queue).")


class FairnessConfig(_Block):
    enabled: bool = Field(
        False, description="Share each model's queue between tenants by weight (virtual counters of the service "
                           "each received); off: one queue in policy order, whoever sent the requests.")
    tenant_header: str = Field(
        DEFAULT_TENANT_HEADER, pattern=r"^[A-Za-z0-9-]{1,128}$",
        description="Request header naming the tenant (trust it only behind a gateway that sets it); without it "
                    "the tenant is the client's API key, hashed: key- and 16 hex digits of its SHA-256.")
    weights: dict[str, Annotated[float, Field(ge=0.001, le=1e6)]] = Field(
        default_factory=dict,
        description="Tenants' weights: twice the weight, twice the service over a backlog. Named tenants also "
                    "get their own metric labels; the rest count as other.")
    default_weight: float = Field(1.0, ge=0.001, le=1e6, description="The weight of every tenant not named.")


def _name_enum(schema: dict[str, Any], cls: type["PluginConfig"]) -> None:
    schema["properties"]["name"]["enum"] = sorted(cls.registry)


class PluginConfig(_Block):
    """A plugin by its registered name, with its constructor's parameters."""

    model_config = ConfigDict(json_schema_extra=_name_enum)
    registry: ClassVar[Registry[Any]]
    name: str = Field(description="The registered plugin.")
    params: dict[str, float] = Field(default_factory=dict, description="The plugin's own parameters.")

    @model_validator(mode="after")
    def _known(self) -> "PluginConfig":
        self.registry.check(self.name, self.params)
        return self

    @property
    def spec(self) -> tuple[str, dict[str, float]]:
        return self.name, dict(self.params)


class FilterConfig(PluginConfig):
    registry = FILTERS


class PickerConfig(PluginConfig):
    registry = PICKERS


class ScorerConfig(PluginConfig):
    registry = SCORERS
    weight: float = Field(1.0, ge=0, le=1e6, description="The scorer's weight in the sum of scores.")


class PickConfig(_Block):
    filters: list[FilterConfig] = Field(
        default_factory=list, description="Filters narrowing the pods, in order, after the built-in eligibility "
                                          "(healthy, fresh, serving the model) and the admission gates.")
    scorers: list[ScorerConfig] = Field(min_length=1, description="Scorers whose weighted sum rates each pod.")
    picker: PickerConfig = Field(default_factory=lambda: PickerConfig(name="max-score"),
                                 description="Chooses one pod from the summed scores.")

    def build(self) -> Pick:
        return Pick([(s.spec, s.weight) for s in self.scorers], self.picker.spec, [f.spec for f in self.filters])


class SchedulerConfig(_Block):
    name: PolicyName = Field(description="The scheduling policy.")
    params: dict[str, float] = Field(default_factory=dict, description="The policy's own parameters.")
    aging_rate: float = Field(
        DEFAULT_AGING_RATE, ge=0,
        description="A waiting request's rank shrinks by e^(-agingRate*wait/T), T the running mean time "
                    "requests spend on a pod; bounds starvation.")
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    preemption: PreemptionConfig = Field(default_factory=PreemptionConfig)
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    fairness: FairnessConfig = Field(default_factory=FairnessConfig)
    pick: Optional[PickConfig] = Field(
        None, description="How pods are chosen: filters, weighted scorers, picker; absent: the policy's own "
                          "(llmd: queue 2 + kv 2 + prefix 3; sagesched: free-kv 1 + prefix 1).")

    @model_validator(mode="after")
    def _known_params(self) -> "SchedulerConfig":
        """A policy's parameters are its constructor's: checked here so that a wrong one is a
        configuration error (an InvalidSpec condition, a CLI message), not a router crash."""
        POLICIES.check(self.name, self.params)
        return self

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "SchedulerConfig":
        """From the CRD's `spec.policy` (or the JSON the operator publishes); raises ValueError
        with one line per bad field (pydantic's own message adds URLs and input dumps)."""
        try:
            return cls.model_validate(dict(spec))
        except ValidationError as exc:
            raise ValueError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'policy'}: {e['msg']}"
                                       for e in exc.errors())) from None

    def to_spec(self) -> dict[str, Any]:
        """The camelCase form `from_spec` reads back (what the operator publishes)."""
        return self.model_dump(by_alias=True, exclude_none=True)

    def build(self) -> Scheduler:
        """A new Scheduler with this configuration (the router swaps it in on a change)."""
        q = self.admission.memory_gate_quantile
        admission = Admission(memory_aware=q is not None, quantile=DEFAULT_QUANTILE if q is None else q,
                              engine_buffer=self.admission.engine_buffer,
                              affinity_buffer=self.admission.affinity_buffer)
        p = self.preemption
        preemption = Preemption(enabled=p.enabled, bucket_tokens=p.bucket_tokens, max_per_request=p.max_per_request)
        f = self.fairness
        fairness = Fairness(dict(f.weights), f.default_weight) if f.enabled else None
        return Scheduler(make_policy(self.name, **self.params), admission=admission, aging_rate=self.aging_rate,
                         preemption=preemption, fairness=fairness, pick=self.pick.build() if self.pick else None)


def crd_schema() -> dict[str, Any]:
    """`SchedulerConfig` as a Kubernetes structural schema (no $ref, no anyOf, no titles)."""
    raw = SchedulerConfig.model_json_schema(by_alias=True)
    return _structural(raw, raw.get("$defs", {}))


_KEPT = ("type", "description", "enum", "minimum", "maximum", "minItems", "default", "required")


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return _structural({**defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}},
                           defs)
    if "anyOf" in node:  # Optional[X]: X, which may be absent
        (inner,) = [n for n in node["anyOf"] if n.get("type") != "null"]
        return _structural({**inner, **{k: v for k, v in node.items() if k != "anyOf"}}, defs)
    out = {k: node[k] for k in _KEPT if k in node and node[k] is not None}
    if node.get("type") == "object":
        out.pop("default", None)  # nested blocks: their fields carry the defaults
        if "properties" in node:
            out["properties"] = {k: _structural(v, defs) for k, v in node["properties"].items()}
        if isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = _structural(node["additionalProperties"], defs)
    if "items" in node:
        out["items"] = _structural(node["items"], defs)
    return out
