"""The waiting queue in its two vLLM flavours, behind one interface.

FCFS is a deque (preempted requests go back to the front, so they resume first); priority is a heap
on (priority, arrival), where a preempted request simply re-enters at its rank. Aborts are lazy:
the request is forgotten by id and skipped when it reaches the head.
"""
from __future__ import annotations

import heapq
from collections import deque

from sagesched.engine.request import EngineRequest


class WaitingQueue:
    def __init__(self) -> None:
        self._members: dict[str, EngineRequest] = {}

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._members

    def remove(self, request_id: str) -> EngineRequest | None:
        return self._members.pop(request_id, None)

    def peek(self) -> EngineRequest | None:
        """The request the scheduler would admit next, or None."""
        while self._has_head():
            head = self._head()
            if self._members.get(head.request_id) is head:
                return head
            self._drop_head()  # aborted while waiting
        return None

    def pop(self) -> EngineRequest:
        head = self.peek()
        assert head is not None
        self._drop_head()
        del self._members[head.request_id]
        return head

    def push(self, req: EngineRequest) -> None:
        self._members[req.request_id] = req
        self._insert(req, preempted=False)

    def push_preempted(self, req: EngineRequest) -> None:
        self._members[req.request_id] = req
        self._insert(req, preempted=True)

    # --- storage, per flavour ----------------------------------------------------------------------
    def _has_head(self) -> bool: raise NotImplementedError
    def _head(self) -> EngineRequest: raise NotImplementedError
    def _drop_head(self) -> None: raise NotImplementedError
    def _insert(self, req: EngineRequest, preempted: bool) -> None: raise NotImplementedError


class FCFSQueue(WaitingQueue):
    def __init__(self) -> None:
        super().__init__()
        self._items: deque[EngineRequest] = deque()

    def _has_head(self) -> bool:
        return bool(self._items)

    def _head(self) -> EngineRequest:
        return self._items[0]

    def _drop_head(self) -> None:
        self._items.popleft()

    def _insert(self, req: EngineRequest, preempted: bool) -> None:
        if preempted:
            self._items.appendleft(req)
        else:
            self._items.append(req)


class PriorityQueue(WaitingQueue):
    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[int, float, int, EngineRequest]] = []

    def _has_head(self) -> bool:
        return bool(self._heap)

    def _head(self) -> EngineRequest:
        return self._heap[0][3]

    def _drop_head(self) -> None:
        heapq.heappop(self._heap)

    def _insert(self, req: EngineRequest, preempted: bool) -> None:
        heapq.heappush(self._heap, (req.priority, req.arrival, req._seq, req))


def make_queue(scheduling: str) -> WaitingQueue:
    if scheduling == "fcfs":
        return FCFSQueue()
    if scheduling == "priority":
        return PriorityQueue()
    raise ValueError(f"unknown scheduling {scheduling!r}; expected 'fcfs' or 'priority'")
