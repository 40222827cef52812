"""Fixtures for driving the operator through kopf against kmock's Kubernetes API double.

Pods' /metrics are served by a tiny aiohttp server speaking the vLLM exposition format (names from
sagesched.engines.vllm): the same wire format the operator meets in a cluster.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import aiohttp.web
import jsonpatch
import kmock
import pytest

from sagesched.engines import vllm
from sagesched.operator.handlers import run_operator
from sagesched.operator.settings import OperatorSettings
from sagesched.state.pod_store import RedisPodStore
from tests.conftest import eventually  # noqa: F401 (the operator tests import it from here)
from tests.operator.schema import crd_schema, with_defaults

POLICIES = "sagesched.io/v1alpha1/sageschedpolicies"
POOLS = "inference.networking.k8s.io/v1/inferencepools"
POLICY_SPEC_SCHEMA = crd_schema()["properties"]["spec"]


def vllm_text(running: int, waiting: int, kv: float, *, old_names: bool = False, model: str = "m") -> str:
    kv_name = vllm.KV_USAGE_OLD if old_names else vllm.KV_USAGE
    lab = f'engine="0",model_name="{model}"'
    return "\n".join([
        f"# HELP {vllm.RUNNING} Number of requests in model execution batches.",
        f"# TYPE {vllm.RUNNING} gauge",
        f"{vllm.RUNNING}{{{lab}}} {float(running)}",
        f"# TYPE {vllm.WAITING} gauge",
        f"{vllm.WAITING}{{{lab}}} {float(waiting)}",
        f"# TYPE {kv_name} gauge",
        f"{kv_name}{{{lab}}} {kv}",
        f"# TYPE {vllm.CACHE_CONFIG} gauge",
        f'{vllm.CACHE_CONFIG}{{block_size="16",cache_dtype="auto",enable_prefix_caching="True",'
        f'gpu_memory_utilization="0.9",num_cpu_blocks="None",num_gpu_blocks="2048"}} 1.0',
        f"# TYPE {vllm.PROMPT_TOKENS}_total counter",
        f"{vllm.PROMPT_TOKENS}_total{{{lab}}} 1200.0",
        f"{vllm.GENERATION_TOKENS}_total{{{lab}}} 3400.0",
        f"{vllm.PREEMPTIONS}_total{{{lab}}} 2.0",
        f'{vllm.TTFT}_bucket{{{lab},le="0.1"}} 5.0',
        "",
    ])


class MetricsServer:
    """Loopback HTTP servers standing in for pods: every pod gets its own 127.0.0.x address on one
    shared port (the policy's metricsPort), and answers /metrics with its current values."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[int, int, float]] = {}  # ip -> (running, waiting, kv usage)
        self.scrapes = 0  # answered /metrics requests, all pods together
        self.port = 0
        self._runner: aiohttp.web.AppRunner | None = None

    async def _metrics(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        ip = request.transport.get_extra_info("sockname")[0]
        if ip not in self.values:
            return aiohttp.web.Response(status=404)
        self.scrapes += 1
        return aiohttp.web.Response(text=vllm_text(*self.values[ip]), content_type="text/plain")

    async def start(self) -> None:
        app = aiohttp.web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = aiohttp.web.AppRunner(app)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def add_pod(self, ip: str, running: int = 1, waiting: int = 0, kv: float = 0.25) -> None:
        if ip != "127.0.0.1":
            await aiohttp.web.TCPSite(self._runner, ip, self.port).start()
        self.values[ip] = (running, waiting, kv)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def pod_metrics() -> AsyncIterator[MetricsServer]:
    server = MetricsServer()
    await server.start()
    yield server
    await server.stop()


class VersioningEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the bookkeeping kopf relies on and kmock 0.8 leaves out:
    resourceVersion bumped on every write (kopf's JSON patches `test` it), 422 on a failed `test`,
    uid, and names for objects created with generateName (kopf's Events); and what a real API
    server does to a SageSchedPolicy: its CRD's schema defaults on create, and
    metadata.generation bumped by every spec change (never by a status write)."""

    async def _handle(self, request):
        rv = self.__dict__.setdefault("_rv", [0])
        if request.resource is not None and request.resource.plural == "sageschedpolicies":
            self._as_api_server(request)
        if request.resource is not None and isinstance(request.data, (dict, list)):
            rv[0] += 1
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = f"{meta['generateName']}{rv[0]}"
                meta.setdefault("uid", f"uid-{rv[0]}")
                meta.setdefault("generation", 1)
                meta["resourceVersion"] = str(rv[0])
            elif request.action == kmock.action.UPDATE and isinstance(request.data, dict):
                request.data.setdefault("metadata", {})["resourceVersion"] = str(rv[0])
            elif request.action == kmock.action.UPDATE and isinstance(request.data, list):
                request.data.append({"op": "replace", "path": "/metadata/resourceVersion", "value": str(rv[0])})
        return await super()._handle(request)

    def _as_api_server(self, request) -> None:
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            request.data["spec"] = with_defaults(POLICY_SPEC_SCHEMA, request.data.get("spec") or {})
        elif request.action == kmock.action.UPDATE and _touches_spec(request.data):
            current = next(o for (r, ns, n), o in self.objects.items()
                           if r == request.resource and (ns, n) == (request.namespace, request.name))
            generation = (current.get("metadata") or {}).get("generation", 1) + 1
            if isinstance(request.data, dict):
                request.data.setdefault("metadata", {})["generation"] = generation
            else:
                request.data.append({"op": "replace", "path": "/metadata/generation", "value": generation})

    async def _render_error(self, exc: Exception):
        # A failed `test` op is a conflict (HTTP 422 from a real API server); kopf then re-reads
        # the object instead of resending the stale patch.
        if isinstance(exc, jsonpatch.JsonPatchTestFailed):
            exc = kmock.KubernetesError(status=422, reason="Invalid", message=str(exc))
        return await super()._render_error(exc)


def _touches_spec(patch) -> bool:
    """A merge patch with a spec, or a JSON patch with an operation on it."""
    if isinstance(patch, dict):
        return "spec" in patch
    return isinstance(patch, list) and any(op.get("path", "").startswith("/spec") for op in patch)


@pytest.fixture
async def k8s() -> AsyncIterator[kmock.KubernetesEmulator]:
    """kmock's Kubernetes API double with the resources the operator uses declared."""
    emulator = VersioningEmulator()
    emulator.resources[POLICIES] = kmock.ResourceInfo(
        kind="SageSchedPolicy", namespaced=True, subresources={"status"},
        verbs={"get", "list", "watch", "patch", "update", "create", "delete"})
    emulator.resources["v1/pods"] = kmock.ResourceInfo(
        kind="Pod", namespaced=True, verbs={"get", "list", "watch", "create", "patch", "delete"})
    emulator.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True, verbs={"create"})
    emulator.resources[POOLS] = kmock.ResourceInfo(kind="InferencePool", namespaced=True,
                                                   verbs={"get", "list", "watch", "create"})
    # kopf waits for namespaces to be discoverable even cluster-wide (it lists them in neither mode:
    # cluster-wide needs no list, namespaced runs disable scanning; kmock 0.8 cannot answer one).
    emulator.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False,
                                                             verbs={"list", "watch"})
    async with emulator, kmock.Server(emulator):
        yield emulator


def pod_body(name: str, *, ip: str = "127.0.0.1", labels: dict | None = None, ready: bool = True,
             namespace: str = "ns") -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": "llm"}},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def policy_body(name: str, metrics_port: int, **spec_overrides) -> dict:
    spec = {
        "podSelector": {"matchLabels": {"app": "llm"}},
        "engine": "vllm", "metricsPort": metrics_port, "servingPort": 8000,
        "policy": {"name": "sagesched"}, "models": ["m"],
        "scrapeIntervalSeconds": 0.05, "snapshotTTLSeconds": 2,
    }
    spec.update(spec_overrides)
    return {"apiVersion": "sagesched.io/v1alpha1", "kind": "SageSchedPolicy",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": spec}


class OperatorHandle:
    """The operator (kopf.operator via run_operator) in its own thread and event loop, as in a pod.

    Not a task in the test's loop: on exit kopf cancels every task created after it started,
    which would include pytest-asyncio's fixture finalizers.
    """

    def __init__(self, settings: OperatorSettings, store: RedisPodStore) -> None:
        self.settings = settings
        self.store = store  # the test's own reader of the operator's Redis
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _main(self, stop: threading.Event, ready: threading.Event) -> None:
        try:
            asyncio.run(run_operator(self.settings, stop_flag=stop, ready_flag=ready))
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
            ready.set()

    async def start(self) -> None:
        self._stop, ready = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._main, args=(self._stop, ready), daemon=True)
        self.thread.start()
        assert await asyncio.to_thread(ready.wait, 15), "operator not ready in 15 s"
        assert self.error is None, self.error

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    async def stop(self) -> None:
        if self.thread is not None:
            self._stop.set()
            await asyncio.to_thread(self.thread.join, 20)
            assert not self.thread.is_alive(), "operator did not stop in 20 s"
            self.thread = None
        assert self.error is None, self.error


@pytest.fixture
async def operator(k8s, redis_url) -> AsyncIterator[OperatorHandle]:
    """The operator against kmock and a real Redis; status writes unthrottled for quick tests."""
    store = RedisPodStore(redis_url)
    handle = OperatorHandle(OperatorSettings(all_namespaces=True, standalone=True, redis_url=redis_url,
                                             status_interval_seconds=0.0, api_server=str(k8s.url)), store)
    await handle.start()
    yield handle
    await handle.stop()
    await store.close()
