"""Gateway placement inside the scheduler's dispatch pass: what a subset hint does to a queued request."""
from __future__ import annotations

from sagesched.distribution import LengthDistribution
from sagesched.engine.profile import load_profile
from sagesched.router.gateway.placement import GatewayPlacement
from sagesched.scheduling import SchedRequest, Scheduler

PROFILE = load_profile()


def _request(request_id: str) -> SchedRequest:
    return SchedRequest(request_id, "m", prompt_tokens=10, arrival=0.0, distribution=LengthDistribution.point(20))


def test_a_request_whose_subset_is_busy_stays_queued_until_a_subset_pod_has_room() -> None:
    sched = Scheduler("sagesched")
    placement = GatewayPlacement.install(sched, max_fallbacks=2)
    req = _request("r1")
    placement.expect(req.request_id, frozenset({"busy"}))
    sched.submit(req, 0.0)
    busy = sched.view("busy", ("m",), PROFILE.with_overrides(max_num_seqs=1), num_running=1, num_waiting=8)
    free = sched.view("free", ("m",), PROFILE)

    assert sched.dispatch([busy, free], 1.0) == []  # the free pod is outside the subset
    assert req.pod is None

    released = sched.dispatch([sched.view("busy", ("m",), PROFILE), free], 2.0)
    assert [(r.request_id, pod.name) for r, pod in released] == [("r1", "busy")]
