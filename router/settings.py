"""The router's one typed settings object. CLI flags and the YAML config map onto it; the defaults
below are the documented defaults."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlparse


@dataclass
class Backend:
    """A statically configured engine pod (its OpenAI server's base URL)."""

    url: str
    name: str = ""
    models: list[str] = field(default_factory=list)  # empty = ask the pod's /v1/models
    engine: str = "vllm"  # "vllm" | "sglang": which metric names and priority convention it uses
    scheduling: str = "fcfs"  # "priority" when the engine runs its queue by our `priority` field
    profile: str = "h100-llama3-8b"  # engine step-time profile the cost model uses for this pod

    def __post_init__(self) -> None:
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
    backends: list[Backend] = field(default_factory=list)
    redis_url: str | None = None  # pod snapshots + completion history shared through Redis
    store_policy: str | None = None  # read only the pods of this "<namespace>/<policy>"; None = all
    policy: str = "sagesched"
    policy_params: dict = field(default_factory=dict)
    aging_rate: float = 0.002  # pod-seconds of rank forgiven per second waited (the scheduler's default)
    max_queue_per_model: int = 1024  # beyond this, 429 with Retry-After
    retry_after_s: float = 1.0
    queue_timeout_s: float = 120.0  # 504 when no pod takes the request within this
    scrape_interval_s: float = 0.5  # static backends: how often /metrics is read
    snapshot_max_age_s: float = 5.0  # older pod metrics make the pod ineligible
    default_profile: str = "h100-llama3-8b"  # step-time profile for pods the store announces
    predictor_address: str | None = None  # host:port of the predictor service; None = history only
    predictor_deadline_s: float = 0.005
    history_maxlen: int = 10_000
    upstream_timeout_s: float = 900.0
    max_upstream_connections: int = 4096
    drain_timeout_s: float = 5.0

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
