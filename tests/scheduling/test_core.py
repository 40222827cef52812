"""The scheduling core's maths and ordering, on hand-made cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sagesched.distribution import LengthDistribution as D
from sagesched.engine.profile import load_profile
from sagesched.scheduling import HistoryEstimator, PodView, SchedRequest, Scheduler, engine_priority
from sagesched.scheduling.admission import Admission
from sagesched.scheduling.cost import CostModel, CostPolynomial, expected_cost
from sagesched.scheduling.gittins import gittins_rank
from sagesched.scheduling.queue import AgingQueue
from sagesched.scheduling.scheduler import INITIAL_POD_TIME_S, REKEY_DRIFT

PROFILE = load_profile()
POLY = CostModel(PROFILE).compute(500)


def test_expected_cost_of_a_two_point_distribution_is_exact() -> None:
    poly = CostPolynomial(1.0, 2.0, 3.0)  # cost(x) = 1 + 2x + 3x^2
    dist = D.mixture([D.point(10), D.point(20)], [0.5, 0.5])
    # mixture drops floors, so each half is uniform over its grid bin. On the shared grid the bins
    # are one token wide up to 19; 10 sits in [10, 10] and 20 in [19, 21]:
    g = dist.grid
    assert (g.lo[g.bin_of(10)], g.hi[g.bin_of(10)]) == (10, 10)
    assert (g.lo[g.bin_of(20)], g.hi[g.bin_of(20)]) == (19, 21)
    #   bin [10, 10]: 1 + 2*10 + 3*100                          = 321
    #   bin [19, 21]: 1 + 2*20 + 3*(361 + 400 + 441)/3 = 41 + 1202 = 1243
    #   expected: 0.5*321 + 0.5*1243 = 160.5 + 621.5            = 782
    assert expected_cost(poly, dist, 10_000) == pytest.approx(782.0)
    assert expected_cost(poly, D.point(10), 10_000) == pytest.approx(1 + 20 + 300)
    # a cap below the upper bin: 19, 20 and 21 all become 19 -> 0.5*321 + 0.5*(1 + 38 + 1083) = 721.5
    assert expected_cost(poly, dist, 19) == pytest.approx(721.5)


def test_max_tokens_caps_the_cost() -> None:
    long = D.point(5000)
    assert expected_cost(POLY, long, 100) == pytest.approx(POLY.at(100))


def test_conditioning_removes_finished_lengths() -> None:
    dist = D.from_samples(np.array([10] * 9 + [2000]))
    after = dist.given_at_least(21)
    assert after.cdf(20) == 0.0
    assert after.mean > 1000


def test_point_distribution_rank_is_its_cost_so_order_is_sjf() -> None:
    ranks = [gittins_rank(D.point(n), POLY, 10_000) for n in (1000, 10, 100)]
    assert ranks == pytest.approx([POLY.at(1000), POLY.at(10), POLY.at(100)])
    assert np.argsort(ranks).tolist() == [1, 2, 0]


def test_sure_short_beats_sure_long() -> None:
    assert gittins_rank(D.point(20), POLY, 10_000) < gittins_rank(D.point(800), POLY, 10_000)


def test_risky_mixture_ranks_between_its_parts_and_ahead_of_its_mean() -> None:
    risky = D.mixture([D.from_samples(np.array([10])), D.from_samples(np.array([2000]))], [0.9, 0.1])
    rank = gittins_rank(risky, POLY, 10_000)
    assert gittins_rank(D.point(10), POLY, 10_000) < rank < gittins_rank(D.point(2000), POLY, 10_000)
    # mean ~200 tokens, yet 90% finish within ~10: the index serves it before a sure 200
    assert rank < gittins_rank(D.point(200), POLY, 10_000)


def test_attained_service_that_passed_the_short_mode_demotes_the_request() -> None:
    risky = D.mixture([D.from_samples(np.array([10])), D.from_samples(np.array([2000]))], [0.9, 0.1])
    assert gittins_rank(risky, POLY, 10_000, attained=50) > 5 * gittins_rank(risky, POLY, 10_000)


def _req(rid: str, length: int, arrival: float) -> SchedRequest:
    return SchedRequest(rid, "m", 500, arrival, D.point(length), true_output_tokens=length)


def _pod(sched: Scheduler) -> PodView:
    return sched.view("p0", ("m",), PROFILE.with_overrides(max_num_seqs=1))


def _drain(sched: Scheduler, now: float) -> list[str]:
    order = []
    while sched.queue_depth():
        (req, _), = sched.dispatch([_pod(sched)], now)
        order.append(req.request_id)
        sched.on_finish(req.request_id, now)
    return order


def test_sagesched_serves_shortest_first_without_aging() -> None:
    sched = Scheduler("sagesched", aging_rate=0.0)
    for i, n in enumerate((800, 20, 200)):
        sched.submit(_req(f"r{n}", n, float(i)), float(i))
    assert sched.dispatch([], 3.0) == []  # no pod: nothing released, nothing dropped
    assert sched.queue_depth() == 3
    # one request at a time (at most one waiting at the engine): strict policy order
    sched.admission = type(sched.admission)(memory_aware=False, engine_buffer=1)
    assert _drain(sched, 3.0) == ["r20", "r200", "r800"]


def _aged_order(short_arrives_at_share: float) -> list[str]:
    """Serve order of a long job queued at 0 and a short one arriving at that share of the instant
    where aging makes their ranks equal: ln(rank_long / rank_short) / rate."""
    sched = Scheduler("sagesched", aging_rate=0.01)
    sched.admission = type(sched.admission)(memory_aware=False, engine_buffer=1)
    long, short = _req("long", 2000, 0.0), _req("short", 10, 0.0)
    sched.submit(long, 0.0)
    probe = Scheduler("sagesched")
    probe.submit(short, 0.0)
    crossing = math.log(long.rank / short.rank) / sched.aging_per_second
    late = _req("short", 10, short_arrives_at_share * crossing)
    sched.submit(late, late.arrival)
    return _drain(sched, late.arrival)


def test_aging_serves_a_long_job_first_once_it_waited_the_log_of_its_cost_ratio_over_the_rate() -> None:
    assert _aged_order(0.9) == ["short", "long"]
    assert _aged_order(1.1) == ["long", "short"]


def test_aging_counts_waits_in_units_of_the_typical_time_on_a_pod() -> None:
    sched = Scheduler("sjf-mean", Admission(engine_buffer=1, prefill_tokens=0), aging_rate=0.3)
    assert sched.aging_per_second == pytest.approx(0.3 / INITIAL_POD_TIME_S)  # nothing finished yet
    now = 0.0
    for i in range(300):  # every request stays 2 s on its pod
        sched.submit(_req(f"r{i}", 10, now), now)
        (req, _), = sched.dispatch([_pod(sched)], now)
        sched.on_finish(req.request_id, now + 2.0)
        now += 2.0
    # T has converged on 2 s; the queues follow it within the re-key tolerance
    assert sched.aging_per_second == pytest.approx(0.3 / 2.0, rel=REKEY_DRIFT)
    assert sched.aging_per_second > 0.3 / INITIAL_POD_TIME_S * 3


def test_aging_is_multiplicative_so_it_keeps_the_order_of_requests_that_waited_alike() -> None:
    queue = AgingQueue(0.01)
    big, small = _req("big", 10, 0.0), _req("small", 10, 0.0)
    big.rank, small.rank = 8.0, 0.08
    assert queue.aged_rank(big, math.log(2) / 0.01) == pytest.approx(4.0)  # halves every ln 2 / rate
    # any wait shrinks both by the same factor, whatever their scale: the cheaper stays ahead
    assert queue.aged_rank(small, 500.0) / queue.aged_rank(big, 500.0) == pytest.approx(0.01)
    assert queue.order_key(small) < queue.order_key(big)


def test_fcfs_keeps_arrival_order() -> None:
    sched = Scheduler("fcfs")
    sched.admission = type(sched.admission)(memory_aware=False, engine_buffer=1)
    for i, n in enumerate((800, 20, 200)):
        sched.submit(_req(f"r{n}", n, float(i)), float(i))
    assert _drain(sched, 3.0) == ["r800", "r20", "r200"]


def test_memory_admission_holds_back_what_would_overflow_the_cache() -> None:
    sched = Scheduler("oracle", Admission(memory_aware=True, prefill_tokens=0))  # the optional gate
    pod = sched.view("p0", ("m",), PROFILE.with_overrides(num_gpu_blocks=1000))  # 16k tokens
    sched.submit(_req("a", 6000, 0.0), 0.0)
    sched.submit(_req("b", 6000, 0.0), 0.0)
    sched.submit(_req("c", 6000, 0.0), 0.0)
    released = [r.request_id for r, _ in sched.dispatch([pod], 0.0)]
    assert released == ["a", "b"]  # 2 x (500 + 6000) fits 16k; a third would not
    assert sched.queue_depth() == 1


def test_stale_and_unhealthy_pods_get_nothing() -> None:
    sched = Scheduler("least-requests")
    sched.submit(_req("a", 10, 0.0), 0.0)
    pods = [sched.view("s", ("m",), PROFILE, stale=True), sched.view("u", ("m",), PROFILE, healthy=False)]
    assert sched.dispatch(pods, 0.0) == []
    assert [p.name for _, p in sched.dispatch(pods + [sched.view("ok", ("m",), PROFILE)], 0.0)] == ["ok"]


def test_cancel_removes_a_queued_request() -> None:
    sched = Scheduler("sagesched")
    sched.submit(_req("a", 10, 0.0), 0.0)
    assert sched.cancel("a") is not None
    assert sched.dispatch([sched.view("ok", ("m",), PROFILE)], 0.0) == []


def test_engine_priority_direction_follows_the_engine() -> None:
    assert engine_priority(0.1, "vllm") < engine_priority(0.2, "vllm")
    assert engine_priority(0.1, "sglang") > engine_priority(0.2, "sglang")


def test_history_estimator_learns_the_bucket_shape() -> None:
    est = HistoryEstimator()
    prior = est.predict("m", 100)
    for _ in range(500):
        est.observe("m", 100, 30)
    learned = est.predict("m", 100)
    assert learned.cdf(40) > 0.9 > prior.cdf(40)
    assert est.predict("m", 100) is learned  # same object until new evidence


def test_history_predictions_are_rebuilt_once_evidence_grows_by_a_64th() -> None:
    """Each observation counts while there are few; among many, the cached prediction (and the work
    keyed on its object) is kept until its bucket's or its model's evidence grew by 1/64."""
    est = HistoryEstimator()
    for n in range(10):
        before = est.predict("m", 100)
        est.observe("m", 100, 30)
        assert est.predict("m", 100) is not before, n  # few observations: every one changes it
    for _ in range(630):
        est.observe("m", 100, 30)
    held = est.predict("m", 100)
    for _ in range(9):  # 640 seen: 10 more rebuild it
        est.observe("m", 100, 3000)
    assert est.predict("m", 100) is held
    est.observe("m", 100, 3000)
    rebuilt = est.predict("m", 100)
    assert rebuilt is not held and rebuilt.cdf(40) < held.cdf(40)
    for _ in range(20):  # another bucket of the same model: the model-wide shape grows too
        est.observe("m", 5000, 30)
    assert est.predict("m", 100) is not rebuilt


def test_the_default_picker_prefers_free_kv_counting_prompts_not_yet_taken_in() -> None:
    sched = Scheduler("sjf-mean", Admission(prefill_tokens=0, engine_buffer=4))
    busy = sched.view("busy", ("m",), PROFILE, kv_usage=0.5)
    idle = sched.view("idle", ("m",), PROFILE, kv_usage=0.2)
    capacity = PROFILE.kv_capacity_tokens
    big = SchedRequest("big", "m", int(0.4 * capacity), 0.0, D.point(10), true_output_tokens=10)
    sched.submit(big, 0.0)
    assert [p.name for _, p in sched.dispatch([busy, idle], 0.0)] == ["idle"]
    # the engine has not reported the big prompt yet (idle still says 20%): it counts anyway,
    # so idle is now at 60% of its KV in our books and the next request goes to busy
    sched.submit(_req("next", 10, 0.0), 0.0)
    assert [p.name for _, p in sched.dispatch([busy, idle], 0.0)] == ["busy"]


def test_a_resumed_request_goes_home_when_it_fits_there_and_elsewhere_when_not() -> None:
    sched = Scheduler("sjf-mean", Admission(prefill_tokens=0))
    home = sched.view("home", ("m",), PROFILE, kv_usage=0.6)
    other = sched.view("other", ("m",), PROFILE, kv_usage=0.0)
    resumed = _req("r", 100, 0.0)
    resumed.resume_pod, resumed.generated = "home", 50  # its 550 tokens are cached on home
    sched.submit(resumed, 0.0)
    assert [p.name for _, p in sched.dispatch([home, other], 0.0)] == ["home"]
    sched.on_finish("r", 0.0)
    full = sched.view("home", ("m",), PROFILE, kv_usage=1.0 - 100 / PROFILE.kv_capacity_tokens)
    sched.submit(resumed, 0.0)  # 550 tokens do not fit in the 100 home has left
    assert [p.name for _, p in sched.dispatch([full, other], 0.0)] == ["other"]


def test_rekeying_a_queue_reorders_what_waits_by_the_new_rate() -> None:
    queue = AgingQueue(0.0)
    old, new = _req("old-big", 10, 0.0), _req("new-small", 10, 100.0)
    old.rank, new.rank = 4.0, 1.0
    queue.push(old)
    queue.push(new)
    assert queue.peek() is new  # no aging: the cheaper first
    queue.rekey(0.1)  # 100 s of waiting shrink the big one by e^-10: it goes first
    assert [queue.pop(), queue.pop()] == [old, new]


def test_a_view_that_reads_another_ledger_is_refused_not_miscounted() -> None:
    sched = Scheduler("fcfs")
    sched.submit(_req("a", 10, 0.0), 0.0)
    with pytest.raises(ValueError, match="does not read this scheduler's ledger"):
        sched.dispatch([PodView("p0", ("m",), PROFILE)], 0.0)
    assert [r.request_id for r, _ in sched.dispatch([sched.view("p0", ("m",), PROFILE)], 0.0)] == ["a"]
