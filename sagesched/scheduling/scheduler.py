"""The one scheduler object the live router and the simulator both drive.

Stages: `submit` ranks a request and queues it; `dispatch` releases queued requests to pods that
can take them (policy order, admission gates, policy pod choice) and, for a preemptive policy, decides
which running request a blocked head displaces; `on_progress` refreshes a running request's rank at
bucket boundaries and keeps the in-flight accounting that admission and the pod picker read;
`on_finish` forgets it. The in-flight accounting is one `Ledger` (ledger.py), which pod views read
through their page; the scheduler writes the ledger, never the views it is given. The caller carries
out preemptions (`take_preemptions`): it ends the request on its pod and the scheduler has already
queued it again, to resume from the tokens it generated.
The clock is whatever `now` the caller passes, so the same code runs on wall time and on a
simulator's virtual clock.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from time import perf_counter

from sagesched.engine.profile import StepTimeProfile, load_profile
from sagesched.scheduling.admission import Admission
from sagesched.scheduling.cost import CostModel, CostPolynomial, memory_weight_for
from sagesched.scheduling.fairness import Fairness, FairQueue
from sagesched.scheduling.ledger import InFlight, Ledger, PodLoad
from sagesched.scheduling.outstanding import ladder_span, remaining
from sagesched.scheduling.picker import Eligible, Pick, PickContext, eligible_for
from sagesched.scheduling.plugins import PluginClock
from sagesched.scheduling.policies import Policy, make_policy
from sagesched.scheduling.preemption import (NO_PREEMPTION, UNBOUNDED, Candidates, HomeRate, Preemption,
                                             worth_preempting)
from sagesched.scheduling.priority import engine_priority
from sagesched.scheduling.queue import AgingQueue
from sagesched.scheduling.types import PodView, SchedRequest

# per typical time on a pod: a waiting rank shrinks by e^(-rate * wait / T), T the running mean of how long
# requests stay on their pod once dispatched (queue.py; bench/results/standard, aging sweep)
DEFAULT_AGING_RATE = 0.3
INITIAL_POD_TIME_S = 10.0  # T until requests have finished
POD_TIME_WEIGHT = 0.02  # weight of each finished request in T's running mean
REKEY_DRIFT = 0.25  # re-key the queues when T has moved this much since they were keyed


class Scheduler:
    def __init__(
        self,
        policy: str | Policy,
        admission: Admission | None = None,
        aging_rate: float = DEFAULT_AGING_RATE,
        engine: str = "vllm",
        reference_profile: StepTimeProfile | None = None,
        preemption: Preemption = NO_PREEMPTION,
        cost_model: str = "hybrid",
        fairness: Fairness | None = None,
        pick: Pick | None = None,
    ) -> None:
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.pick = pick or self.policy.default_pick()  # pod choice: filters, weighted scorers, picker
        self.plugin_times = PluginClock()
        self._eligible = Eligible()
        self.admission = admission or Admission()
        self.aging_rate = aging_rate if self.policy.aged else 0.0
        self._pod_time = INITIAL_POD_TIME_S
        self._keyed_pod_time = INITIAL_POD_TIME_S
        self.engine = engine
        self.preemption = self._preemption_for(preemption)
        self.policy.quantum = 1 if self.preemption.enabled else None
        self.cost_kind = self.policy.cost_model or cost_model
        self._cost = CostModel(reference_profile or load_profile())
        self._cost.polynomial(self.cost_kind, 1, 0.5)  # an unknown cost model fails here, not later
        self._memory_weight = 0.5
        self.fairness = fairness  # None: one queue per model in policy order, tenants ignored
        self._queues: dict[str, AgingQueue | FairQueue] = {}
        self.ledger = Ledger()
        self._preempted: list[tuple[SchedRequest, str]] = []
        self._candidates = Candidates()
        self._home = HomeRate()
        self._tick = 0
        self.preemptions = 0

    def _preemption_for(self, requested: Preemption) -> Preemption:
        """Preemption applies to preemptive policies only; the oracle's SRPT has no hysteresis."""
        if not (requested.enabled and self.policy.preemptive):
            return NO_PREEMPTION
        if not self.policy.aged:
            return Preemption(bucket_tokens=requested.bucket_tokens, min_gain=UNBOUNDED.min_gain,
                              max_per_request=UNBOUNDED.max_per_request)
        return requested

    # --- intake ---------------------------------------------------------------------------------
    def submit(self, req: SchedRequest, now: float) -> None:
        """Rank and queue. A queued request attains nothing while it waits, so its rank is fixed
        until it runs again; aging is added by the queue."""
        if self.policy.central_queue:
            self._rerank(req, self._poly(req))
        self._queue(req.model).push(req)

    def _queue(self, model: str) -> AgingQueue | FairQueue:
        queue = self._queues.get(model)
        if queue is None:
            rate = self.aging_per_second if self.policy.central_queue else 0.0
            queue = self._queues[model] = AgingQueue(rate) if self.fairness is None else self.fairness.queue(rate)
        return queue

    def adopt(self, ledger: Ledger) -> None:
        """Take over the ledger of the scheduler this one replaces (a configuration swap): its running
        requests stay in the accounting, with the cost they were dispatched on, and become this
        one's to refresh, preempt and finish."""
        self.ledger = ledger
        for entry in ledger.entries.values():
            self._queue(entry.req.model)
            if self.policy.central_queue:
                self._rerank(entry.req, entry.poly)  # ranks in this policy's terms, for preemption
            entry.quiet = self._quiet_below(entry)
            if entry.req.generated > 0:
                self._offer(entry.req)

    def _poly(self, req: SchedRequest) -> CostPolynomial:
        return self._cost.polynomial(self.cost_kind, req.prompt_tokens, self._memory_weight)

    def _rerank(self, req: SchedRequest, poly: CostPolynomial) -> None:
        req.rank = self.policy.rank(req, poly, req.generated)
        req.rank_bucket = self.policy.bucket(req, req.generated, self.preemption.bucket_tokens)

    def view(self, name: str, models: tuple[str, ...], profile: StepTimeProfile, **reported) -> PodView:
        """A view of pod `name` that reads this scheduler's ledger, as `dispatch` requires; `reported`
        are the pod's reported fields (kv_usage, num_running, num_waiting, healthy, stale)."""
        return PodView(name, models, profile, ledger=self.ledger.pod(name), **reported)

    # --- release --------------------------------------------------------------------------------
    def dispatch(self, pods: Sequence[PodView], now: float) -> list[tuple[SchedRequest, PodView]]:
        """Release every queued request that may go now, in policy order, each to its chosen pod.
        A central-queue policy stops a model's queue at the first request no pod can take (strict
        order: backfilling past it would starve big requests); a preemptive one may instead displace
        a running request for it and send it to that pod (see `take_preemptions`)."""
        self._update_scarcity(pods)
        released: list[tuple[SchedRequest, PodView]] = []
        for queue in self._queues.values():
            while (req := queue.peek()) is not None:
                placed, victim = self._place(req, pods), None
                if placed is None and self.preemption.enabled:
                    placed, victim = self._preempt_for(req, queue, pods, now)
                if placed is None:
                    break
                self._check_view(placed[0])
                queue.pop()
                if victim is not None:
                    self._queues[victim.model].push(victim)
                self._assign(req, queue, now, *placed)
                released.append((req, placed[0]))
        return released

    def _check_view(self, pod: PodView) -> None:
        """Before anything is sent to it (and nothing taken from the queue): a view that reads another
        ledger would miscount its pod silently."""
        if pod.ledger is not self.ledger.pod(pod.name):
            raise ValueError(f"the view of pod {pod.name!r} does not read this scheduler's ledger: "
                             f"build it with ledger=scheduler.ledger.pod(name)")

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
        clock, t0 = self.plugin_times, perf_counter()
        candidates = self._eligible.keep(req, pods)
        clock.add("filter", "eligible", perf_counter() - t0)
        poly = self._poly(req)
        new = self._contribution(req)
        if self.policy.central_queue:
            candidates = self._admit(candidates, new, req)
        if not candidates:
            return None
        ctx = PickContext(self.pick, self._free_kv, self._tick, clock)
        self._tick += 1
        chosen = self.policy.choose(req, candidates, ctx)  # None: a policy's own constraint (a gateway subset) holds it
        return (chosen, poly, self._uncached(req, new, chosen)) if chosen is not None else None

    def _uncached(self, req: SchedRequest, new: PodLoad, pod: PodView) -> PodLoad:
        """The request's load on `pod`: the part of its prompt the pod caches needs no prefill there
        and takes no new KV (the prefill gate and free KV read this until its first token)."""
        return new.uncached(self._cached_shares(req, (pod,)).get(pod.name, 0.0)) if _may_be_cached(req) else new

    def _cached_shares(self, req: SchedRequest, pods: Sequence[PodView]) -> dict[str, float]:
        """Per pod name, the share of the request's prompt it caches: as the pick's prefix scorer
        finds it, and for a preempted request at its home pod, as forecast when it was stopped."""
        shares = self.pick.cached_shares(req, pods) if req.prefix_blocks else {}
        home = req.resume_pod
        if req.resume_cached > 0.0 and any(p.name == home for p in pods):
            shares[home] = max(shares.get(home, 0.0), req.resume_cached)
        return shares

    def _admit(self, pods: list[PodView], new: PodLoad, req: SchedRequest) -> list[PodView]:
        """The pods every admission gate lets take one more request, each gate timed over its pass.
        Gates may ask which pods cache the request's prompt (the prefix scorer, or a preempted
        request's home: without that, a resume went wherever a place opened first, 7 times in 8 on 8
        pods, and computed its whole prompt again where the preemption had counted on the cache)."""
        clock = self.plugin_times
        affine = (lambda refused: self._cached_shares(req, refused)) if _may_be_cached(req) else None
        for gate in self.admission.gates:
            if not pods:
                break
            t0 = perf_counter()
            pods = gate.admit(pods, new, affine)
            clock.add("gate", gate.name, perf_counter() - t0)
        return pods

    def _free_kv(self, pod: PodView) -> float:
        """Free KV share as reported, less the prompts we sent that the engine has not taken in yet
        (reports lag dispatches)."""
        return 1.0 - pod.kv_usage - pod.ledger.load.pending_prompt / pod.profile.kv_capacity_tokens

    def _assign(
        self, req: SchedRequest, queue: AgingQueue, now: float, pod: PodView, poly: CostPolynomial,
        contribution: PodLoad,
    ) -> None:
        req.pod, req.dispatched_at = pod.name, now
        if req.resume_cached > 0.0:
            self._home.observe(pod.name == req.resume_pod)
            req.resume_cached = 0.0
        req.engine_priority = (
            engine_priority(queue.order_key(req), self.engine) if self.policy.central_queue else 0
        )
        entry = InFlight(req, pod.name, poly, contribution, ladder_span(req.generated), req.generated)
        self.ledger.add(entry)
        self._charge(entry, poly.c0)
        self.pick.dispatched(req, pod)
        if req.generated > 0:  # a resumed request may be displaced again at once
            self._offer(req)

    def _charge(self, entry: InFlight, prefill: float = 0.0) -> None:
        """Tenant fairness counts service received: the prefill at dispatch, the output streamed
        since the last charge (in the cost it was dispatched on) whenever progress is looked at."""
        if self.fairness is None:
            return
        req, poly = entry.req, entry.poly
        self._queues[req.model].charge(req.tenant, prefill + float(poly.at(req.generated) - poly.at(entry.charged)))
        entry.charged = req.generated

    def _offer(self, req: SchedRequest) -> None:
        """A running request's order key may have changed: offer it as a preemption candidate."""
        if self.preemption.enabled:
            self._candidates.offer(req, self._queues[req.model].order_key(req))

    # --- preemption -------------------------------------------------------------------------------
    def _preempt_for(
        self, head: SchedRequest, queue: AgingQueue, pods: Sequence[PodView], now: float
    ) -> tuple[tuple[PodView, CostPolynomial, PodLoad] | None, SchedRequest | None]:
        """For a head that fits nowhere: displace the worst running request if it is worse by
        enough, and send the head to the pod it frees (its engine priority puts it ahead of what
        waits there). Returns that placement and the victim (to queue again once the head has left
        the queue), or (None, None)."""
        settings, policy = self.preemption, self.policy
        by_name = {p.name: p for p in pods if eligible_for(head, p)}

        def eligible(r: SchedRequest) -> bool:
            return (r.preemptible and policy.bucket(r, r.generated, settings.bucket_tokens) != r.decided_bucket
                    and policy.may_preempt(r))

        victim = self._candidates.worst(lambda r: r.pod in by_name, eligible, settings)
        if victim is None:
            return None, None
        victim.decided_bucket = policy.bucket(victim, victim.generated, settings.bucket_tokens)
        self._rerank(victim, self.ledger.entries[victim.request_id].poly)
        pod = by_name[victim.pod]
        self._check_view(pod)
        stalled = settings.recompute_weight * max(pod.num_running, len(pod.inflight))
        head_needs = self._contribution(head)  # the head's KV on this pod: also its load once placed
        tokens, lost = victim.prompt_tokens + victim.generated, self._uncached_on_resume(victim, head_needs, pod)
        home, prefill = self._home.rate, lambda n: self._cost.compute(n).c0  # elsewhere it computes all again
        recompute = (home * prefill(lost) + (1.0 - home) * prefill(tokens)) * max(stalled, 1.0)
        if not worth_preempting(head, queue.aged_rank(head, now), victim, queue.aged_rank(victim, now), recompute,
                                settings):
            return None, None
        self._forget(victim.request_id)
        victim.preemptions += 1
        victim.resume_pod, victim.pod, victim.dispatched_at = pod.name, None, None
        victim.resume_cached = 1.0 - lost / max(tokens, 1)
        self._preempted.append((victim, pod.name))
        self.preemptions += 1
        return (pod, self._poly(head), head_needs), victim

    def _uncached_on_resume(self, victim: SchedRequest, head_needs: PodLoad, pod: PodView) -> int:
        """Tokens of the victim a resume on its pod computes again. Engines keep an aborted request's
        blocks in their prefix cache (vLLM's automatic prefix caching) until an allocation needs them,
        most recently freed last. Until the victim resumes, the pod takes in the head and the growth
        of what runs there, and its content turns over about once (a preempted request waits about
        as long as the pod takes to serve what is there): the blocks survive what the free KV holds
        beyond all that. So a pod short of memory keeps nothing (measured in the simulator: crediting
        the cache more freely made heavy-tailed loads preempt into evictions)."""
        tokens = victim.prompt_tokens + victim.generated
        if not self.preemption.prefix_cache:
            return tokens
        load = pod.ledger.load
        capacity = pod.profile.kv_capacity_tokens
        room = (self._free_kv(pod) * capacity - pod.kv_usage * capacity - head_needs.pending_prompt
                - head_needs.growth_mean - load.growth_mean)
        return tokens - int(min(max(room, 0.0), tokens))

    def take_preemptions(self) -> list[tuple[SchedRequest, str]]:
        """(request, pod) pairs to end on their pods now; each is queued again already and resumes
        from `generated` tokens when dispatched (prompt + generated text, on `resume_pod` if it may)."""
        out, self._preempted = self._preempted, []
        return out

    # --- in-flight accounting -----------------------------------------------------------------
    def _contribution(self, req: SchedRequest, prefilled: bool = False) -> PodLoad:
        """Expected remaining KV growth; until its first token of this run, the prompt (with what
        an earlier run generated: a resume recomputes it) waits for prefill."""
        g = req.generated
        rem = remaining(self.policy.distribution_for(req), req.output_cap, g)
        return PodLoad(
            growth_mean=rem.tokens(g),
            growth_var=rem.var_len,
            pending_prompt=0.0 if prefilled else float(req.prompt_tokens + g),
        )

    def on_progress(self, request_id: str, generated: int) -> None:
        """Tokens streamed so far. Cheap unless the count crossed a step of the conditioning
        ladder or a refresh bucket, so callers may report every chunk."""
        self.on_progress_many(((request_id, generated),))

    def on_progress_many(self, reports: Iterable[tuple[str, int]]) -> None:
        """`on_progress` for each (request id, tokens so far) in order: a whole engine report in one
        call. Most reports only move `generated` (below `quiet`); the others go on to `_progress`."""
        inflight = self.ledger.entries
        for request_id, generated in reports:
            entry = inflight.get(request_id)
            if entry is None:
                continue
            if entry.req.generated <= generated < entry.quiet:
                entry.req.generated = generated
            else:
                self._progress(entry, generated)

    def _progress(self, entry: InFlight, generated: int) -> None:
        req = entry.req
        first_token = req.generated <= entry.start < generated
        if entry.unstarted and generated > 0:
            self.ledger.started(entry)
        req.generated = generated
        self._charge(entry)
        lo, hi = entry.span
        if first_token or not lo <= generated < hi:
            self._refresh(entry)
        if self.preemption.enabled and self.policy.bucket(req, generated, self.preemption.bucket_tokens) != req.rank_bucket:
            self._rerank(req, entry.poly)
            self._offer(req)
        elif first_token:
            self._offer(req)
        entry.quiet = self._quiet_below(entry)

    def _quiet_below(self, entry: InFlight) -> int:
        """The count at which a report next has work: the end of the ladder step and of the refresh
        bucket `generated` is in; none before the run's first token."""
        req = entry.req
        if req.generated <= entry.start:
            return 0
        if not self.preemption.enabled:
            return entry.span[1]
        return min(entry.span[1], self.policy.bucket_end(req, req.generated, self.preemption.bucket_tokens))

    def _refresh(self, entry: InFlight) -> None:
        self.ledger.recontribute(entry, self._contribution(entry.req, entry.req.generated > entry.start))
        entry.span = ladder_span(entry.req.generated)

    def _forget(self, request_id: str) -> InFlight | None:
        entry = self.ledger.remove(request_id)
        if entry is None:
            return None
        self._charge(entry)
        self._candidates.withdraw(request_id)
        return entry

    def on_finish(self, request_id: str, now: float) -> SchedRequest | None:
        """The request left its pod (finished or failed); forget it everywhere."""
        entry = self._forget(request_id)
        if entry is None:
            return self._dequeue(request_id)
        if entry.req.dispatched_at is not None and now > entry.req.dispatched_at:
            self._observe_pod_time(now - entry.req.dispatched_at)
        return entry.req

    # --- aging's time scale ---------------------------------------------------------------------
    @property
    def aging_per_second(self) -> float:
        """The rate the queues age at now (per second of waiting)."""
        return self.aging_rate / self._keyed_pod_time

    def _observe_pod_time(self, seconds: float) -> None:
        """Aging counts waits in units of T, the typical time on a pod, so the same setting suits
        a trace whose requests take 2 s and one whose take 40 s. T moves slowly; when it has moved
        enough, every queue is re-keyed (and the preemption candidates re-offered) at the new rate."""
        self._pod_time += POD_TIME_WEIGHT * (seconds - self._pod_time)
        if self.aging_rate <= 0 or abs(self._pod_time / self._keyed_pod_time - 1.0) < REKEY_DRIFT:
            return
        self._keyed_pod_time = self._pod_time
        rate = self.aging_per_second
        for queue in self._queues.values():
            if queue.aging_rate > 0:
                queue.rekey(rate)
        for entry in self.ledger.entries.values():
            if entry.req.generated > 0:
                self._offer(entry.req)

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
        return self.ledger.requests(pod_name)


def _may_be_cached(req: SchedRequest) -> bool:
    """Whether some pod may hold the request's prompt: it has prefix blocks to look up, or it was
    preempted and its home was expected to keep what it had computed."""
    return bool(req.prefix_blocks) or req.resume_cached > 0.0
