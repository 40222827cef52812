"""Admission gates: what a pod may take while the central queue holds the rest."""
from __future__ import annotations

from sagesched.distribution import LengthDistribution as D
from sagesched.engine.profile import load_profile
from sagesched.scheduling import Admission, PodView, SchedRequest, Scheduler

PROFILE = load_profile()


def _req(rid: str, prompt: int, arrival: float = 0.0) -> SchedRequest:
    return SchedRequest(rid, "m", prompt, arrival, D.point(50))


def _pod(sched: Scheduler, **state: int) -> PodView:
    return sched.view("pod-0", ("m",), PROFILE, **state)


def _release(sched: Scheduler, pod: PodView, n: int, prompt: int) -> list[str]:
    for i in range(n):
        sched.submit(_req(f"r{i}", prompt, float(i)), float(i))
    return [r.request_id for r, _ in sched.dispatch([pod], float(n))]


def test_a_pod_whose_engine_queue_is_full_takes_nothing_more() -> None:
    """Whatever waits at the engine is served first-come-first-served there: it should wait here."""
    sched = Scheduler("sagesched", Admission(memory_aware=False, engine_buffer=2, prefill_tokens=0))
    assert _release(sched, _pod(sched, num_running=10, num_waiting=2), 3, 100) == []
    assert sched.queue_depth() == 3


def test_the_engine_buffer_bounds_releases_to_an_idle_pod() -> None:
    sched = Scheduler("sagesched", Admission(memory_aware=False, engine_buffer=2, prefill_tokens=0))
    assert len(_release(sched, _pod(sched), 5, 100)) == 2
    assert sched.queue_depth() == 3


def test_requests_that_started_streaming_no_longer_count_as_waiting() -> None:
    sched = Scheduler("sagesched", Admission(memory_aware=False, engine_buffer=1, prefill_tokens=0))
    pod = _pod(sched)
    (first,) = _release(sched, pod, 2, 100)
    assert sched.dispatch([_pod(sched)], 3.0) == []  # our dispatched request has not streamed yet
    sched.on_progress(first, 1)
    assert [r.request_id for r, _ in sched.dispatch([_pod(sched)], 3.0)] == ["r1"]


def test_the_prefill_gate_meters_prompt_tokens_into_a_pod() -> None:
    sched = Scheduler("sagesched", Admission(memory_aware=False, engine_buffer=100, prefill_tokens=1000))
    released = _release(sched, _pod(sched), 6, 300)
    assert len(released) == 3  # 3 x 300 <= 1000 < 4 x 300
    sched.on_progress(released[0], 1)  # its prefill is done: room for one more
    assert len(sched.dispatch([_pod(sched)], 10.0)) == 1


def test_a_prompt_longer_than_the_budget_still_runs_alone() -> None:
    sched = Scheduler("sagesched", Admission(memory_aware=False, engine_buffer=100, prefill_tokens=1000))
    assert len(_release(sched, _pod(sched), 2, 5000)) == 1


def test_the_automatic_prefill_budget_follows_the_profile_knee() -> None:
    # The knee is where a step's per-token work equals its fixed weight-read floor: base_s / per_token_s.
    # A made-up profile with a round knee: 0.01 s / 2e-5 s per token = 500 tokens; the budget is 4 knees.
    pod = PodView("pod-0", ("m",), PROFILE.with_overrides(base_s=0.01, per_token_s=2e-5))
    assert Admission().prefill_budget(pod) == 4 * 500
    # The shipped profile: 0.008108364639355036 / 2.77437095836919e-05 = 292.26 tokens; x4 = 1169.0 -> 1169
    assert Admission().prefill_budget(PodView("pod-0", ("m",), PROFILE)) == 1169
    assert Admission(prefill_tokens=0).prefill_budget(PodView("pod-0", ("m",), PROFILE)) == 0
    assert Admission(prefill_tokens=777).prefill_budget(pod) == 777  # an explicit budget wins
