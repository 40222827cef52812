"""What routers know about a pod: the snapshot the operator publishes (or a router scrapes).

Snapshots travel through Redis as JSON between the operator and every router replica, and through
the in-process store in the embedded default; both carry this one type.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(kw_only=True)
class EngineLoad:
    """What an engine reports about itself on /metrics, engine-neutral: the scraped half of a
    snapshot (`sagesched.engines` parses it; a snapshot adds who and when)."""

    engine: str = "vllm"  # a name in sagesched.engines.ENGINES
    models: list[str] = field(default_factory=list)
    kv_cache_usage: float = 0.0  # fraction 0..1
    num_running: int = 0
    num_waiting: int = 0
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    kv_capacity_tokens: int | None = None
    prompt_tokens_total: float = 0.0
    generation_tokens_total: float = 0.0
    preemptions_total: float = 0.0


@dataclass(kw_only=True)
class PodSnapshot(EngineLoad):
    name: str
    address: str  # host:port of the engine's OpenAI server
    ready: bool = True
    namespace: str = ""
    policy: str = ""  # the SageSchedPolicy that selected this pod
    # "priority" when the engine runs its queue by request priority (vLLM --scheduling-policy
    # priority): routers then send our engine priority with each request
    scheduling: str = "fcfs"
    scraped_at: float = 0.0  # unix seconds of the scrape that produced this snapshot

    def age(self, now: float) -> float:
        return max(0.0, now - self.scraped_at)

    def is_stale(self, now: float, max_age: float) -> bool:
        """A snapshot older than `max_age` counts as saturated: routers send it nothing new."""
        return self.age(now) > max_age

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "PodSnapshot":
        data = json.loads(raw)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})
