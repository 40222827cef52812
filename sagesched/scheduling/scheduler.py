"""The one scheduler object the live router and the simulator both drive.

Stages: `submit` ranks a request and queues it; `dispatch` releases queued requests to pods that
can take them (policy order, admission gates, policy pod choice); `on_progress` / `on_finish` keep
the in-flight accounting that admission and the pod picker read. The clock is whatever `now` the
caller passes, so the same code runs on wall time and on a simulator's virtual clock.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sagesched.engine.profile import StepTimeProfile, load_profile
from sagesched.scheduling.admission import Admission, PodLoad
from sagesched.scheduling.cost import CostModel, CostPolynomial, memory_weight_for
from sagesched.scheduling.outstanding import ladder_span, remaining
from sagesched.scheduling.picker import eligible_for
from sagesched.scheduling.policies import PickContext, Policy, make_policy
from sagesched.scheduling.priority import engine_priority
from sagesched.scheduling.queue import AgingQueue
from sagesched.scheduling.types import PodView, SchedRequest

_NO_LOAD = PodLoad()  # read-only stand-in for a pod we have sent nothing yet (lookups create nothing)
DEFAULT_AGING_RATE = 0.012  # pod-seconds of rank forgiven per second waited: bench/results/sim/README.md (aging sweep)


@dataclass
class _InFlight:
    req: SchedRequest
    pod: str
    poly: CostPolynomial  # frozen at dispatch so contributions subtract exactly
    contribution: PodLoad
    span: tuple[int, int]  # attained counts sharing the ladder step `contribution` was computed at


class Scheduler:
    def __init__(
        self,
        policy: str | Policy,
        admission: Admission | None = None,
        aging_rate: float = DEFAULT_AGING_RATE,
        engine: str = "vllm",
        reference_profile: StepTimeProfile | None = None,
    ) -> None:
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.admission = admission or Admission()
        self.aging_rate = aging_rate
        self.engine = engine
        self._cost = CostModel(reference_profile or load_profile())
        self._memory_weight = 0.5
        self._queues: dict[str, AgingQueue] = {}
        self._inflight: dict[str, _InFlight] = {}
        self._by_pod: dict[str, dict[str, SchedRequest]] = {}
        self._load: dict[str, PodLoad] = {}
        self._tick = 0

    # --- intake ---------------------------------------------------------------------------------
    def submit(self, req: SchedRequest, now: float) -> None:
        """Rank and queue. Ranks are frozen here: a queued request has attained nothing, so its
        index cannot change while it waits; aging is added by the queue."""
        if self.policy.central_queue:
            req.rank = self.policy.rank(req, self._poly(req))
        queue = self._queues.get(req.model)
        if queue is None:
            queue = self._queues[req.model] = AgingQueue(self.aging_rate if self.policy.central_queue else 0.0)
        queue.push(req)

    def _poly(self, req: SchedRequest) -> CostPolynomial:
        return self._cost.hybrid(req.prompt_tokens, self._memory_weight)

    # --- release --------------------------------------------------------------------------------
    def dispatch(self, pods: Sequence[PodView], now: float) -> list[tuple[SchedRequest, PodView]]:
        """Release every queued request that may go now, in policy order, each to its chosen pod.
        A central-queue policy stops a model's queue at the first request no pod can take (strict
        order: backfilling past it would starve big requests)."""
        by_pod = self._by_pod
        for pod in pods:
            mine = by_pod.get(pod.name)
            pod.inflight = list(mine.values()) if mine else []
        self._update_scarcity(pods)
        released: list[tuple[SchedRequest, PodView]] = []
        for queue in self._queues.values():
            while (req := queue.peek()) is not None:
                placed = self._place(req, pods)
                if placed is None:
                    break
                queue.pop()
                self._assign(req, queue, now, *placed)
                released.append((req, placed[0]))
        return released

    def _update_scarcity(self, pods: Sequence[PodView]) -> None:
        live = [p for p in pods if p.eligible]
        if live:  # lists, not generators: the same sums in the same order, at every dispatch
            kv = sum([p.kv_usage for p in live]) / len(live)
            fill = sum([p.num_running / p.profile.max_num_seqs for p in live]) / len(live)
            self._memory_weight = memory_weight_for(kv, fill)

    def _place(
        self, req: SchedRequest, pods: Sequence[PodView]
    ) -> tuple[PodView, CostPolynomial, PodLoad] | None:
        """The chosen pod, with the cost polynomial and load contribution the choice was made on
        (handed on to `_assign`, so they are computed once)."""
        candidates = [p for p in pods if eligible_for(req, p)]
        poly = self._poly(req)
        new = self._contribution(req, poly)
        if self.policy.central_queue:
            admission, loads = self.admission, self._load  # bound once: this runs for every pod
            candidates = [
                p for p in candidates
                if admission.has_room(p) and admission.fits(p, loads.get(p.name, _NO_LOAD), new)
            ]
        if not candidates:
            return None
        ctx = PickContext(work=self._work, cost_on=lambda _p: new.work, tick=self._tick)
        self._tick += 1
        return self.policy.choose(req, candidates, ctx), poly, new

    def _work(self, pod: PodView) -> float:
        """Expected outstanding pod-seconds: ours, plus requests the engine reports that we did
        not send (other router replicas), each counted at our average."""
        load = self._load.get(pod.name, _NO_LOAD)
        ours = len(pod.inflight)
        others = max(pod.num_running + pod.num_waiting - ours, 0)
        return load.work + (others * load.work / ours if ours else 0.0)

    def _assign(
        self, req: SchedRequest, queue: AgingQueue, now: float, pod: PodView, poly: CostPolynomial,
        contribution: PodLoad,
    ) -> None:
        req.pod, req.dispatched_at = pod.name, now
        req.engine_priority = (
            engine_priority(queue.key_at(req, now), self.engine) if self.policy.central_queue else 0
        )
        entry = _InFlight(req, pod.name, poly, contribution, ladder_span(req.generated))
        self._inflight[req.request_id] = entry
        self._by_pod.setdefault(pod.name, {})[req.request_id] = req
        self._load_of(pod.name).add(entry.contribution)
        pod.inflight.append(req)
        pod.num_waiting += 1  # our own accounting until the next metrics report arrives

    # --- in-flight accounting -----------------------------------------------------------------
    def _load_of(self, pod_name: str) -> PodLoad:
        load = self._load.get(pod_name)
        if load is None:
            load = self._load[pod_name] = PodLoad()
        return load

    def _contribution(self, req: SchedRequest, poly: CostPolynomial) -> PodLoad:
        g = req.generated
        rem = remaining(self.policy.distribution_for(req), poly, req.output_cap, g)
        return PodLoad(
            growth_mean=rem.tokens(g),
            growth_var=rem.var_len,
            pending_prompt=float(req.prompt_tokens) if g <= 0 else 0.0,
            work=rem.cost(poly, g),
        )

    def on_progress(self, request_id: str, generated: int) -> None:
        """Tokens streamed so far. Cheap unless the count crossed a step of the conditioning
        ladder, so callers may report every chunk."""
        entry = self._inflight.get(request_id)
        if entry is None:
            return
        first_token = entry.req.generated <= 0 < generated
        entry.req.generated = generated
        lo, hi = entry.span
        if first_token or not lo <= generated < hi:
            self._refresh(entry)

    def _refresh(self, entry: _InFlight) -> None:
        load = self._load_of(entry.pod)
        load.add(entry.contribution, -1.0)
        entry.contribution = self._contribution(entry.req, entry.poly)
        entry.span = ladder_span(entry.req.generated)
        load.add(entry.contribution)

    def on_finish(self, request_id: str, now: float) -> SchedRequest | None:
        """The request left its pod (finished or failed); forget it everywhere."""
        entry = self._inflight.pop(request_id, None)
        if entry is None:
            return self._dequeue(request_id)
        self._load_of(entry.pod).add(entry.contribution, -1.0)
        self._by_pod[entry.pod].pop(request_id, None)
        if not self._by_pod[entry.pod]:
            self._load[entry.pod] = PodLoad()  # resync: no float drift survives an idle pod
        return entry.req

    def cancel(self, request_id: str) -> SchedRequest | None:
        """Client went away: drop from the queue or from in-flight accounting."""
        return self.on_finish(request_id, 0.0)

    def _dequeue(self, request_id: str) -> SchedRequest | None:
        for queue in self._queues.values():
            if (req := queue.remove(request_id)) is not None:
                return req
        return None

    # --- introspection (metrics) --------------------------------------------------------------
    def queue_depth(self, model: str | None = None) -> int:
        return sum(len(q) for m, q in self._queues.items() if model in (None, m))

    def oldest_wait(self, now: float, model: str | None = None) -> float:
        arrivals = [r.arrival for m, q in self._queues.items() if model in (None, m) for r in q]
        return max(0.0, now - min(arrivals)) if arrivals else 0.0

    def inflight(self, pod_name: str | None = None) -> list[SchedRequest]:
        if pod_name is None:
            return [e.req for e in self._inflight.values()]
        return list(self._by_pod.get(pod_name, {}).values())
