"""`sagesched bench decisions` measures what it says: saturated pods, a standing queue, one release
per step, and every request it times went through the scheduler."""
from __future__ import annotations

from sagesched.bench.decisions import SaturatedCluster, run_study


def test_every_step_releases_the_queue_head_into_the_slot_a_finish_freed() -> None:
    cluster = SaturatedCluster("sagesched", pods=3, queued=7)
    before = cluster.sched.queue_depth()
    assert before == 7 and len(cluster.running) == 3 * 33  # 32 running + the one waiting slot, per pod
    released = [cluster.step() for _ in range(20)]
    assert cluster.sched.queue_depth() == before  # one in, one out: the queue stands
    assert len({r.request_id for r in released}) == 20 and all(r.pod for r in released)


def test_the_study_reports_every_policy_and_size() -> None:
    rows = run_study(["fcfs", "llmd"], [1, 4], queued=5, requests=5, repeats=2)
    assert {(r["policy"], r["pods"]) for r in rows} == {("fcfs", 1), ("fcfs", 4), ("llmd", 1), ("llmd", 4)}
    assert all(0 < r["decision_us_min"] <= r["decision_us_median"] <= r["decision_us_max"] for r in rows)
