"""Stages 3-4, enqueue and dispatch: the bounded per-model queue in front of the scheduling core.

The policy itself lives in `sagesched.scheduling.Scheduler` (the same object the simulator drives);
this module only feeds it. Dispatch is event-driven: a pass runs when a request arrives, when one
finishes, and when pod metrics change — never on a timer. Passes coalesce: many wake-ups while a pass
is pending cause one pass.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque

from sagesched.router.continuation import CONTINUING_ENGINES
from sagesched.router.errors import RouterError, no_pods, queue_full, queue_timeout
from sagesched.router.metrics import RouterMetrics
from sagesched.router.pods import PodEntry, PodSet
from sagesched.router.request import LiveRequest
from sagesched.router.settings import RouterSettings
from sagesched.scheduling.affinity import prefix_blocks
from sagesched.scheduling.config import SchedulerConfig
from sagesched.scheduling.fairness import tenant_label
from sagesched.scheduling.scheduler import Scheduler
from sagesched.scheduling.types import SchedRequest

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, scheduler, config: SchedulerConfig, pods: PodSet, settings: RouterSettings,
                 metrics: RouterMetrics) -> None:
        self.scheduler = scheduler
        self.config = config
        self.policy = config.name
        self.pods = pods
        self.settings = settings
        self.metrics = metrics
        # Every request from enqueue to finish, by id: the handles a dispatch or preemption decision
        # reaches its client through. Whether one is at a pod is the scheduler's ledger's to say;
        # `waiting` are those whose next dispatch a client awaits.
        self.requests: dict[str, LiveRequest] = {}
        self.waiting: dict[str, LiveRequest] = {}
        self.depth: Counter[str] = Counter()
        self.tenant_depth: Counter[tuple[str, str]] = Counter()  # (model, tenant label) → waiting
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.decision_seconds: list[float] = []  # kept only when a benchmark asks (see record_decisions)
        self.record_decisions = False
        # Loop times of each model's recent finishes: their rate is how fast its queue drains, which
        # is what a refused client should wait for (Retry-After), rather than a fixed guess.
        self._finishes: dict[str, deque[float]] = {}
        pods.on_change = self.wake
        metrics.watch_plugins(lambda: self.scheduler.plugin_times)

    @property
    def running(self) -> dict[str, LiveRequest]:
        """The requests at pods: the ledger's, as the clients' requests."""
        requests = self.requests
        return {rid: requests[rid] for rid in self.scheduler.ledger.entries if rid in requests}

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="dispatch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for req in list(self.waiting.values()):
            if req.dispatched is not None and not req.dispatched.done():
                req.dispatched.set_exception(RouterError(503, "router shutting down", kind="shutdown",
                                                         type="service_unavailable_error"))

    def wake(self) -> None:
        self._wake.set()

    def swap(self, scheduler: Scheduler, config: SchedulerConfig) -> None:
        """Serve a new configuration now, losing no request: queued requests move to the new
        scheduler (keeping their arrival, so their place and aging); running ones stay in the
        ledger, which the new scheduler adopts, with the cost they were dispatched on. Waiting for
        an idle moment instead could wait forever under steady traffic."""
        old = self.scheduler
        for req in self.waiting.values():
            old.cancel(req.id)
            scheduler.submit(req.sched, req.arrival)
        scheduler.adopt(old.ledger)
        for model, depth in self.depth.items():
            self.metrics.queue_depth.remove(model, self.policy)
            self.metrics.queue_depth.labels(model, config.name).set(depth)
        self.scheduler, self.config, self.policy = scheduler, config, config.name
        self._relabel_tenants()
        self.wake()

    # --- enqueue -------------------------------------------------------------------------------
    def enqueue(self, req: LiveRequest) -> None:
        """Admit `req` to the queue of its model, or refuse it (429 full, 503 no pods)."""
        assert req.distribution is not None
        if not self.has_pod(req.model):
            raise no_pods(req.model)
        if self.depth[req.model] >= self.config.queue.max_per_model:
            raise queue_full(req.model, self.retry_after(req.model))
        req.sched = SchedRequest(
            request_id=req.id, model=req.model, prompt_tokens=req.prompt_tokens, arrival=req.arrival,
            distribution=req.distribution, max_tokens=req.max_tokens, priority=self.client_priority(req.priority),
            watched=req.stream, preemptible=req.progress is not None, prefix_blocks=self._prefix_blocks(req),
            tenant=req.tenant,
        )
        self._submit(req)

    def _prefix_blocks(self, req: LiveRequest) -> tuple[int, ...]:
        """The prompt's block hashes, only for a pick that reads them (hashing a long prompt costs
        microseconds on every request)."""
        return prefix_blocks(req.prompt_text) if self.scheduler.pick.reads_prefix_blocks else ()

    @property
    def tenant_header(self) -> str:
        """The header naming a request's tenant in the configuration served now (parse reads it)."""
        return self.config.fairness.tenant_header

    def client_priority(self, asked: int) -> int:
        """The client's priority as the queue's first sort key: clamped to ±`client_priority_limit`,
        so no client can jump every queue unboundedly; with the default limit 0, ignored."""
        limit = self.config.queue.client_priority_limit
        return max(-limit, min(limit, asked))

    def _submit(self, req: LiveRequest) -> None:
        """Hand `req` to the scheduler (keeping its arrival, so its place and aging) and wait for a pass."""
        assert req.sched is not None
        self.requests[req.id] = req
        self.scheduler.submit(req.sched, req.arrival)
        self._await_dispatch(req)
        if len(self.waiting) == 1:
            # Alone in the queue: a pass now decides exactly what the coalesced pass would, without
            # waiting a loop turn for the dispatch task (the common case whenever pods have room).
            self._pass()
        else:
            self.wake()

    def _await_dispatch(self, req: LiveRequest) -> None:
        """`req` is in the scheduler's queue: it waits here, with a new future its next dispatch sets."""
        req.dispatched = asyncio.get_running_loop().create_future()
        req.enqueued_at = time.perf_counter()
        self.waiting[req.id] = req
        self._set_depth(req, +1)

    def has_pod(self, model: str) -> bool:
        """Some pod serving `model` is reachable and not ejected (it may still be busy)."""
        return any(model in p.models and p.reachable and not p.ejected for p in self.pods.pods.values())

    async def wait_dispatched(self, req: LiveRequest) -> PodEntry:
        """Until the policy sends `req` to a pod; 504 after the queue timeout. A cancelled waiter
        (client gone) leaves the queue."""
        assert req.dispatched is not None
        if req.dispatched.done():  # dispatched inline at enqueue: no timer, no shield
            return req.dispatched.result()
        try:
            return await asyncio.wait_for(asyncio.shield(req.dispatched), self.config.queue.timeout_seconds)
        except asyncio.TimeoutError:
            if self._withdraw(req):
                raise queue_timeout(asyncio.get_running_loop().time() - req.arrival) from None
            return req.dispatched.result()  # dispatched in the same instant the timer fired
        except asyncio.CancelledError:
            self._withdraw(req)
            raise

    def retry_after(self, model: str) -> float:
        """Seconds until a full queue of `model` has room again at its recent drain rate (at least
        `retry_after_s`, at most the queue timeout: waiting longer could not help)."""
        done = self._finishes.get(model)
        if not done or len(done) < 2:
            return self.settings.retry_after_s
        span = asyncio.get_running_loop().time() - done[0]
        rate = len(done) / span if span > 0 else float("inf")
        return min(max(self.settings.retry_after_s, self.depth[model] / rate), self.config.queue.timeout_seconds)

    async def redispatch(self, req: LiveRequest) -> PodEntry:
        """`req`'s pod failed before sending anything: queue it again for the policy to place anew."""
        self.requeue(req)
        return await self.wait_dispatched(req)

    def requeue(self, req: LiveRequest) -> None:
        """`req` left its pod unfinished (the pod failed): free that placement and queue it again; it
        keeps its arrival time, so its place and aging."""
        self.finish(req)
        req.pod, req.dispatched_at = None, None
        self._submit(req)

    def _withdraw(self, req: LiveRequest) -> bool:
        """Take a waiting request out of the queue, and out of the dispatcher's hands; False if it
        was dispatched meanwhile."""
        if self.waiting.pop(req.id, None) is None:
            return False
        self.requests.pop(req.id, None)
        self.scheduler.cancel(req.id)
        self._set_depth(req, -1)
        return True

    # --- dispatch ------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.waiting:
                self._pass()

    def _pass(self) -> None:
        try:
            self.dispatch_pass()
        except Exception:  # a policy bug must neither kill the dispatch loop nor fail the caller
            log.exception("dispatch pass failed")

    def dispatch_pass(self) -> int:
        loop_now = asyncio.get_running_loop().time()
        views = self.pods.views()
        t0 = time.perf_counter()
        pairs = self.scheduler.dispatch(views, loop_now)
        elapsed = time.perf_counter() - t0
        for sreq, pod_name in self.scheduler.take_preemptions():  # before the pairs: a victim may be among them
            self._preempt(sreq.request_id, pod_name)
        self.metrics.decision_latency.labels(self.policy).observe(elapsed)
        if self.record_decisions:
            self.decision_seconds.append(elapsed)
        decision = self.metrics.decision.labels(self.policy)
        for sreq, view in pairs:
            req = self.waiting.pop(sreq.request_id, None)
            if req is None:  # withdrawn in the same instant: give the slot back
                self.scheduler.on_finish(sreq.request_id, loop_now)
                continue
            pod = self.pods.pods[view.name]
            if sreq.preemptible and pod.engine not in CONTINUING_ENGINES:
                sreq.preemptible = False
                self.metrics.unpreemptible.labels("engine").inc()
            req.pod = pod
            req.dispatched_at = loop_now
            self._set_depth(req, -1)
            self.metrics.queue_wait.labels(req.model, self.policy).observe(req.queue_wait)
            decision.observe(time.perf_counter() - req.enqueued_at)
            self.metrics.dispatches.labels(pod.name, self.policy).inc()
            self._count_inflight(pod)
            if req.dispatched is not None and not req.dispatched.done():
                req.dispatched.set_result(pod)
        return len(pairs)

    def _preempt(self, request_id: str, pod_name: str) -> None:
        """The scheduler displaced this running request (and queued it again): it leaves its pod's
        accounting now and waits like a new arrival; its stream notices `preempted` at its next
        event, closes the pod's connection and waits for its next dispatch (`Router.relay`)."""
        req = self.requests.get(request_id)
        if req is None:
            return
        self._left_pod(req)
        self.metrics.preemptions.labels(pod_name, "index").inc()
        req.preempted, req.preemptions = True, req.preemptions + 1
        self._await_dispatch(req)

    def keep(self, req: LiveRequest) -> None:
        """A preempted request finished before its stream saw the decision: it no longer waits."""
        req.preempted = False
        self._withdraw(req)

    # --- progress and completion ---------------------------------------------------------------
    def progress(self, req: LiveRequest) -> None:
        if req.preempted:  # tokens still arriving from the pod it is leaving: its next run counts them
            return
        first = req.sched is not None and req.sched.generated <= 0
        self.scheduler.on_progress(req.id, req.output_tokens)
        if first and self.waiting:
            # Admission holds back pods with `engine_buffer` requests yet to stream; a first token
            # frees such a place, and without a pass now the queue would wait for the next arrival,
            # finish or metrics scrape.
            self.wake()

    def finish(self, req: LiveRequest) -> None:
        """`req` left its pod (done, failed or aborted): free its place and dispatch again."""
        if req.id not in self.scheduler.ledger:
            self._withdraw(req)
            return
        self.requests.pop(req.id, None)
        now = asyncio.get_running_loop().time()
        self.scheduler.on_finish(req.id, now)
        self._finishes.setdefault(req.model, deque(maxlen=64)).append(now)
        self._left_pod(req)
        if self.waiting:  # a freed slot matters only to a queued request
            self.wake()

    def _left_pod(self, req: LiveRequest) -> None:
        """The scheduler has taken it off its pod's page already (finish or preemption)."""
        if req.pod is not None:
            self._count_inflight(req.pod)

    def _count_inflight(self, pod: PodEntry) -> None:
        self.metrics.inflight.labels(pod.name).set(len(pod.inflight))

    def _set_depth(self, req: LiveRequest, delta: int) -> None:
        self.depth[req.model] += delta
        self.metrics.queue_depth.labels(req.model, self.policy).set(self.depth[req.model])
        key = (req.model, tenant_label(req.tenant, self.config.fairness.weights))
        self.tenant_depth[key] += delta
        self.metrics.tenant_queue_depth.labels(*key).set(self.tenant_depth[key])

    def _relabel_tenants(self) -> None:
        """A new configuration may name other tenants: count the waiting requests under its labels."""
        weights = self.config.fairness.weights
        self.tenant_depth = Counter((r.model, tenant_label(r.tenant, weights)) for r in self.waiting.values())
        self.metrics.tenant_queue_depth.clear()
        for key, depth in self.tenant_depth.items():
            self.metrics.tenant_queue_depth.labels(*key).set(depth)

    def oldest_wait(self, model: str, now: float) -> float:
        return max((now - r.arrival for r in self.waiting.values() if r.model == model), default=0.0)
