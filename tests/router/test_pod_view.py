"""What a router believes about a pod between two scrapes: the snapshot corrected by what the
scheduler's ledger did since — dispatches, departures and first tokens (router/pods.py `PodEntry.view`)."""
from __future__ import annotations

import time
from dataclasses import replace

from sagesched.distribution import LengthDistribution as D
from sagesched.router.pods import PodEntry
from sagesched.scheduling import Scheduler, SchedRequest
from sagesched.scheduling.admission import Admission, PodLoad
from sagesched.scheduling.ledger import PodLedger
from sagesched.state.snapshot import PodSnapshot


class Pod:
    """One pod entry reading a real scheduler's ledger, driven as the dispatcher drives them."""

    def __init__(self, running: int, waiting: int, ours_unstarted: set[str] = frozenset(),
                 ours_started: frozenset[str] = frozenset()) -> None:
        self.sched = Scheduler("fcfs", Admission(engine_buffer=1000, prefill_tokens=0))
        self.entry = PodEntry(name="pod-a", base_url="http://pod-a:8000", models=("m",), reachable=True)
        self.entry.ledger = self.sched.ledger.pod("pod-a")
        self.scrape(0, 0)
        for request_id in sorted(ours_unstarted | ours_started):
            self.dispatch(request_id)
        for request_id in ours_started:
            self.start(request_id)
        self.scrape(running, waiting)

    def scrape(self, running: int, waiting: int) -> None:
        self.entry.snapshot = PodSnapshot(name="pod-a", address="pod-a:8000", models=["m"], num_running=running,
                                          num_waiting=waiting, scraped_at=time.time())
        self.entry.took_snapshot()

    def dispatch(self, request_id: str, watched: bool = True) -> None:
        self.sched.submit(SchedRequest(request_id, "m", 10, 0.0, D.point(5), watched=watched), 0.0)
        assert [r.request_id for r, _ in self.sched.dispatch([self.view()], 0.0)] == [request_id]

    def start(self, request_id: str) -> None:
        self.sched.on_progress(request_id, 1)

    def finish(self, request_id: str) -> None:
        self.sched.on_finish(request_id, 0.0)

    def view(self):
        return self.entry.view(time.time(), max_age=60.0)


def test_a_dispatch_after_the_scrape_counts_as_waiting_until_its_first_token():
    # At the scrape: 2 decoding, 3 waiting of which 1 is ours ("a"); 2 waiting belong to other clients.
    pod = Pod(running=2, waiting=3, ours_unstarted={"a"})
    pod.dispatch("b")
    pod.dispatch("c")
    # total 2 + 3 + 2 dispatched since = 7; waiting: the other clients' 2 + ours a, b, c = 5; running 7 - 5 = 2
    assert (pod.view().num_running, pod.view().num_waiting) == (2, 5)
    pod.start("a")  # their first tokens arrived; no scrape since
    pod.start("c")
    v = pod.view()
    assert v.num_waiting == 2 + 1  # the other clients' 2, and our "b"
    assert v.num_running == 7 - 3  # the total is unchanged by starting


def test_finishes_shrink_the_total_and_a_fresh_snapshot_resets_the_corrections():
    pod = Pod(running=4, waiting=0, ours_started=frozenset({"old"}))
    pod.dispatch("x")
    pod.start("x")
    pod.finish("x")  # "x" and an older request of ours finished: 4 + 1 - 2 = 3 running
    pod.finish("old")
    assert (pod.view().num_running, pod.view().num_waiting) == (3, 0)
    assert pod.entry.inflight == [] and pod.view().inflight == []
    pod.scrape(3, 1)
    assert (pod.view().num_running, pod.view().num_waiting) == (3, 1)


def test_the_waiting_gate_reopens_on_a_first_token_without_a_scrape():
    admission = Admission(engine_buffer=2)
    pod = Pod(running=1, waiting=0)
    pod.dispatch("p")
    pod.dispatch("q")
    assert not admission.has_room(pod.view())  # 2 of ours waiting = engine_buffer
    pod.start("p")
    assert admission.has_room(pod.view())


def test_a_non_streaming_request_counts_as_waiting_only_until_the_next_snapshot():
    # Its tokens are never seen: after the next scrape the engine's own waiting count (0 here: it is
    # decoding) says where it is.
    pod = Pod(running=0, waiting=0)
    pod.dispatch("unary", watched=False)
    assert pod.view().num_waiting == 1
    pod.scrape(1, 0)
    assert (pod.view().num_running, pod.view().num_waiting) == (1, 0)
    pod.finish("unary")
    assert not pod.entry.ledger.unwatched and not pod.entry.inflight


def test_a_view_counts_what_the_current_dispatch_pass_sent_and_the_views_are_never_written():
    pod = Pod(running=0, waiting=0)
    view = pod.view()
    pod.sched.submit(SchedRequest("one", "m", 10, 0.0, D.point(5)), 0.0)
    pod.sched.submit(SchedRequest("two", "m", 10, 0.0, D.point(5)), 0.0)
    assert len(pod.sched.dispatch([view], 0.0)) == 2
    assert (view.num_running, view.num_waiting) == (0, 0)  # as built: the scheduler wrote its ledger only
    assert view.waiting_at_engine == 2 and view.unstarted == 2 and len(view.inflight) == 2


async def test_kv_capacity_comes_from_the_pod_not_the_profile(tmp_path, make_router):
    from sagesched.emulator import PodConfig, start_pods
    from sagesched.engine.profile import load_profile
    from tests.conftest import eventually

    # An engine with 4,096 KV tokens (256 blocks of 16), behind a router whose profile says 438,144.
    small = tmp_path / "small-kv.json"
    small.write_text(load_profile().with_overrides(name="small-kv", num_gpu_blocks=256,
                                                   max_model_len=2048).to_json())
    pods = await start_pods(1, PodConfig(model="m", profile=str(small), time_scale=0.001))
    try:
        router = await make_router([pods[0].base_url])
        assert load_profile().kv_capacity_tokens == 438_144
        pod = await eventually(lambda: next((v for v in router.router.pods.views() if v.eligible), None),
                               what="the pod scraped")
        assert pod.profile.kv_capacity_tokens == 4096
        # The memory gate measures free KV against that: 3,000 tokens of need fit a third-full pod
        # of 4,096 only if nothing else is there.
        gate = Admission(memory_aware=True, quantile=0.5)
        pod = replace(pod, kv_usage=1 / 3, ledger=PodLedger(requests=[object()]))
        assert not gate.fits(pod, PodLoad(), PodLoad(pending_prompt=1000, growth_mean=2000))
        assert gate.fits(pod, PodLoad(), PodLoad(pending_prompt=500, growth_mean=1500))
    finally:
        await pods[0].stop()


def test_profile_and_memory_gate_are_chosen_by_flag_and_unknown_engines_are_refused():
    import argparse

    import pytest

    from sagesched.router.cli import register, settings_from_args
    from sagesched.router.settings import Backend

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["router", "--backend", "http://pod:8000", "--profile", "h100-llama32-1b",
                              "--memory-gate", "0.5"])
    settings = settings_from_args(args)
    assert [b.profile for b in settings.backends] == ["h100-llama32-1b"]
    admission = settings.scheduler_config().build().admission
    assert admission.memory_aware and admission.z == 0.0  # expected need
    with pytest.raises(ValueError, match="unknown engine 'tgi'"):
        Backend(url="http://pod:8000", engine="tgi")
