"""Completion history: what routers saw finish, for the length estimator and the predictor.

Two stores with one interface. `InProcessHistoryStore` keeps a bounded ring buffer per model (the
embedded default); `RedisHistoryStore` appends to one Redis stream per model with `XADD ... MAXLEN ~`
so every router replica and the predictor read the same bounded history. Both are async because the
Redis one does network I/O and callers sit on the data path.
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Protocol

DEFAULT_MAXLEN = 10_000
# Prompts are kept for learning, but bounded so a history entry stays small on the wire and in RAM.
MAX_PROMPT_CHARS = 2_000


@dataclass
class CompletionRecord:
    """One finished request, as the router saw it (mirrors `sagesched.v1.Completion`)."""

    request_id: str
    model: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str  # "stop", "length", "abort" or "error"
    pod: str = ""
    max_tokens: int = 0
    ttft_seconds: float = 0.0
    e2e_seconds: float = 0.0
    completed_at_unix: float = 0.0
    prompt: str = ""
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prompt = self.prompt[:MAX_PROMPT_CHARS]

    @property
    def learnable(self) -> bool:
        """Only requests that ended on their own terms say something about output length."""
        return self.finish_reason in ("stop", "length")

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "CompletionRecord":
        data = json.loads(raw)
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


class HistoryStore(Protocol):
    """Bounded, per-model, newest-last history of completions."""

    async def append(self, record: CompletionRecord) -> None: ...

    async def recent(self, model: str, limit: int | None = None) -> list[CompletionRecord]:
        """Up to `limit` most recent records of `model`, oldest first."""
        ...

    async def models(self) -> list[str]: ...

    async def close(self) -> None: ...


class InProcessHistoryStore:
    """Ring buffer per model; the embedded default for `sagesched demo` and single replicas."""

    def __init__(self, maxlen: int = DEFAULT_MAXLEN) -> None:
        self.maxlen = maxlen
        self._by_model: dict[str, deque[CompletionRecord]] = {}

    async def append(self, record: CompletionRecord) -> None:
        ring = self._by_model.get(record.model)
        if ring is None:
            ring = self._by_model[record.model] = deque(maxlen=self.maxlen)
        ring.append(record)

    async def recent(self, model: str, limit: int | None = None) -> list[CompletionRecord]:
        ring = self._by_model.get(model)
        if not ring:
            return []
        items = list(ring)
        return items if limit is None else items[-limit:]

    async def models(self) -> list[str]:
        return sorted(self._by_model)

    async def close(self) -> None:
        return None


class RedisHistoryStore:
    """One Redis stream per model, trimmed approximately to `maxlen` on every append.

    `MAXLEN ~` lets Redis trim whole radix-tree nodes, which keeps XADD O(1) amortised; the stream
    may hold slightly more than `maxlen` entries.
    """

    FIELD = "r"

    def __init__(self, url: str, maxlen: int = DEFAULT_MAXLEN, prefix: str = "sagesched:history:",
                 timeout_s: float = 1.0) -> None:
        import redis.asyncio as aioredis

        self.maxlen = maxlen
        self.prefix = prefix
        # Bounded socket waits: a Redis that accepts but stalls must fail an append (which callers
        # count as dropped) rather than pile up writers. redis-py reconnects on the next command.
        self._redis = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def key(self, model: str) -> str:
        return f"{self.prefix}{model}"

    async def append(self, record: CompletionRecord) -> None:
        await self._redis.xadd(
            self.key(record.model), {self.FIELD: record.to_json()}, maxlen=self.maxlen, approximate=True
        )

    async def recent(self, model: str, limit: int | None = None) -> list[CompletionRecord]:
        count = limit if limit is not None else self.maxlen
        entries = await self._redis.xrevrange(self.key(model), count=count)
        return [CompletionRecord.from_json(fields[self.FIELD.encode()]) for _id, fields in reversed(entries)]

    async def models(self) -> list[str]:
        keys = [k.decode() async for k in self._redis.scan_iter(match=f"{self.prefix}*")]
        return sorted(k[len(self.prefix):] for k in keys)

    async def close(self) -> None:
        await self._redis.aclose()


def open_history_store(redis_url: str | None, maxlen: int = DEFAULT_MAXLEN) -> HistoryStore:
    """Redis streams when a URL is configured, the in-process ring buffer otherwise."""
    if redis_url:
        return RedisHistoryStore(redis_url, maxlen=maxlen)
    return InProcessHistoryStore(maxlen=maxlen)
