"""What a router believes about a pod between two scrapes: the snapshot corrected by its own
dispatches, finishes and first tokens since (router/pods.py `PodEntry.view`)."""
from __future__ import annotations

import time

from sagesched.router.pods import PodEntry
from sagesched.scheduling.admission import Admission
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
