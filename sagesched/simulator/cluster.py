"""Discrete-event cluster simulation: N engine models on a virtual clock, driven by the same
`Scheduler` the live router uses.

Events are request arrivals and engine iterations. Each engine keeps its own clock; the pod whose
clock is earliest runs next, up to the next arrival or its next finished request (finishes free room,
so a central queue gets a dispatch chance at that instant). Other pods may lag behind that instant by
less than one decode run; their state as seen by the scheduler is that slightly older state — like a
metrics scrape — and a pod chosen for a request is first brought up to the dispatch time, so no
request ever starts before it was dispatched.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np

from sagesched.engine import Engine, EngineRequest, StepOutcome, StepTimeProfile
from sagesched.scheduling import Admission, HistoryEstimator, PodView, SchedRequest, Scheduler
from sagesched.scheduling.scheduler import DEFAULT_AGING_RATE
from sagesched.simulator.workload import Workload
from sagesched.traces import Trace

MODEL = "m"


@dataclass(frozen=True)
class PolicySpec:
    """`name[:true|:pred][:noadm]` — a registered policy, optionally with the true conditional length
    distribution (`true`) or the predictor's exported distributions (`pred`, for traces that carry
    them) instead of the history estimator, optionally without the memory admission gate."""

    policy: str
    true_distribution: bool = False
    memory_admission: bool = True
    predicted: bool = False

    @classmethod
    def parse(cls, text: str) -> "PolicySpec":
        name, *flags = text.split(":")
        unknown = set(flags) - {"true", "noadm", "pred"}
        if unknown:
            raise ValueError(f"unknown policy flags {sorted(unknown)} in {text!r}")
        return cls(name, "true" in flags, "noadm" not in flags, "pred" in flags)

    @property
    def label(self) -> str:
        source = ":true" if self.true_distribution else ":pred" if self.predicted else ""
        return self.policy + source + ("" if self.memory_admission else ":noadm")


@dataclass(frozen=True)
class SimConfig:
    pods: int = 8
    seed: int = 0
    aging_rate: float = DEFAULT_AGING_RATE
    admission_quantile: float = 0.9
    engine_buffer: int = 4
    prefill_tokens: int | None = None


@dataclass
class SimResult:
    label: str
    load: float
    arrival: np.ndarray
    first_token: np.ndarray
    first_scheduled: np.ndarray
    finish: np.ndarray
    output: np.ndarray
    preemptions: int
    kv_peak: float  # highest KV usage any pod reported (fraction)
    finished_ids: list[str] = field(default_factory=list)


def make_estimator(spec: PolicySpec, history: Trace, full: Trace) -> HistoryEstimator:
    """History estimator from the earlier part of the trace; the `true` variant knows the whole
    trace's conditional distribution (what a perfectly calibrated predictor of this feature gives)."""
    est = HistoryEstimator()
    source = full if spec.true_distribution else history
    est.fit(MODEL, source.prompts, source.outputs)
    return est


class ClusterSim:
    def __init__(self, workload: Workload, spec: PolicySpec, profile: StepTimeProfile,
                 estimator: HistoryEstimator, config: SimConfig) -> None:
        self.w, self.spec, self.config = workload, spec, config
        self.scheduler = Scheduler(
            spec.policy,
            admission=Admission(spec.memory_admission, config.admission_quantile, config.engine_buffer,
                                config.prefill_tokens),
            aging_rate=config.aging_rate, engine="sim", reference_profile=profile,
        )
        central = self.scheduler.policy.central_queue
        self.engines = [Engine(profile, "priority" if central else "fcfs", seed=config.seed + k)
                        for k in range(config.pods)]
        self.views = [PodView(f"pod-{k}", (MODEL,), profile) for k in range(config.pods)]
        self.index = {v.name: k for k, v in enumerate(self.views)}
        self.estimator = estimator
        self.learn_online = not spec.true_distribution
        self.track_progress = central
        self.sched_reqs: dict[str, SchedRequest] = {}
        self.engine_reqs: dict[str, EngineRequest] = {}
        self.finished: list[EngineRequest] = []
        self.kv_peak = 0.0
        self._heap: list[tuple[float, int]] = []
        self._queued_at: list[float] = [math.nan] * config.pods
        # pods whose engine changed since their view was last written; all of them at the start
        self._stale_views: set[int] = set(range(config.pods))

    # --- event loop -------------------------------------------------------------------------------
    def run(self) -> SimResult:
        n, i = len(self.w), 0
        while i < n or self._heap:
            t_next = float(self.w.arrivals[i]) if i < n else math.inf
            if self._heap and self._heap[0][0] < t_next:
                self._run_pod(heapq.heappop(self._heap), t_next)
            else:
                self._arrive(i, t_next)
                i += 1
        return self._result()

    def _arrive(self, i: int, now: float) -> None:
        p, o = int(self.w.prompts[i]), int(self.w.outputs[i])
        dist = self.w.source.prediction(i) if self.spec.predicted else self.estimator.predict(MODEL, p)
        req = SchedRequest(str(i), MODEL, p, now, dist, true_output_tokens=o)
        self.sched_reqs[req.request_id] = req
        self.scheduler.submit(req, now)
        self._dispatch(now)

    def _run_pod(self, entry: tuple[float, int], t_next: float) -> None:
        at, k = entry
        engine = self.engines[k]
        if at != self._queued_at[k] or not engine.has_work:
            return  # superseded entry
        self._queued_at[k] = math.nan
        horizon = (t_next - engine.now) if math.isfinite(t_next) else 1e9
        out = engine.advance(horizon, stop_on_finish=True)
        self._absorb(k, out)
        if out.finished and self.scheduler.queue_depth():
            self._dispatch(engine.now)

    def _schedule(self, k: int) -> None:
        engine = self.engines[k]
        if engine.has_work and self._queued_at[k] != engine.now:
            self._queued_at[k] = engine.now
            heapq.heappush(self._heap, (engine.now, k))

    def _absorb(self, k: int, out: StepOutcome) -> None:
        """Report an engine's progress and finishes to the scheduler (and the online estimator)."""
        engine = self.engines[k]
        self._stale_views.add(k)
        self.kv_peak = max(self.kv_peak, engine.kv_usage)
        if self.track_progress:
            on_progress, reqs = self.scheduler.on_progress, self.engine_reqs  # hot: every token-emitting request
            for rid in out.tokens:
                on_progress(rid, reqs[rid].generated)
        for done in out.finished:
            self.scheduler.on_finish(done.request_id, done.finish_time)
            self.finished.append(done)
            if self.learn_online:
                self.estimator.observe(MODEL, done.prompt_tokens, done.generated)
        self._schedule(k)

    # --- dispatch -----------------------------------------------------------------------------------
    def _refresh_views(self) -> None:
        """Rewrite the views of pods whose engine changed (an engine only changes in `_absorb`ed
        advances and in `add_request`, both of which mark it). The scheduler's own bump of
        `num_waiting` at a dispatch is undone here because that pod was marked by its add_request."""
        for k in self._stale_views:
            view, engine = self.views[k], self.engines[k]
            view.kv_usage, view.num_running, view.num_waiting = engine.kv_usage, engine.num_running, engine.num_waiting
        self._stale_views.clear()

    def _dispatch(self, now: float) -> None:
        self._refresh_views()
        for req, view in self.scheduler.dispatch(self.views, now):
            k = self.index[view.name]
            engine = self.engines[k]
            if engine.has_work and engine.now < now:  # bring the pod up to the dispatch instant
                self._absorb(k, engine.advance(now - engine.now))
            ereq = EngineRequest(req.request_id, req.prompt_tokens, req.true_output_tokens or 1,
                                 req.max_tokens, req.engine_priority, now)
            self.engine_reqs[req.request_id] = ereq
            engine.add_request(ereq)
            self._stale_views.add(k)
            self._schedule(k)

    def _result(self) -> SimResult:
        done = sorted(self.finished, key=lambda r: int(r.request_id))
        arrival = np.array([self.sched_reqs[r.request_id].arrival for r in done])
        col = lambda attr: np.array([getattr(r, attr) for r in done], dtype=np.float64)  # noqa: E731
        return SimResult(
            self.spec.label, self.w.load, arrival, col("first_token_time"), col("first_scheduled_time"),
            col("finish_time"), col("generated"), sum(e.counters.preemptions for e in self.engines),
            self.kv_peak, [r.request_id for r in done],
        )


def simulate(workload: Workload, spec: PolicySpec, profile: StepTimeProfile, history: Trace,
             full: Trace, config: SimConfig) -> SimResult:
    return ClusterSim(workload, spec, profile, make_estimator(spec, history, full), config).run()
