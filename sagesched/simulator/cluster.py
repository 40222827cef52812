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
from sagesched.distribution import LengthDistribution
from sagesched.scheduling import Admission, HistoryEstimator, SchedRequest, Scheduler, make_policy
from sagesched.scheduling.admission import DEFAULT_QUANTILE
from sagesched.scheduling.preemption import NO_PREEMPTION, Preemption
from sagesched.scheduling.scheduler import DEFAULT_AGING_RATE
from sagesched.simulator.workload import Workload
from sagesched.traces import Trace

MODEL = "m"
NOISE_SHARE = 0.2  # the paper's noise ablation: prediction mixed 4:1 with a uniform distribution over lengths
# every policy runs on identically configured engines: vLLM with `--scheduling-policy priority`
# (policies without a central queue send priority 0, which is FCFS order) and prefix caching on
ENGINE_SCHEDULING = "priority"


@dataclass(frozen=True)
class PolicySpec:
    """`name[:true|:pred][:memgate][:nopreempt][:noise][:cost=KIND][:prefix=W]` — a registered policy,
    optionally with the true conditional length distribution (`true`) or the predictor's exported
    distributions (`pred`, for traces that carry them) instead of the history estimator, with the
    quantile memory admission gate (`memgate`; off by default: reserving KV for pessimistic lengths
    starves the GPU, measured in bench/results/standard), without preemption (`nopreempt`: nothing
    can stop a request, so the Gittins index offers only completion and is the expected cost), with its
    predictions mixed 4:1 with a uniform distribution over lengths (`noise`), or with
    another cost model (`cost=paper|output|vtc|hybrid`), or with prefix-cache affinity at weight W
    (`prefix=W`, the policy's `prefix_weight`; 0 turns it off)."""

    policy: str
    true_distribution: bool = False
    memory_admission: bool = False
    predicted: bool = False
    preempt: bool = True
    noise: bool = False
    cost_model: str = "hybrid"
    prefix_weight: float | None = None  # None: the policy's default

    @classmethod
    def parse(cls, text: str) -> "PolicySpec":
        name, *flags = text.split(":")
        costs = [f.split("=", 1)[1] for f in flags if f.startswith("cost=")]
        prefix = [float(f.split("=", 1)[1]) for f in flags if f.startswith("prefix=")]
        unknown = ({f for f in flags if not f.startswith(("cost=", "prefix="))}
                   - {"true", "memgate", "pred", "nopreempt", "noise"})
        if unknown or len(costs) > 1 or len(prefix) > 1:
            raise ValueError(f"unknown policy flags {sorted(unknown)} in {text!r}")
        return cls(name, "true" in flags, "memgate" in flags, "pred" in flags, "nopreempt" not in flags,
                   "noise" in flags, costs[0] if costs else "hybrid", prefix[0] if prefix else None)

    @property
    def label(self) -> str:
        source = ":true" if self.true_distribution else ":pred" if self.predicted else ""
        flags = [("memgate", self.memory_admission), ("nopreempt", not self.preempt), ("noise", self.noise),
                 (f"cost={self.cost_model}", self.cost_model != "hybrid"),
                 (f"prefix={self.prefix_weight}", self.prefix_weight is not None)]
        return self.policy + source + "".join(f":{f}" for f, on in flags if on)


@dataclass(frozen=True)
class SimConfig:
    pods: int = 8
    seed: int = 0
    aging_rate: float = DEFAULT_AGING_RATE
    admission_quantile: float = DEFAULT_QUANTILE
    engine_buffer: int = 4
    prefill_tokens: int | None = None
    preemption: Preemption = Preemption()


@dataclass
class SimResult:
    label: str
    load: float
    arrival: np.ndarray
    first_token: np.ndarray
    first_scheduled: np.ndarray
    finish: np.ndarray
    output: np.ndarray
    preemptions: int  # the engines' own (recompute when KV runs out)
    kv_peak: float  # highest KV usage any pod reported (fraction)
    finished_ids: list[str] = field(default_factory=list)
    router_preemptions: int = 0  # the scheduler's decisions (request ended, resumed later)
    recomputed_tokens: int = 0  # prompt and generated tokens computed again after either kind
    prefix_cache_hit_tokens: int = 0
    prefix_cache_queried_tokens: int = 0  # prompt tokens looked up in the engines' prefix caches


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
        policy = spec.policy if spec.prefix_weight is None else make_policy(spec.policy, prefix_weight=spec.prefix_weight)
        self.scheduler = Scheduler(
            policy,
            admission=Admission(spec.memory_admission, config.admission_quantile, config.engine_buffer,
                                config.prefill_tokens),
            aging_rate=config.aging_rate, engine="sim", reference_profile=profile,
            preemption=config.preemption if spec.preempt else NO_PREEMPTION, cost_model=spec.cost_model,
        )
        central = self.scheduler.policy.central_queue
        self.engines = [Engine(profile, ENGINE_SCHEDULING, seed=config.seed + k) for k in range(config.pods)]
        self.views = [self.scheduler.view(f"pod-{k}", (MODEL,), profile) for k in range(config.pods)]
        self.index = {v.name: k for k, v in enumerate(self.views)}
        self.estimator = estimator
        self.learn_online = not spec.true_distribution
        self.track_progress = central
        self.sched_reqs: dict[str, SchedRequest] = {}
        self.engine_reqs: dict[str, EngineRequest] = {}
        self.finished: list[EngineRequest] = []
        # resumed requests: tokens generated by earlier runs, and (first scheduled, first token) times
        self.offsets: dict[str, int] = {}
        self.first_times: dict[str, tuple[float, float]] = {}
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
        if self.spec.noise:
            dist = LengthDistribution.mixture([dist, LengthDistribution.flat(dist.grid)], [1 - NOISE_SHARE, NOISE_SHARE])
        req = SchedRequest(str(i), MODEL, p, now, dist, true_output_tokens=o, prefix_blocks=self.w.prefix_blocks(i))
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
            reports = engine.progress(out, self.engine_reqs)
            offsets = self.offsets
            if offsets and not offsets.keys().isdisjoint(out.tokens.keys()):  # resumed: add what earlier runs made
                reports = [(rid, g + offsets.get(rid, 0)) for rid, g in reports]
            self.scheduler.on_progress_many(reports)
        for done in out.finished:
            self.scheduler.on_finish(done.request_id, done.finish_time)
            self.finished.append(done)
            if self.learn_online:
                rid = done.request_id
                self.estimator.observe(MODEL, self.sched_reqs[rid].prompt_tokens, done.generated + self.offsets.get(rid, 0))
        self._schedule(k)

    # --- dispatch -----------------------------------------------------------------------------------
    def _refresh_views(self) -> None:
        """Rewrite the views of pods whose engine changed (an engine only changes in `_absorb`ed
        advances and in `add_request`, both of which mark it)."""
        for k in self._stale_views:
            view, engine = self.views[k], self.engines[k]
            view.kv_usage, view.num_running, view.num_waiting = engine.kv_usage, engine.num_running, engine.num_waiting
            view.sent_mark = view.ledger.sent
        self._stale_views.clear()

    def _catch_up(self, k: int, now: float) -> Engine:
        """Bring pod k up to `now` (the instant of a scheduler decision about it)."""
        engine = self.engines[k]
        if engine.has_work and engine.now < now:
            self._absorb(k, engine.advance(now - engine.now))
        return engine

    def _dispatch(self, now: float) -> None:
        self._refresh_views()
        released = self.scheduler.dispatch(self.views, now)
        for req, pod in self.scheduler.take_preemptions():
            self._preempt(req, pod, now)
        for req, view in released:
            k = self.index[view.name]
            engine = self._catch_up(k, now)
            rid, done = req.request_id, self.offsets.get(req.request_id, 0)
            previous = self.engine_reqs.get(rid)
            ereq = EngineRequest(rid, req.prompt_tokens + done, (req.true_output_tokens or 1) - done,
                                 None if req.max_tokens is None else req.max_tokens - done,
                                 req.engine_priority, now, cache_key=self.w.cache_key(int(rid)),
                                 previously_computed=previous.num_computed_tokens if done else 0)
            self.engine_reqs[rid] = ereq
            engine.add_request(ereq)
            self._stale_views.add(k)
            self._schedule(k)

    def _preempt(self, req: SchedRequest, pod: str, now: float) -> None:
        """End `req`'s run on `pod` as vLLM ends an aborted request: its blocks stay in the prefix
        cache until evicted. What it generated is kept; it resumes as a continuation."""
        k = self.index[pod]
        engine = self._catch_up(k, now)
        ereq = engine.abort(req.request_id)
        if ereq is None:  # it finished while the pod caught up: nothing to resume
            return
        rid = req.request_id
        if rid not in self.first_times:
            self.first_times[rid] = (ereq.first_scheduled_time, ereq.first_token_time)
        self.offsets[rid] = req.generated = self.offsets.get(rid, 0) + ereq.generated
        self._stale_views.add(k)
        self._schedule(k)

    def _result(self) -> SimResult:
        done = sorted(self.finished, key=lambda r: int(r.request_id))
        arrival = np.array([self.sched_reqs[r.request_id].arrival for r in done])
        first = [self.first_times.get(r.request_id, (r.first_scheduled_time, r.first_token_time)) for r in done]
        col = lambda values: np.array(values, dtype=np.float64)  # noqa: E731
        return SimResult(
            self.spec.label, self.w.load, arrival, col([f[1] for f in first]), col([f[0] for f in first]),
            col([r.finish_time for r in done]), col([r.generated + self.offsets.get(r.request_id, 0) for r in done]),
            sum(e.counters.preemptions for e in self.engines), self.kv_peak, [r.request_id for r in done],
            self.scheduler.preemptions, sum(e.counters.recomputed_tokens for e in self.engines),
            sum(e.kv.hit_tokens for e in self.engines), sum(e.kv.queried_tokens for e in self.engines),
        )


def simulate(workload: Workload, spec: PolicySpec, profile: StepTimeProfile, history: Trace,
             full: Trace, config: SimConfig) -> SimResult:
    return ClusterSim(workload, spec, profile, make_estimator(spec, history, full), config).run()
