"""The router's metrics keep the children it asked for (labels() is on every request's path); the
series they expose must be exactly prometheus_client's, through removal and clearing."""
from __future__ import annotations

from sagesched.router.metrics import RouterMetrics


def _series(metrics: RouterMetrics, name: str) -> list[str]:
    return [line for line in metrics.exposition()[0].decode().splitlines() if line.startswith(name + "{")]


def test_a_child_asked_for_twice_is_one_series_whatever_the_value_types():
    m = RouterMetrics()
    m.requests.labels("m", 200).inc()
    m.requests.labels("m", "200").inc()
    assert m.requests.labels("m", 200) is m.requests.labels("m", 200)
    assert _series(m, "sagesched_requests_total") == ['sagesched_requests_total{code="200",model="m"} 2.0']


def test_a_removed_series_comes_back_fresh_when_asked_for_again():
    m = RouterMetrics()
    m.queue_depth.labels("m", "fcfs").set(3)
    m.queue_depth.remove("m", "fcfs")
    assert _series(m, "sagesched_queue_depth") == []
    m.queue_depth.labels("m", "fcfs").inc()
    assert _series(m, "sagesched_queue_depth") == ['sagesched_queue_depth{model="m",policy="fcfs"} 1.0']


def test_clearing_forgets_every_child():
    m = RouterMetrics()
    m.tenant_queue_depth.labels("m", "a").set(2)
    m.tenant_queue_depth.clear()
    m.tenant_queue_depth.labels("m", "a").inc()
    assert [line.rsplit(" ", 1)[1] for line in _series(m, "sagesched_tenant_queue_depth")] == ["1.0"]
