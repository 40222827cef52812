"""The refreshed Gittins index and the preemption decisions it drives, on hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest

from sagesched.distribution import LengthDistribution as D
from sagesched.engine.profile import load_profile
from sagesched.scheduling import PodView, SchedRequest, Scheduler
from sagesched.scheduling.admission import Admission
from sagesched.scheduling.cost import CostPolynomial
from sagesched.scheduling.gittins import gittins_rank
from sagesched.scheduling.policies.fastserve import FastServe
from sagesched.scheduling.policies.trail import Trail
from sagesched.scheduling.preemption import HomeRate, Preemption

TOKENS = CostPolynomial(0.0, 1.0, 0.0)  # cost = output tokens: ranks read in tokens
PROFILE = load_profile()
# 90% of the time 10 tokens, else ~10,000 (uniform over its grid bin): the mean is ~981
BIMODAL = D.mixture([D.from_samples(np.array([10])), D.from_samples(np.array([10_000]))], [0.9, 0.1])


def test_the_larger_mean_goes_first_when_it_is_likely_to_finish_soon() -> None:
    """The paper's two-request example: expected size says the sure 500 first; the index does not."""
    assert BIMODAL.mean > 900 > D.point(500).mean  # the 10,000 is uniform over its grid bin
    # the best quantum of the bimodal request stops at 10 tokens: E[min(X, 10)] / P(X <= 10) = 10 / 0.9
    assert gittins_rank(BIMODAL, TOKENS, 20_000) == pytest.approx(10 / 0.9)
    assert gittins_rank(D.point(500), TOKENS, 20_000) == pytest.approx(500)


def test_a_request_that_outlives_its_short_mode_loses_priority() -> None:
    after = gittins_rank(BIMODAL, TOKENS, 20_000, attained=11)
    # only the long mode is left: the 10,000 sits uniformly in its grid bin [lo, hi]; remaining = E[L] - 11
    g = BIMODAL.grid
    lo, hi = g.lo[g.bin_of(10_000)], g.hi[g.bin_of(10_000)]
    assert after == pytest.approx((lo + hi) / 2 - 11, rel=1e-6)
    assert after > gittins_rank(D.point(500), TOKENS, 20_000)


def _full_pod(sched: Scheduler) -> PodView:
    """A pod whose engine queue is full: nothing more may be sent to it without displacing."""
    return sched.view("p0", ("m",), PROFILE.with_overrides(max_num_seqs=1), num_running=1, num_waiting=1)


def _scheduler(**preemption: float) -> Scheduler:
    return Scheduler("sagesched", Admission(engine_buffer=1, prefill_tokens=0), aging_rate=0.0,
                     preemption=Preemption(**{"bucket_tokens": 5, **preemption}))


def _running(sched: Scheduler, rid: str, dist: D, pods: list[PodView]) -> SchedRequest:
    req = SchedRequest(rid, "m", 100, 0.0, dist)
    sched.submit(req, 0.0)
    free = sched.view("p0", ("m",), PROFILE)
    assert [r.request_id for r, _ in sched.dispatch([free], 0.0)] == [rid]
    return req


def test_a_waiting_request_displaces_a_running_one_whose_refreshed_index_is_worse() -> None:
    sched = _scheduler()
    long_runner = _running(sched, "bimodal", BIMODAL, [])
    sched.on_progress("bimodal", 12)  # past the short mode, in a new bucket: its index is refreshed
    short = SchedRequest("short", "m", 100, 1.0, D.point(50))
    sched.submit(short, 1.0)
    released = sched.dispatch([_full_pod(sched)], 1.0)
    assert [(r.request_id, p.name) for r, p in released] == [("short", "p0")]
    assert [(r.request_id, pod) for r, pod in sched.take_preemptions()] == [("bimodal", "p0")]
    # queued again with what it generated, to resume on the pod that caches its prefix
    assert sched.queue_depth() == 1 and long_runner.generated == 12
    assert long_runner.resume_pod == "p0" and long_runner.preemptions == 1 and long_runner.pod is None
    assert [r.request_id for r in sched.inflight()] == ["short"]


def test_no_preemption_while_the_running_request_is_still_in_its_likely_short_mode() -> None:
    sched = _scheduler()
    runner = _running(sched, "bimodal", BIMODAL, [])
    sched.on_progress("bimodal", 3)  # 90% likely to finish within 7 more tokens: better than a sure 50
    sched.submit(SchedRequest("short", "m", 100, 1.0, D.point(50)), 1.0)
    assert sched.dispatch([_full_pod(sched)], 1.0) == []
    assert sched.take_preemptions() == []
    # decided against (bucket 0): nothing marks it as a resume, so a later dispatch of it (failover)
    # is not counted as a resume that missed its home
    assert runner.decided_bucket == 0 and runner.resume_cached == 0.0


def test_one_decision_per_bucket_and_the_cap_hold() -> None:
    sched = _scheduler(max_per_request=1, min_gain=0.0)
    victim = _running(sched, "bimodal", BIMODAL, [])
    sched.on_progress("bimodal", 3)
    sched.submit(SchedRequest("s1", "m", 100, 1.0, D.point(50)), 1.0)
    assert sched.dispatch([_full_pod(sched)], 1.0) == []  # not worth it: decided for bucket 0
    sched.on_progress("bimodal", 4)  # same bucket [0, 5): not looked at again, whatever changed
    assert sched.dispatch([_full_pod(sched)], 1.1) == [] and victim.decided_bucket == 0
    sched.on_progress("bimodal", 12)  # next bucket: decided again, now displaced
    assert [r.request_id for r, _ in sched.dispatch([_full_pod(sched)], 1.2)] == ["s1"]
    assert [r.request_id for r, _ in sched.take_preemptions()] == ["bimodal"] and victim.preemptions == 1
    # it resumes, outlives everything again, but the cap of one preemption keeps it running
    sched.on_finish("s1", 1.3)
    assert [r.request_id for r, _ in sched.dispatch([sched.view("p0", ("m",), PROFILE)], 1.3)] == ["bimodal"]
    sched.on_progress("bimodal", 40)
    sched.submit(SchedRequest("s2", "m", 100, 2.0, D.point(50)), 2.0)
    assert sched.dispatch([_full_pod(sched)], 2.0) == [] and sched.take_preemptions() == []


def test_a_more_urgent_client_priority_is_never_displaced() -> None:
    sched = _scheduler(min_gain=0.0)
    vip = SchedRequest("vip", "m", 100, 0.0, BIMODAL, priority=-1)
    sched.submit(vip, 0.0)
    sched.dispatch([sched.view("p0", ("m",), PROFILE)], 0.0)
    sched.on_progress("vip", 12)
    sched.submit(SchedRequest("short", "m", 100, 1.0, D.point(50)), 1.0)
    assert sched.dispatch([_full_pod(sched)], 1.0) == [] and sched.take_preemptions() == []


def test_without_a_preemptive_policy_nothing_is_preempted() -> None:
    sched = Scheduler("sjf-mean", Admission(engine_buffer=1, prefill_tokens=0), aging_rate=0.0,
                      preemption=Preemption(bucket_tokens=5, min_gain=0.0))
    _running(sched, "bimodal", BIMODAL, [])
    sched.on_progress("bimodal", 12)
    sched.submit(SchedRequest("short", "m", 100, 1.0, D.point(50)), 1.0)
    assert sched.dispatch([_full_pod(sched)], 1.0) == [] and sched.take_preemptions() == []


def test_fastserve_levels_follow_the_doubling_quanta_with_skip_join() -> None:
    fs = FastServe(base_quantum=16, prefill_tokens_per_step=256)
    short_prompt = SchedRequest("a", "m", 100, 0.0, BIMODAL)
    assert fs.entry_level(short_prompt) == 0
    # quanta 16, 32, 64: demoted after 16, 48 and 112 tokens
    assert [fs.level(0, a) for a in (0, 15, 16, 47, 48, 111, 112)] == [0, 0, 1, 1, 2, 2, 3]
    # a 16,384-token prompt is 64 prefill iterations: it joins the first level whose quantum covers 64
    assert fs.entry_level(SchedRequest("b", "m", 16_384, 0.0, BIMODAL)) == 2


def test_trail_preempts_only_early_in_a_request_s_predicted_life() -> None:
    trail = Trail(early_fraction=0.5)
    req = SchedRequest("a", "m", 100, 0.0, D.point(400))
    req.generated = 199
    assert trail.may_preempt(req)
    req.generated = 200
    assert not trail.may_preempt(req)


def test_candidates_give_the_worst_live_eligible_request_and_drop_stale_entries() -> None:
    from sagesched.scheduling.preemption import Candidates

    reqs = {name: SchedRequest(name, "m", 10, 0.0, D.point(10), generated=5, pod=pod)
            for name, pod in (("a", "p0"), ("b", "p0"), ("c", "p1"))}
    cands, settings = Candidates(), Preemption(max_per_request=1)
    for name, key in (("a", 1.0), ("b", 3.0), ("c", 5.0)):
        cands.offer(reqs[name], key)
    anywhere, always = (lambda r: True), (lambda r: True)
    assert cands.worst(anywhere, always, settings) is reqs["c"]
    # a head that only p0 can serve: c is passed over but kept for later heads
    assert cands.worst(lambda r: r.pod == "p0", always, settings) is reqs["b"]
    assert cands.worst(anywhere, always, settings) is reqs["c"]
    cands.withdraw("c")  # it left its pod
    cands.offer(reqs["a"], 4.0)  # a's refreshed key: the older entry (1.0) is stale
    assert cands.worst(anywhere, always, settings) is reqs["a"]
    reqs["a"].preemptions = 1  # capped: dropped for good
    assert cands.worst(anywhere, always, settings) is reqs["b"]
    assert cands.worst(anywhere, lambda r: r is not reqs["b"], settings) is None  # b decided on this bucket
    assert cands.worst(anywhere, always, settings) is None  # ... and not offered again until re-ranked


def test_candidates_stay_bounded_when_no_victim_is_ever_asked_for() -> None:
    from sagesched.scheduling.preemption import SWEEP_SLACK, Candidates

    cands = Candidates()
    running = [SchedRequest(f"r{i}", "m", 10, 0.0, D.point(10), generated=1, pod="p0") for i in range(10)]
    for bucket in range(1000):  # every request re-offered at each of its buckets, nobody preempts
        for req in running:
            cands.offer(req, float(bucket))
    assert len(cands) <= 2 * len(running) + SWEEP_SLACK + 1
    assert cands.worst(lambda r: True, lambda r: True, Preemption()) in running


# 90% likely done in 10 tokens, else 300: worth stopping after 12 for a sure 50, but by less than
# computing its 4,000-token prompt again costs
SHORT_OR_300 = D.mixture([D.from_samples(np.array([10])), D.from_samples(np.array([300]))], [0.9, 0.1])


def _stop_and_resume(sched: Scheduler, i: int) -> tuple[bool, str | None]:
    """One round on p0 (a sure 50 arrives while a 4,000-token prompt has streamed 12 tokens, p0's
    engine queue full) and, if the long one was stopped, where it resumes while p1 is free."""
    rid = f"long{i}"
    sched.submit(SchedRequest(rid, "m", 4000, float(i), SHORT_OR_300), float(i))
    assert [r.request_id for r, _ in sched.dispatch([sched.view("p0", ("m",), PROFILE)], float(i))] == [rid]
    sched.on_progress(rid, 12)
    sched.submit(SchedRequest(f"short{i}", "m", 100, float(i), D.point(50)), float(i))
    sched.dispatch([_full_pod(sched)], float(i))
    stopped = [r.request_id for r, _ in sched.take_preemptions()] == [rid]
    resumed = sched.dispatch([_full_pod(sched), sched.view("p1", ("m",), PROFILE)], float(i)) if stopped else []
    for req in [*sched.inflight(), *(r for r, _ in resumed)]:
        sched.on_finish(req.request_id, float(i))
    sched.cancel(f"short{i}")
    return stopped, resumed[0][1].name if resumed else None


@pytest.mark.parametrize("affinity_buffer, rounds", [
    (1, [(True, "p0")] * 24),  # home may queue one more for a request it caches: every resume goes home
    # home full: each resume computes its prompt again on p1, and once that is the rule the stop stops
    (0, [(True, "p1")] * 14 + [(False, None)] * 10),
])
def test_a_stop_counts_on_the_prefix_cache_only_as_often_as_resumes_went_home(affinity_buffer, rounds) -> None:
    """A resume finds what it computed only on its home pod. When resumes keep landing elsewhere, a
    stop whose gain only a cached resume covers is no longer made (after HOME_PRIOR resumes' worth
    of evidence: a few early ones elsewhere are not the rule)."""
    sched = Scheduler("sagesched", Admission(engine_buffer=1, prefill_tokens=0, affinity_buffer=affinity_buffer),
                      aging_rate=0.0, preemption=Preemption(bucket_tokens=5, min_gain=0.0))
    assert [_stop_and_resume(sched, i) for i in range(24)] == rounds


def test_the_home_rate_follows_recent_resumes() -> None:
    rate = HomeRate()
    assert rate.rate == 1.0  # nothing seen: as if every resume went home
    for _ in range(1000):
        rate.observe(True)
    for _ in range(300):
        rate.observe(False)
    assert rate.rate < 0.5  # counted since the start it would still be 0.77
