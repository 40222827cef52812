"""What a router believes about a pod between two scrapes: the snapshot corrected by its own
dispatches, finishes and first tokens since (router/pods.py `PodEntry.view`)."""
from __future__ import annotations

import time

from sagesched.router.pods import PodEntry
from sagesched.scheduling.admission import Admission
from sagesched.state.snapshot import PodSnapshot


def entry_with_snapshot(running: int, waiting: int, ours_unstarted: set[str]) -> PodEntry:
    entry = PodEntry(name="pod-a", base_url="http://pod-a:8000", models=("m",))
    entry.unstarted = set(ours_unstarted)
    entry.snapshot = PodSnapshot(name="pod-a", address="pod-a:8000", models=["m"], num_running=running,
                                 num_waiting=waiting, scraped_at=time.time())
    entry.took_snapshot()
    return entry


def view(entry: PodEntry):
    return entry.view(time.time(), max_age=60.0)


def dispatch(entry: PodEntry, request_id: str) -> None:
    entry.inflight.add(request_id)
    entry.unstarted.add(request_id)
    entry.delta += 1


def test_a_dispatch_after_the_scrape_counts_as_waiting_until_its_first_token():
    # At the scrape: 2 decoding, 3 waiting of which 1 is ours ("a"); 2 waiting belong to other clients.
    entry = entry_with_snapshot(running=2, waiting=3, ours_unstarted={"a"})
    dispatch(entry, "b")
    dispatch(entry, "c")
    assert (view(entry).num_running, view(entry).num_waiting) == (2, 5)
    entry.unstarted -= {"a", "c"}  # their first tokens arrived; no scrape since
    v = view(entry)
    assert v.num_waiting == 2 + 1  # the other clients' 2, and our "b"
    assert v.num_running == 7 - 3  # the total is unchanged by starting


def test_finishes_shrink_the_total_and_a_fresh_snapshot_resets_the_corrections():
    entry = entry_with_snapshot(running=4, waiting=0, ours_unstarted=set())
    dispatch(entry, "x")
    entry.unstarted.discard("x")
    entry.delta -= 2  # "x" and an older request of ours finished
    assert (view(entry).num_running, view(entry).num_waiting) == (3, 0)
    entry.snapshot = PodSnapshot(name="pod-a", address="pod-a:8000", models=["m"], num_running=3,
                                 num_waiting=1, scraped_at=time.time())
    entry.took_snapshot()
    assert (view(entry).num_running, view(entry).num_waiting) == (3, 1)


def test_the_waiting_gate_reopens_on_a_first_token_without_a_scrape():
    admission = Admission(engine_buffer=2)
    entry = entry_with_snapshot(running=1, waiting=0, ours_unstarted=set())
    dispatch(entry, "p")
    dispatch(entry, "q")
    assert not admission.has_room(view(entry))
    entry.unstarted.discard("p")
    assert admission.has_room(view(entry))
