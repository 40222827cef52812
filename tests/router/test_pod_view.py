"""What a router believes about a pod between two scrapes: the snapshot corrected by its own
dispatches, finishes and first tokens since (router/pods.py `PodEntry.view`)."""
from __future__ import annotations

import time

from sagesched.router.pods import PodEntry
from sagesched.scheduling.admission import Admission, PodLoad
from sagesched.state.snapshot import PodSnapshot


def entry_with_snapshot(running: int, waiting: int, ours_unstarted: set[str],
                        ours_started: frozenset[str] = frozenset()) -> PodEntry:
    """A pod scraped just now, holding our requests `ours_unstarted` (still waiting) and `ours_started`."""
    entry = PodEntry(name="pod-a", base_url="http://pod-a:8000", models=("m",))
    for request_id in ours_unstarted | ours_started:  # the dispatcher's own bookkeeping, as in router/dispatch.py
        entry.dispatched(request_id)
    for request_id in ours_started:
        entry.started(request_id)
    entry.snapshot = PodSnapshot(name="pod-a", address="pod-a:8000", models=["m"], num_running=running,
                                 num_waiting=waiting, scraped_at=time.time())
    entry.took_snapshot()
    return entry


def view(entry: PodEntry):
    return entry.view(time.time(), max_age=60.0)


def test_a_dispatch_after_the_scrape_counts_as_waiting_until_its_first_token():
    # At the scrape: 2 decoding, 3 waiting of which 1 is ours ("a"); 2 waiting belong to other clients.
    entry = entry_with_snapshot(running=2, waiting=3, ours_unstarted={"a"})
    entry.dispatched("b")
    entry.dispatched("c")
    # total 2 + 3 + 2 dispatched since = 7; waiting: the other clients' 2 + ours a, b, c = 5; running 7 - 5 = 2
    assert (view(entry).num_running, view(entry).num_waiting) == (2, 5)
    entry.started("a")  # their first tokens arrived; no scrape since
    entry.started("c")
    v = view(entry)
    assert v.num_waiting == 2 + 1  # the other clients' 2, and our "b"
    assert v.num_running == 7 - 3  # the total is unchanged by starting


def test_finishes_shrink_the_total_and_a_fresh_snapshot_resets_the_corrections():
    entry = entry_with_snapshot(running=4, waiting=0, ours_unstarted=set(), ours_started=frozenset({"old"}))
    entry.dispatched("x")
    entry.started("x")
    entry.finished("x")  # "x" and an older request of ours finished: 4 + 1 - 2 = 3 running
    entry.finished("old")
    assert (view(entry).num_running, view(entry).num_waiting) == (3, 0)
    assert entry.inflight == set()
    entry.snapshot = PodSnapshot(name="pod-a", address="pod-a:8000", models=["m"], num_running=3,
                                 num_waiting=1, scraped_at=time.time())
    entry.took_snapshot()
    assert (view(entry).num_running, view(entry).num_waiting) == (3, 1)


def test_the_waiting_gate_reopens_on_a_first_token_without_a_scrape():
    admission = Admission(engine_buffer=2)
    entry = entry_with_snapshot(running=1, waiting=0, ours_unstarted=set())
    entry.dispatched("p")
    entry.dispatched("q")
    assert not admission.has_room(view(entry))  # 2 of ours waiting = engine_buffer
    entry.started("p")
    assert admission.has_room(view(entry))


def test_a_non_streaming_request_counts_as_waiting_only_until_the_next_snapshot():
    # Its tokens are never seen: after the next scrape the engine's own waiting count (0 here: it is
    # decoding) says where it is.
    entry = entry_with_snapshot(running=0, waiting=0, ours_unstarted=set())
    entry.dispatched("unary", watched=False)
    assert view(entry).num_waiting == 1
    entry.snapshot = PodSnapshot(name="pod-a", address="pod-a:8000", models=["m"], num_running=1,
                                 num_waiting=0, scraped_at=time.time())
    entry.took_snapshot()
    assert (view(entry).num_running, view(entry).num_waiting) == (1, 0)
    entry.finished("unary")
    assert not entry.unwatched and not entry.inflight


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
        pod.kv_usage, pod.inflight = 1 / 3, [object()]
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
