"""Tenant fairness: weighted fair sharing of a model's queue between tenants, with virtual counters.

Without it one client that floods the queue crowds out every other: the policy orders by cost, and a
flood of cheap requests is all cheap. With it the queue follows the Virtual Token Counter (Sheng et
al., "Fairness in Serving Large Language Models", OSDI 2024): each tenant has a counter of the
service it has received, in the cost model's pod-seconds divided by its weight — a request's prefill
when it is dispatched, its output as it streams (the scheduler charges at the steps where it looks at
progress anyway, and the rest when the request leaves its pod) — and the queue serves the backlogged
tenant with the smallest counter first; within a tenant, the policy's own order (client priority,
aged rank): a client's priority hint orders its own tenant's requests and cannot claim another
tenant's share. Over a backlog, tenants receive service in proportion to their weights.

A tenant that was idle must not bank credit: when it becomes backlogged again its counter is lifted
to the smallest counter of the tenants backlogged now (or, with none, to that of the tenant served
last), so it shares from then on rather than taking everything until it has caught up.

Counters are kept per model queue: each model has its own pods, so service on one is no claim on
another. Every operation is O(log n) in the queue's length (a heap of requests per tenant) plus
amortised O(log T) in the backlogged tenants (a heap of their counters, stale entries skipped).
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field

from sagesched.scheduling.queue import Aging, AgingQueue
from sagesched.scheduling.types import SchedRequest

OTHER = "other"  # the metric label of every tenant the configuration does not name
_COMPACT_SLACK = 64  # stale counter entries tolerated beyond twice the backlogged tenants


def tenant_label(tenant: str, named: Container[str]) -> str:
    """A tenant as a metric label: the configured ones by name, the rest as "other", so a client
    cannot grow the metrics' cardinality by inventing tenants."""
    return tenant if tenant in named else OTHER


@dataclass(frozen=True)
class Fairness:
    """The plugin's parameters: tenants' weights (a tenant with twice the weight receives twice
    the service over a backlog) and the weight of every tenant not named."""

    weights: Mapping[str, float] = field(default_factory=dict)
    default_weight: float = 1.0

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, self.default_weight)

    def queue(self, aging_rate: float) -> "FairQueue":
        return FairQueue(aging_rate, self)


class FairQueue(Aging):
    """A model's queue shared fairly between tenants; the scheduler drives it as an AgingQueue
    and reports the service it dispatches through `charge`."""

    def __init__(self, aging_rate: float, fairness: Fairness) -> None:
        super().__init__(aging_rate)
        self.fairness = fairness
        self.counters: dict[str, float] = {}
        self._tenants: dict[str, AgingQueue] = {}  # backlogged tenants' waiting requests
        self._tenant_of: dict[str, str] = {}  # request id → its tenant, while it waits
        self._heap: list[tuple[float, int, str]] = []  # (counter, seq, tenant); current iff _current[tenant] == seq
        self._current: dict[str, int] = {}
        self._seq = itertools.count()
        self._last: str | None = None  # the tenant served last: the floor when none is backlogged

    # --- the tenants' counters ----------------------------------------------------------------
    def charge(self, tenant: str, cost: float) -> None:
        """`tenant` received `cost` pod-seconds of service."""
        self.counters[tenant] = self.counters.get(tenant, 0.0) + cost / self.fairness.weight(tenant)
        if tenant in self._tenants:
            self._enter(tenant)

    def _enter(self, tenant: str) -> None:
        """(Re)file a backlogged tenant under its current counter; older entries go stale."""
        seq = next(self._seq)
        self._current[tenant] = seq
        heapq.heappush(self._heap, (self.counters[tenant], seq, tenant))
        if len(self._heap) > 2 * len(self._current) + _COMPACT_SLACK:
            self._heap = [e for e in self._heap if self._current.get(e[2]) == e[1]]
            heapq.heapify(self._heap)

    def _head_tenant(self) -> str | None:
        """The backlogged tenant with the smallest counter (ties: the one filed first)."""
        heap, current = self._heap, self._current
        while heap and current.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][2] if heap else None

    def _lift(self, tenant: str) -> None:
        """A tenant becoming backlogged starts level with the others: no credit from being idle."""
        head = self._head_tenant()
        head = self._last if head is None else head
        floor = self.counters.get(head, 0.0) if head is not None else 0.0
        self.counters[tenant] = max(self.counters.get(tenant, 0.0), floor)

    def _leave_if_idle(self, tenant: str) -> None:
        if not self._tenants[tenant]:
            del self._tenants[tenant], self._current[tenant]

    # --- the queue interface the scheduler drives ------------------------------------------------
    def push(self, req: SchedRequest) -> None:
        queue = self._tenants.get(req.tenant)
        if queue is None:
            self._lift(req.tenant)
            queue = self._tenants[req.tenant] = AgingQueue(self.aging_rate)
            self._enter(req.tenant)
        queue.push(req)
        self._tenant_of[req.request_id] = req.tenant

    def remove(self, request_id: str) -> SchedRequest | None:
        tenant = self._tenant_of.pop(request_id, None)
        if tenant is None:
            return None
        req = self._tenants[tenant].remove(request_id)
        self._leave_if_idle(tenant)
        return req

    def peek(self) -> SchedRequest | None:
        tenant = self._head_tenant()
        return None if tenant is None else self._tenants[tenant].peek()

    def pop(self) -> SchedRequest | None:
        tenant = self._head_tenant()
        if tenant is None:
            return None
        req = self._tenants[tenant].pop()
        del self._tenant_of[req.request_id]
        self._leave_if_idle(tenant)
        self._last = tenant
        return req

    def rekey(self, aging_rate: float) -> None:
        """Age at a new rate from now on (every tenant's queue re-keyed: O(n))."""
        self.aging_rate = aging_rate
        for queue in self._tenants.values():
            queue.rekey(aging_rate)

    def __len__(self) -> int:
        return len(self._tenant_of)

    def __iter__(self) -> Iterator[SchedRequest]:
        return itertools.chain.from_iterable(self._tenants.values())
