"""Tenant fairness: weighted fair sharing of a model's queue by virtual counters of service (VTC)."""
from __future__ import annotations

import pytest

from sagesched.distribution import LengthDistribution as D
from sagesched.engine.profile import load_profile
from sagesched.scheduling import SchedRequest, Scheduler
from sagesched.scheduling.admission import Admission
from sagesched.scheduling.config import SchedulerConfig
from sagesched.scheduling.cost import CostModel
from sagesched.scheduling.fairness import OTHER, Fairness, FairQueue, tenant_label

PROFILE = load_profile()
PROMPT = 500


def _cost(req: SchedRequest) -> float:
    """What the scheduler charges a request served whole on an idle pod (memory weight 0.5)."""
    return float(CostModel(PROFILE).hybrid(PROMPT, 0.5).at(req.true_output_tokens))


def _scheduler(policy: str = "fcfs", **weights: float) -> Scheduler:
    """One request at a time reaches the pod, so the dispatch order is the queue's order."""
    return Scheduler(policy, admission=Admission(memory_aware=False, engine_buffer=1), aging_rate=0.0,
                     fairness=Fairness(weights))


def _submit(sched: Scheduler, tenant: str, lengths: list[int], arrival: float = 0.0, priority: int = 0) -> None:
    for i, n in enumerate(lengths):
        rid = f"{tenant}-{arrival:g}-{i}-{n}"
        sched.submit(SchedRequest(rid, "m", PROMPT, arrival, D.point(n), true_output_tokens=n, priority=priority,
                                  tenant=tenant), arrival)


def _serve(sched: Scheduler, count: int) -> list[SchedRequest]:
    """Dispatch `count` requests one at a time to a one-sequence pod, each streamed to its end."""
    served = []
    for _ in range(count):
        (req, _), = sched.dispatch([sched.view("p0", ("m",), PROFILE.with_overrides(max_num_seqs=1))], 0.0)
        sched.on_progress(req.request_id, req.true_output_tokens)
        sched.on_finish(req.request_id, 0.0)
        served.append(req)
    return served


def _service(served: list[SchedRequest]) -> dict[str, float]:
    out: dict[str, float] = {}
    for req in served:
        out[req.tenant] = out.get(req.tenant, 0.0) + _cost(req)
    return out


def test_over_a_backlog_tenants_receive_service_in_proportion_to_their_weights() -> None:
    """VTC's bound: while both are backlogged, their weighted service differs by at most about one
    request's cost each; a tenant of cheap requests gets many more of them, not more service."""
    sched = _scheduler(a=2.0, b=1.0)
    _submit(sched, "a", [400] * 60)  # the flood: long requests
    _submit(sched, "b", [50, 150] * 60)
    service = _service(_serve(sched, 60))
    largest = _cost(SchedRequest("x", "m", PROMPT, 0.0, D.point(400), true_output_tokens=400))
    assert abs(service["a"] / 2.0 - service["b"] / 1.0) <= 2 * largest
    assert service["a"] == pytest.approx(2 * service["b"], rel=0.1)


def test_a_newly_backlogged_tenant_cannot_bank_credit_from_being_idle() -> None:
    """b arrives after a was served alone for a while: from then on they share (alternately, for
    equal requests), rather than b taking everything until its counter has caught up with a's."""
    sched = _scheduler()
    _submit(sched, "a", [100] * 40)
    assert {r.tenant for r in _serve(sched, 20)} == {"a"}
    _submit(sched, "b", [100] * 20, arrival=1.0)
    shared = [r.tenant for r in _serve(sched, 10)]
    assert shared.count("b") == 5
    assert all(shared[i] != shared[i + 1] for i in range(len(shared) - 1))


def test_a_tenant_returning_to_an_empty_queue_starts_level_with_the_one_served_last() -> None:
    sched = _scheduler()
    _submit(sched, "a", [100] * 3)
    _serve(sched, 3)  # the queue is empty again; a was served last
    _submit(sched, "b", [100] * 4, arrival=1.0)
    _submit(sched, "a", [100] * 4, arrival=1.0)
    assert [r.tenant for r in _serve(sched, 4)].count("b") == 2


def test_within_a_tenant_the_policys_own_order_holds() -> None:
    sched = _scheduler("sagesched")
    _submit(sched, "a", [800, 20, 200])
    _submit(sched, "b", [300, 10])
    _submit(sched, "b", [900], priority=-1)  # the client's priority orders its own tenant's requests
    served = _serve(sched, 6)
    assert [r.true_output_tokens for r in served if r.tenant == "a"] == [20, 200, 800]
    assert [r.true_output_tokens for r in served if r.tenant == "b"] == [900, 10, 300]


def test_a_cancelled_request_leaves_the_queue_and_its_tenant_the_backlog() -> None:
    queue = FairQueue(0.0, Fairness())
    only, other = (SchedRequest(r, "m", PROMPT, 0.0, D.point(10), tenant=t) for r, t in (("r1", "a"), ("r2", "b")))
    queue.push(only)
    queue.push(other)
    queue.charge("b", 1.0)
    assert queue.remove("r1") is only and queue.remove("r1") is None
    assert queue.peek() is other and len(queue) == 1 and list(queue) == [other]
    assert queue.pop() is other and queue.peek() is None and len(queue) == 0


def test_charging_a_backlogged_tenant_often_keeps_its_counter_heap_small() -> None:
    queue = FairQueue(0.0, Fairness())
    for tenant in "ab":
        queue.push(SchedRequest(tenant, "m", PROMPT, 0.0, D.point(10), tenant=tenant))
    for _ in range(10_000):
        queue.charge("a", 1.0)
    assert len(queue._heap) <= 2 * 2 + 64
    assert queue.peek().tenant == "b"


def test_fairness_is_off_by_default_and_built_from_the_typed_configuration() -> None:
    assert SchedulerConfig.from_spec({"name": "sagesched"}).build().fairness is None
    config = SchedulerConfig.from_spec({"name": "sagesched", "fairness": {
        "enabled": True, "tenantHeader": "x-team", "weights": {"gold": 4}, "defaultWeight": 0.5}})
    assert config.build().fairness == Fairness({"gold": 4.0}, 0.5)
    assert SchedulerConfig.from_spec(config.to_spec()) == config
    with pytest.raises(ValueError, match="fairness.weights.gold"):
        SchedulerConfig.from_spec({"name": "fcfs", "fairness": {"weights": {"gold": 0}}})


def test_only_configured_tenants_are_metric_labels() -> None:
    assert [tenant_label(t, {"gold": 4.0}) for t in ("gold", "key-0123456789abcdef", "")] == ["gold", OTHER, OTHER]
