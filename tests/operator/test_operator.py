"""The operator, driven through kopf against kmock's Kubernetes API double, real Redis, real HTTP."""
from __future__ import annotations

from sagesched.operator import metrics as m
from sagesched.operator.settings import OperatorSettings
from sagesched.state.pod_store import RedisPodStore
from tests.operator.conftest import MetricsServer, OperatorHandle, eventually, pod_body, policy_body

POLICY_URL = "/apis/sagesched.io/v1alpha1/namespaces/ns/sageschedpolicies"
POOLS_URL = "/apis/inference.networking.k8s.io/v1/namespaces/ns/inferencepools"
PODS_URL = "/api/v1/namespaces/ns/pods"


def _policy(k8s, name: str):
    for (resource, ns, obj_name), obj in k8s.objects.items():
        if resource.plural == "sageschedpolicies" and (ns, obj_name) == ("ns", name) and not obj.deleted:
            return obj
    return None


def _status(k8s, name: str) -> dict:
    obj = _policy(k8s, name)
    return dict(obj.get("status", {}) or {}) if obj is not None else {}


def _condition(k8s, name: str, type_: str) -> dict:
    return next((c for c in _status(k8s, name).get("conditions", []) if c["type"] == type_), {})


def _events(k8s, reason: str) -> list[dict]:
    return [obj for (resource, _, _), obj in k8s.objects.items()
            if resource.plural == "events" and obj.get("reason") == reason]


async def _pod_names(store, policy: str = "ns/p1") -> list[str]:
    return [s.name for s in await store.list(policy=policy)]


async def test_created_policy_gets_status_with_scraped_pods(operator, k8s, pod_metrics):
    await pod_metrics.add_pod("127.0.0.2", running=3, waiting=1, kv=0.5)
    await k8s.post(PODS_URL, json=pod_body("pod-a", ip="127.0.0.2"))
    await k8s.post(POLICY_URL, json=policy_body("p1", pod_metrics.port))

    await eventually(lambda: _status(k8s, "p1").get("readyPods") == 1
                     and _condition(k8s, "p1", "InvalidSpec").get("status") == "False")
    status = _status(k8s, "p1")
    assert status["observedGeneration"] == 1
    pod = status["pods"][0]
    assert pod["name"] == "pod-a" and pod["address"] == "127.0.0.2:8000"
    assert (pod["running"], pod["waiting"], pod["kvCacheUsage"]) == (3, 1, 0.5)
    assert _condition(k8s, "p1", "Ready")["status"] == "True"
    snap = await operator.store.get("ns/p1", "pod-a")
    assert snap is not None and snap.num_running == 3 and snap.kv_capacity_tokens == 16 * 2048
    assert snap.models == ["m"] and snap.policy == "p1" and snap.namespace == "ns"
    await eventually(lambda: _events(k8s, "Accepted") and _events(k8s, "PodAdded"))


async def test_pods_coming_and_going_change_the_snapshots_in_redis(operator, k8s, pod_metrics):
    await k8s.post(POLICY_URL, json=policy_body("p1", pod_metrics.port))
    await eventually(lambda: _condition(k8s, "p1", "Degraded").get("reason") == "NoPods")

    for i, ip in enumerate(["127.0.0.3", "127.0.0.4"]):
        await pod_metrics.add_pod(ip, running=i)
        await k8s.post(PODS_URL, json=pod_body(f"pod-{i}", ip=ip))
    # Not selected (other labels) and not ready: neither may show up.
    await k8s.post(PODS_URL, json=pod_body("other", ip="127.0.0.5", labels={"app": "else"}))
    await k8s.post(PODS_URL, json=pod_body("starting", ip="127.0.0.6", ready=False))
    await eventually(lambda: _pod_sorted(operator.store, ["pod-0", "pod-1"]))

    await k8s.delete(f"{PODS_URL}/pod-0")
    await eventually(lambda: _pod_sorted(operator.store, ["pod-1"]))
    await eventually(lambda: _events(k8s, "PodRemoved"))
    # The pod changes address (e.g. restarted elsewhere): the snapshot follows it.
    await pod_metrics.add_pod("127.0.0.7", running=9)
    await k8s.patch(f"{PODS_URL}/pod-1", json={"status": {"podIP": "127.0.0.7"}})
    snap = await eventually(lambda: _snap_at(operator.store, "pod-1", "127.0.0.7:8000"))
    assert snap.num_running == 9


async def _pod_sorted(store, expected: list[str]) -> bool:
    return await _pod_names(store) == expected


async def _snap_at(store, name: str, address: str):
    snap = await store.get("ns/p1", name)
    return snap if snap is not None and snap.address == address else None


async def test_invalid_policy_gets_invalid_spec_condition_not_a_crash_loop(operator, k8s, pod_metrics):
    both = policy_body("bad", pod_metrics.port, inferencePoolRef={"name": "pool"})
    await k8s.post(POLICY_URL, json=both)
    cond = await eventually(lambda: _condition(k8s, "bad", "InvalidSpec").get("status") == "True"
                            and _condition(k8s, "bad", "InvalidSpec"))
    assert cond["reason"] == "AmbiguousPods"
    assert _condition(k8s, "bad", "Ready")["reason"] == "InvalidSpec"
    await eventually(lambda: _events(k8s, "InvalidSpec"))  # kopf posts Events asynchronously
    assert operator.running  # the operator keeps running


async def test_restarted_operator_resumes_without_repeating_work(operator, k8s, pod_metrics):
    await pod_metrics.add_pod("127.0.0.8")
    await k8s.post(PODS_URL, json=pod_body("pod-a", ip="127.0.0.8"))
    await k8s.post(POLICY_URL, json=policy_body("p1", pod_metrics.port))
    await eventually(lambda: _status(k8s, "p1").get("readyPods") == 1
                     and _condition(k8s, "p1", "InvalidSpec").get("status") == "False")
    await eventually(lambda: _events(k8s, "Accepted") and _events(k8s, "PodAdded"))  # posted before the stop
    await operator.stop()
    before = await operator.store.get("ns/p1", "pod-a")

    await operator.start()
    await eventually(lambda: _newer(operator.store, before.scraped_at))
    assert len(_events(k8s, "Accepted")) == 1  # the create handler did not run again
    assert len(_events(k8s, "PodAdded")) == 1  # known pods came back from the status
    assert not _events(k8s, "PodRemoved")
    assert _status(k8s, "p1")["readyPods"] == 1


async def _newer(store, scraped_at: float) -> bool:
    snap = await store.get("ns/p1", "pod-a")
    return snap is not None and snap.scraped_at > scraped_at


async def test_redis_restart_degrades_then_recovers_without_touching_policy_state(operator, k8s, pod_metrics,
                                                                                redis_server):
    """Redis stopped under a running operator: it keeps scraping, says StoreUnavailable in the
    status (pods and spec untouched, no event storm), and republishes into the restarted, empty
    Redis by itself."""
    await pod_metrics.add_pod("127.0.0.9", running=2)
    await k8s.post(PODS_URL, json=pod_body("pod-a", ip="127.0.0.9"))
    await k8s.post(POLICY_URL, json=policy_body("p1", pod_metrics.port))
    await eventually(lambda: _condition(k8s, "p1", "Ready").get("status") == "True")
    spec_before = dict(_policy(k8s, "p1")["spec"])

    redis_server.stop()
    await eventually(lambda: _condition(k8s, "p1", "Degraded").get("reason") == "StoreUnavailable")
    status = _status(k8s, "p1")
    assert operator.running
    assert status["readyPods"] == 1 and status["pods"][0]["running"] == 2  # scraping went on
    assert _condition(k8s, "p1", "Ready")["reason"] == "StoreUnavailable"  # pods ready, routers not told
    await eventually(lambda: _events(k8s, "Degraded"))  # kopf posts Events asynchronously
    scrapes = pod_metrics.scrapes
    await eventually(lambda: pod_metrics.scrapes >= scrapes + 3, what="three more scrapes during the outage")
    assert len(_events(k8s, "Degraded")) == 1  # one warning for the outage, not one per scrape

    redis_server.start()  # empty, as after a restart without persistence
    await eventually(lambda: operator.store.get("ns/p1", "pod-a"), timeout=20)
    await eventually(lambda: _condition(k8s, "p1", "Degraded").get("status") == "False")
    assert _condition(k8s, "p1", "Ready")["reason"] == "PodsReady"
    assert dict(_policy(k8s, "p1")["spec"]) == spec_before
    assert _status(k8s, "p1")["observedGeneration"] == 1
    assert len(_events(k8s, "Accepted")) == 1 and not _events(k8s, "PodRemoved")


async def test_spec_edits_bump_the_generation_that_status_and_conditions_observe(operator, k8s, pod_metrics):
    await pod_metrics.add_pod("127.0.0.10")
    await k8s.post(PODS_URL, json=pod_body("pod-a", ip="127.0.0.10"))
    await k8s.post(POLICY_URL, json=policy_body("p1", pod_metrics.port))
    await eventually(lambda: _condition(k8s, "p1", "Ready").get("status") == "True")
    assert _policy(k8s, "p1")["spec"]["engine"] == "vllm" and _policy(k8s, "p1")["spec"]["metricsPath"] == "/metrics"

    await k8s.patch(f"{POLICY_URL}/p1", json={"spec": {"scrapeIntervalSeconds": 0.1}})
    assert _policy(k8s, "p1")["metadata"]["generation"] == 2
    await eventually(lambda: _status(k8s, "p1").get("observedGeneration") == 2
                     and {c.get("observedGeneration") for c in _status(k8s, "p1")["conditions"]} == {2},
                     what="status and every condition at generation 2")


async def test_deleted_policy_takes_its_snapshots_and_gauges_along(operator, k8s, pod_metrics):
    await pod_metrics.add_pod("127.0.0.11")
    await k8s.post(PODS_URL, json=pod_body("pod-a", ip="127.0.0.11"))
    await k8s.post(POLICY_URL, json=policy_body("p1", pod_metrics.port))
    await eventually(lambda: _pod_names(operator.store), what="snapshots published")
    await eventually(lambda: _condition(k8s, "p1", "Ready").get("status") == "True")
    assert _ready_gauge() == 1

    await k8s.delete(f"{POLICY_URL}/p1")
    await eventually(lambda: _policy(k8s, "p1") is None, what="finalizer released")
    await eventually(lambda: _empty(operator.store), what="snapshots deleted")
    assert _ready_gauge() is None


def _ready_gauge() -> float | None:
    labels = {"namespace": "ns", "policy": "p1", "condition": "Ready"}
    return m.REGISTRY.get_sample_value("sagesched_operator_policy_condition", labels)


async def _empty(store) -> bool:
    return await store.list(policy="ns/p1") == []


async def test_inference_pool_target_ports_are_endpoints_with_the_scheduling_mode(operator, k8s, pod_metrics):
    """Each of a pool's targetPorts is an engine of its own (its own /metrics, its own address);
    snapshots say whether engines run priority scheduling."""
    rank1 = MetricsServer()
    await rank1.start()
    try:
        await pod_metrics.add_pod("127.0.0.1", running=1)
        await rank1.add_pod("127.0.0.1", running=2)
        ports = [pod_metrics.port, rank1.port]
        await k8s.post(POOLS_URL, json={
            "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": "pool", "namespace": "ns"},
            "spec": {"selector": {"matchLabels": {"app": "llm"}}, "targetPorts": [{"number": p} for p in ports]}})
        await k8s.post(PODS_URL, json=pod_body("pod-a"))
        body = policy_body("p1", 0, inferencePoolRef={"name": "pool"}, schedulingPolicy="priority")
        for key in ("podSelector", "metricsPort", "servingPort"):
            del body["spec"][key]
        await k8s.post(POLICY_URL, json=body)
        snaps = await eventually(lambda: _two(operator.store), what="one snapshot per target port")
        assert [(s.name, s.address, s.num_running, s.scheduling) for s in snaps] == [
            (f"pod-a:{p}", f"127.0.0.1:{p}", running, "priority") for p, running in zip(ports, (1, 2))]
    finally:
        await rank1.stop()


async def _two(store):
    snaps = sorted(await store.list(policy="ns/p1"), key=lambda s: s.num_running)
    return snaps if len(snaps) == 2 else None


async def test_namespaced_operator_starts_at_once_without_listing_namespaces(k8s, redis_url, pod_metrics):
    """Namespaced RBAC forbids listing namespaces: the operator must not wait on it (kopf retried
    the list through 54 s of backoffs); kmock cannot even answer it, so any attempt shows here."""
    store = RedisPodStore(redis_url)
    handle = OperatorHandle(OperatorSettings(namespaces=["ns"], standalone=True, redis_url=redis_url,
                                             status_interval_seconds=0.0, api_server=str(k8s.url)), store)
    await pod_metrics.add_pod("127.0.0.12")
    await k8s.post(PODS_URL, json=pod_body("pod-a", ip="127.0.0.12"))
    await k8s.post(POLICY_URL, json=policy_body("p1", pod_metrics.port))
    await handle.start()
    try:
        await eventually(lambda: _pod_names(store), timeout=10, what="snapshots published within 10 s")
    finally:
        await handle.stop()
        await store.close()
