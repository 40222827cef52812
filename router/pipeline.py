"""The request path, stage by stage, shared by the HTTP and gRPC front ends:

    parse (router.parse) → predict (router.predict) → enqueue + dispatch (router.dispatch)
    → stream (router.proxy) → record (here)

`Router.serve(req)` runs predict → dispatch and hands the chosen pod to the front end, which streams;
leaving the block (normally, on error, or because the client went away) frees the pod's slot and
records the completion. Recording runs in the background so Redis never delays an answer.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

from sagesched.router.continuation import Progress, continuation_of, why_not_preemptible
from sagesched.router.dispatch import Dispatcher
from sagesched.router.errors import RouterError, resume_refused, unknown_model
from sagesched.router.metrics import RouterMetrics
from sagesched.router.pods import PodEntry, PodSet
from sagesched.router.predict import PredictStage
from sagesched.router.proxy import Upstream
from sagesched.router.request import LiveRequest
from sagesched.router.settings import RouterSettings
from sagesched.router.sync import StoreSync
from sagesched.router.upstream_http import PodConnectionError, PodResponse
from sagesched.scheduling import HistoryEstimator, Scheduler
from sagesched.scheduling.config import SchedulerConfig
from sagesched.scheduling.priority import LOWER_FIRST
from sagesched.state.history import CompletionRecord, HistoryStore, InProcessHistoryStore

log = logging.getLogger(__name__)
# what a pod's broken or silent stream raises while it is read (Upstream.open converts them to RouterErrors)
UPSTREAM_FAULTS = (PodConnectionError, TimeoutError)

# Completion records being written at once; beyond this the history store is not keeping up (or is
# down and timing out) and further records are dropped and counted instead of held in memory.
MAX_PENDING_RECORDS = 1024


class Router:
    """One router: pods, the dispatcher around the scheduler, the upstream pool, the history."""

    def __init__(
        self,
        settings: RouterSettings,
        *,
        scheduler: Any | None = None,
        estimator: Any | None = None,
        predictor_client: Any | None = None,
        pod_store: Any | None = None,
        history: HistoryStore | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or RouterMetrics()
        config = settings.scheduler_config()
        scheduler = scheduler if scheduler is not None else config.build()
        self.pods = PodSet(settings, self.metrics, scheduler.ledger, store=pod_store)
        self.dispatcher = Dispatcher(scheduler, config, self.pods, settings, self.metrics)
        self.metrics.serving_policy(settings.store_policy or "", config.name, 0)
        self.predictor = PredictStage(estimator if estimator is not None else HistoryEstimator(), self.metrics,
                                      predictor_client, settings.predictor_deadline_s)
        self.predictor_client = predictor_client
        self.upstream = Upstream(settings)
        self.history: HistoryStore = history or InProcessHistoryStore(settings.history_maxlen)
        self._background: set[asyncio.Task] = set()
        self.sync = StoreSync(self, pod_store) if pod_store is not None else None
        # called with each scheduler a live configuration swaps in (gateway mode re-wraps its policy)
        self.on_swap: list[Callable[[Scheduler], object]] = []
        self._sync_task: asyncio.Task | None = None
        self.started = False
        self.draining = False  # shutting down: not ready, finishing what it has

    @property
    def scheduler(self) -> Scheduler:
        return self.dispatcher.scheduler

    @property
    def policy(self) -> str:
        return self.dispatcher.policy

    def apply(self, config: SchedulerConfig, generation: int) -> None:
        """Serve `config` (generation `generation` of the SageSchedPolicy) from now on, without a
        restart: a new Scheduler swapped in by the dispatcher. The predictor block is read only at
        start (its client and deadline are built once)."""
        scheduler = config.build()
        self.dispatcher.swap(scheduler, config)
        for hook in self.on_swap:
            hook(scheduler)
        self.metrics.serving_policy(self.settings.store_policy or "", config.name, generation)

    async def start(self) -> None:
        await self.upstream.start()
        await self.pods.start()
        self.dispatcher.start()
        if self.sync is not None:
            self._sync_task = asyncio.create_task(self.sync.run(), name="store-sync")
        self.started = True

    async def stop(self) -> None:
        self.started = False
        if self._sync_task is not None:
            self._sync_task.cancel()
            await asyncio.gather(self._sync_task, return_exceptions=True)
        await self.dispatcher.stop()
        if self._background:
            await asyncio.wait(self._background, timeout=self.settings.drain_timeout_s)
        await self.pods.stop()
        await self.upstream.stop()
        await self.history.close()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def is_ready(self) -> bool:
        return self.started and not self.draining and any(p.reachable for p in self.pods.pods.values())

    # --- the path --------------------------------------------------------------------------------
    @asynccontextmanager
    async def serve(self, req: LiveRequest) -> AsyncIterator[PodEntry]:
        """predict → enqueue → dispatch; yields the pod. On exit: free the slot, record."""
        pod = await self.admit(req)
        try:
            yield pod
        except asyncio.CancelledError:
            req.finish_reason = "abort"
            raise
        except RouterError:
            req.finish_reason = req.finish_reason or "error"
            raise
        finally:
            self.release(req)

    @asynccontextmanager
    async def open(self, req: LiveRequest) -> AsyncIterator[PodResponse]:
        """`serve`, then connect to the pod (`_connect`): yields its response, headers read. A
        preemptive policy may stop a stream and resume it later (`relay`): such requests are marked
        here, where streams start."""
        if self.scheduler.preemption.enabled:
            self._mark_preemptible(req)
        async with self.serve(req) as pod, self._connect(req, pod) as resp:
            yield resp

    def _mark_preemptible(self, req: LiveRequest) -> None:
        reason = why_not_preemptible(req)
        if reason is None:
            req.progress = Progress()
        else:
            self.metrics.unpreemptible.labels(reason).inc()

    @asynccontextmanager
    async def _connect(self, req: LiveRequest, pod: PodEntry) -> AsyncIterator[PodResponse]:
        """The pod's response to `req`. A pod that fails before answering — the connection fails or
        it answers 5xx — counts against its health and, since the client has received nothing from
        this run yet, the request goes back to the queue for the policy to place again (up to
        `upstream_retries` times). Failures after that (the pod dies mid-stream, goes silent) count
        too and propagate as `RouterError`s."""
        for attempt in range(self.settings.upstream_retries + 1):
            stack = AsyncExitStack()
            try:
                resp = await stack.enter_async_context(self.upstream.open(req, pod, self.engine_priority(req)))
            except RouterError as err:
                self.pods.record_failure(pod, unreachable=err.kind == "upstream_connection")
                if err.kind != "upstream_connection" or self._last_attempt(req, attempt):
                    raise
            else:
                if resp.status < 500 or self._last_attempt(req, attempt):
                    break
                self.pods.record_failure(pod, unreachable=False)
                await stack.aclose()
            log.info("request %s: pod %s failed before answering; dispatching again", req.id, pod.name)
            pod = await self.dispatcher.redispatch(req)
        if resp.status >= 500:
            self.pods.record_failure(pod, unreachable=False)
        try:
            async with stack:  # converts the pod's connection errors into RouterErrors
                yield resp
        except RouterError as err:  # only the connection's own faults: a 5xx was counted above
            if err.kind in ("upstream_connection", "upstream_timeout"):
                self.pods.record_failure(pod, unreachable=err.kind == "upstream_connection")
            raise
        if resp.status < 500 and pod.name not in req.failed_pods:
            self.pods.record_success(pod)

    def _last_attempt(self, req: LiveRequest, attempt: int) -> bool:
        """No retry after this one: the retries are spent, or no pod is left to serve the model."""
        return attempt == self.settings.upstream_retries or not self.dispatcher.has_pod(req.model)

    async def relay(self, req: LiveRequest, resp: PodResponse) -> AsyncIterator[list[bytes]]:
        """The client's one stream, in runs of SSE events (one run per read from a pod): the first
        run's, then, each time the request leaves its pod unfinished — the scheduler preempted it, or
        the pod died or went silent under it (`_fail_over`) — its continuation's."""
        on_token = partial(self.on_token, req)
        async with AsyncExitStack() as resumed:
            while True:
                try:
                    async for run in self.upstream.runs(req, resp, self.now, on_token):
                        yield run
                except UPSTREAM_FAULTS as exc:
                    if not self._fail_over(req, exc):
                        raise
                if not req.preempted:
                    return
                resp.close()  # the engine aborts the request; its blocks stay in the prefix cache
                if req.finish_reason:  # it finished before the decision reached its stream
                    self.dispatcher.keep(req)
                    return
                resp = await resumed.enter_async_context(self._resume(req))

    def _fail_over(self, req: LiveRequest, exc: BaseException) -> bool:
        """The pod failed mid-stream: for a request a continuation can resume, while another pod
        serves its model, count the failure against the pod and queue the request to resume
        elsewhere (at most `upstream_retries` times), so its client loses nothing. False: the
        failure stands (the front end ends the stream with an error event)."""
        pod = req.pod
        if req.progress is None or pod is None or req.finish_reason or req.failovers >= self.settings.upstream_retries:
            return False
        self.pods.record_failure(pod, unreachable=not isinstance(exc, TimeoutError))
        req.failed_pods.add(pod.name)
        if not self.dispatcher.has_pod(req.model):
            return False
        log.info("request %s: pod %s failed mid-stream (%s); resuming it elsewhere", req.id, pod.name,
                 exc.__class__.__name__)
        req.failovers += 1
        self.metrics.preemptions.labels(pod.name, "pod_failed").inc()
        self.dispatcher.requeue(req)
        req.preempted = True
        return True

    @asynccontextmanager
    async def _resume(self, req: LiveRequest) -> AsyncIterator[PodResponse]:
        """`req`'s continuation, once the policy dispatches it again: the pod's response."""
        assert req.progress is not None and req.sched is not None
        req.continuation = continuation_of(req, req.progress, req.output_tokens)
        pod = await self.dispatcher.wait_dispatched(req)
        req.preempted = False
        self.metrics.resumes.labels(pod.name, str(pod.name == req.sched.resume_pod).lower()).inc()
        self.metrics.recomputed_tokens.inc(req.prompt_tokens + req.output_tokens)
        async with self._connect(req, pod) as resp:
            if resp.status != 200:
                raise resume_refused(resp.status, await resp.read())
            yield resp

    async def admit(self, req: LiveRequest) -> PodEntry:
        """predict → enqueue → dispatch: the pod the policy chose. Every admitted request must be
        `release`d; split from `serve` because gateway mode admits and releases in different
        ext_proc messages (Envoy, not this process, carries the bytes in between)."""
        if not self.pods.serves(req.model):
            raise unknown_model(req.model)
        await self.predictor.predict(req)
        self.dispatcher.enqueue(req)
        try:
            return await self.dispatcher.wait_dispatched(req)
        except BaseException:
            req.finish_reason = req.finish_reason or "abort"
            raise

    def release(self, req: LiveRequest) -> None:
        """The request left its pod (done, failed or abandoned): free the slot, record."""
        if req.finished_at is None:
            req.finished_at = self.now()
        self.dispatcher.finish(req)
        self._record(req)

    def engine_priority(self, req: LiveRequest) -> int | None:
        """The priority an engine in priority mode gets for `req`: the core's translation of its
        aged rank (computed in the scheduler's engine convention, flipped for pods of the other)."""
        if req.sched is None or req.pod is None:
            return None
        value = req.sched.engine_priority
        same = LOWER_FIRST.get(req.pod.engine, True) == LOWER_FIRST.get(self.scheduler.engine, True)
        return value if same else -value

    def on_token(self, req: LiveRequest) -> None:
        self.dispatcher.progress(req)

    # --- record ----------------------------------------------------------------------------------
    def _record(self, req: LiveRequest) -> None:
        labels = (req.model, self.policy)
        completed = req.finish_reason in ("stop", "length")
        if completed:
            if req.ttft is not None:
                self.metrics.ttft.labels(*labels).observe(req.ttft)
            self.metrics.ttlt.labels(*labels).observe(req.ttlt)
            self.metrics.actual_tokens.labels(req.model).observe(req.output_tokens)
            prompt_tokens = int((req.usage or {}).get("prompt_tokens") or req.prompt_tokens)
            self.predictor.observe(req.model, prompt_tokens, req.output_tokens)
        record = CompletionRecord(
            request_id=req.id, model=req.model,
            prompt_tokens=int((req.usage or {}).get("prompt_tokens") or req.prompt_tokens),
            output_tokens=req.output_tokens, finish_reason=req.finish_reason or "error",
            pod=req.pod.name if req.pod else "", max_tokens=req.max_tokens or 0,
            ttft_seconds=req.ttft or 0.0, e2e_seconds=req.ttlt or 0.0, completed_at_unix=time.time(),
            prompt=req.prompt_text,
        )
        if len(self._background) >= MAX_PENDING_RECORDS:  # the store is stuck: drop, never queue unboundedly
            self.metrics.history_dropped.inc()
            return
        task = asyncio.create_task(self._persist(record))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _persist(self, record: CompletionRecord) -> None:
        try:
            await self.history.append(record)
            if self.predictor_client is not None and record.learnable:
                await self.predictor_client.report([_predictor_record(record)])
        except Exception as exc:  # history is best effort: the answer already went out
            self.metrics.history_dropped.inc()
            log.debug("recording %s failed: %s", record.request_id, exc.__class__.__name__)


def _predictor_record(record: CompletionRecord):
    """The history record in the predictor's own type (what its client reports)."""
    from sagesched.predictor.types import CompletionRecord as PredictorRecord
    from sagesched.predictor.types import PredictQuery

    query = PredictQuery(model=record.model, prompt=record.prompt, prompt_tokens=record.prompt_tokens,
                         max_tokens=record.max_tokens, request_id=record.request_id)
    return PredictorRecord(query=query, output_tokens=record.output_tokens, finish_reason=record.finish_reason,
                           completed_at=record.completed_at_unix, pod=record.pod)
