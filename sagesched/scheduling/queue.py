"""The central admission queue: a heap on (client priority, aged rank), lazy deletion for cancels.

Aging is linear in waiting time: key(now) = rank − r·(now − arrival). Between two requests the
difference of keys does not depend on `now`, so ordering by rank + r·arrival is the same order at
every instant and a heap needs no re-keying: O(log n) per operation at any queue length.
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from sagesched.scheduling.types import SchedRequest


class AgingQueue:
    def __init__(self, aging_rate: float) -> None:
        self.aging_rate = aging_rate
        self._heap: list[tuple[int, float, int, SchedRequest]] = []
        self._live: dict[str, SchedRequest] = {}
        self._seq = itertools.count()

    def static_key(self, req: SchedRequest) -> float:
        return req.rank + self.aging_rate * req.arrival

    def key_at(self, req: SchedRequest, now: float) -> float:
        """The aged rank at `now` (what the engine-priority translation sees)."""
        return req.rank - self.aging_rate * (now - req.arrival)

    def push(self, req: SchedRequest) -> None:
        self._live[req.request_id] = req
        heapq.heappush(self._heap, (req.priority, self.static_key(req), next(self._seq), req))

    def remove(self, request_id: str) -> SchedRequest | None:
        return self._live.pop(request_id, None)

    def _drop_dead(self) -> None:
        while self._heap and self._live.get(self._heap[0][3].request_id) is not self._heap[0][3]:
            heapq.heappop(self._heap)

    def peek(self) -> SchedRequest | None:
        self._drop_dead()
        return self._heap[0][3] if self._heap else None

    def pop(self) -> SchedRequest | None:
        self._drop_dead()
        if not self._heap:
            return None
        req = heapq.heappop(self._heap)[3]
        del self._live[req.request_id]
        return req

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[SchedRequest]:
        return iter(self._live.values())
