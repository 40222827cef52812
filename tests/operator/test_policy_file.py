"""`sagesched operator --policy-file` with no Kubernetes, all real processes: a redis-server, an emulated
pod, the operator reading a SageSchedPolicy from a file, and two routers scoped to that policy."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml

from sagesched.http_serve import free_port
from sagesched.state.pod_store import RedisPodStore
from tests.conftest import eventually, wait_for_port
from tests.reliability.conftest import MODEL, PodProcess

TTL_S = 1.0  # snapshotTTLSeconds: the operator gap below outlasts it, as a 30 s outage outlasts the default 5 s


def policy_doc(policy: str, pod: PodProcess) -> dict:
    return {"apiVersion": "sagesched.io/v1alpha1", "kind": "SageSchedPolicy",
            "metadata": {"name": "p", "namespace": "demo"},
            "spec": {"staticEndpoints": [{"name": "pod-0", "address": f"127.0.0.1:{pod.port}"}],
                     "models": [MODEL], "policy": {"name": policy}, "scrapeIntervalSeconds": 0.2,
                     "snapshotTTLSeconds": TTL_S}}


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sagesched", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


async def policy_info(session: aiohttp.ClientSession, port: int) -> list[tuple[str, str, str]]:
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return re.findall(r'sagesched_policy_info\{generation="(\d+)",policy="([^"]+)",policy_name="([^"]+)"\} 1', text)


async def all_ready(session: aiohttp.ClientSession, ports: list[int]) -> bool:
    """Every router has read the operator's snapshot of the pod (the configuration may come first)."""
    for port in ports:
        async with session.get(f"http://127.0.0.1:{port}/ready") as resp:
            if resp.status != 200:
                return False
    return True


async def complete(session: aiohttp.ClientSession, port: int) -> int:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4}
    async with session.post(f"http://127.0.0.1:{port}/v1/completions", json=body) as resp:
        await resp.read()
        return resp.status


async def test_file_policy_drives_two_routers_live_and_an_operator_gap_loses_no_request(redis_url, tmp_path: Path):
    pod = PodProcess().start()
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text(yaml.safe_dump(policy_doc("sagesched", pod)))
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({"redis_url": redis_url, "store_policy": "demo/p", "scrape_interval_s": 0.1}))
    operator_args = ("operator", "--policy-file", str(policy_file), "--redis-url", redis_url)
    ports = [free_port(), free_port()]
    procs = [spawn(*operator_args)]
    procs += [spawn("router", "--config", str(config), "--host", "127.0.0.1", "--port", str(p), "--grpc-port", "-1")
              for p in ports]
    store = RedisPodStore(redis_url)
    try:
        for p in ports:
            wait_for_port(p, timeout=60)
        async with aiohttp.ClientSession() as session:
            async def serving(policy: str, generation: str) -> bool:
                infos = [await policy_info(session, p) for p in ports]
                return all(info == [(generation, policy, "demo/p")] for info in infos)

            await eventually(lambda: serving("sagesched", "1"), timeout=30, what="both routers on generation 1")
            await eventually(lambda: all_ready(session, ports), timeout=30, what="both routers know the pod")
            assert await complete(session, ports[0]) == 200

            policy_file.write_text(yaml.safe_dump(policy_doc("fcfs", pod)))
            await eventually(lambda: serving("fcfs", "2"), timeout=10, what="the edit live on both routers")
            await eventually(lambda: _all_at(store, 2), timeout=10, what="both routers report generation 2")

            procs[0].kill()
            procs[0].wait(timeout=10)
            await asyncio.sleep(3 * TTL_S)  # every snapshot has expired: the routers run on their last view
            during = [asyncio.ensure_future(complete(session, p)) for p in ports for _ in range(3)]
            await asyncio.sleep(TTL_S)
            procs[0] = spawn(*operator_args)
            assert await asyncio.gather(*during) == [200] * 6
            assert await serving("fcfs", "2")  # the restarted operator keeps the generation
    finally:
        await store.close()
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
        pod.kill()


async def _all_at(store: RedisPodStore, generation: int) -> bool:
    applied = await store.applied("demo/p")
    return len(applied) == 2 and set(applied.values()) == {generation}
