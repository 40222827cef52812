"""How the router judges a pod's health: slow is not gone, and an ejected pod earns its way back."""
from __future__ import annotations

import asyncio
import os
import select
import socket
import time
import signal

import aiohttp

from sagesched.emulator import PodConfig
from tests.conftest import eventually
from tests.reliability.conftest import MODEL, FlakyPod, PodProcess


async def test_a_pod_that_stops_answering_scrapes_for_a_while_keeps_requests_queued(make_router):
    pod = PodProcess().start()
    try:
        # Scrapes time out after 1 s; metrics older than 0.5 s make the pod take nothing new.
        router = await make_router([pod.url], snapshot_max_age_s=0.5, queue_timeout_s=60)
        entry = next(iter(router.router.pods.pods.values()))
        assert pod.proc is not None
        os.kill(pod.proc.pid, signal.SIGSTOP)  # alive, connections accepted, nothing answered
        try:
            # Older than 2 s: at least one scrape has timed out since the pause.
            await eventually(lambda: entry.snapshot.age(time.time()) > 2.0, what="a scrape timed out")
            assert not any(v.eligible for v in router.router.pods.views())
            async with aiohttp.ClientSession() as session:
                call = session.post(f"{router.url}/v1/completions",
                                    json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
                pending = asyncio.ensure_future(call)
                await eventually(lambda: router.router.dispatcher.depth[MODEL] == 1 or pending.done(),
                                 what="the request queued")
                assert not pending.done(), "answered at once instead of waiting for the pod"
                assert entry.reachable
                os.kill(pod.proc.pid, signal.SIGCONT)
                resp = await pending
                assert resp.status == 200
                assert (await resp.json())["usage"]["completion_tokens"] == 2
        finally:
            os.kill(pod.proc.pid, signal.SIGCONT)
    finally:
        pod.kill()


class LyingPod(FlakyPod):
    """Generation fails (500) while /health says all is well."""

    broken = True
    health_fails = False


async def test_each_ejection_of_a_pod_that_keeps_failing_waits_twice_as_long(make_router):
    pod = await LyingPod(PodConfig(model=MODEL, time_scale=0.001)).start()
    try:
        router = await make_router([pod.base_url], eject_after_failures=1, upstream_retries=0,
                                   eject_cooldown_s=0.2)
        entry = next(iter(router.router.pods.pods.values()))
        async with aiohttp.ClientSession() as session:
            for cooldown in (0.2, 0.4, 0.8):
                await eventually(lambda: not entry.ejected, what="readmission after the cool-down")
                sent = time.monotonic()
                async with session.post(f"{router.url}/v1/completions", json={"model": MODEL, "prompt": "hi"}) as r:
                    assert r.status == 502
                answered = time.monotonic()
                assert entry.ejected  # ejected while the request failed, then told to wait `cooldown`
                assert entry.probe_after - answered <= cooldown <= entry.probe_after - sent
    finally:
        await pod.stop()


async def test_a_pod_that_hangs_during_a_non_streaming_request_fails_it(make_router):
    pod = PodProcess(time_scale=1.0).start()  # real time: 1,500 tokens take many seconds
    try:
        router = await make_router([pod.url], idle_timeout_s=1.0)
        assert pod.proc is not None
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 1500, "ignore_eos": True}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            call = asyncio.ensure_future(session.post(f"{router.url}/v1/completions", json=body))
            await eventually(lambda: router.router.dispatcher.running, interval=0.01, what="the request at the pod")
            os.kill(pod.proc.pid, signal.SIGSTOP)
            resp = await call
            assert resp.status == 504
            assert (await resp.json())["error"]["code"] == "upstream_timeout"
        assert not router.router.dispatcher.running
    finally:
        if pod.proc is not None:
            os.kill(pod.proc.pid, signal.SIGCONT)
        pod.kill()


MAX_HELD_CONNECTIONS = 5000  # above any listen backlog here (somaxconn is 4096 on this machine)


def fill_accept_queue(port: int) -> list[socket.socket]:
    """Connections to a paused server until its accept queue is full: the next connect then gets no
    answer at all, as with a host that vanished."""
    held = []
    for _ in range(MAX_HELD_CONNECTIONS):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        held.append(sock)
        poll = select.poll()
        poll.register(sock, select.POLLOUT)
        if not poll.poll(200):  # not connected: the queue is full
            return held
    for sock in held:
        sock.close()
    raise AssertionError(f"the paused server still accepted after {MAX_HELD_CONNECTIONS} connections")


async def test_a_connect_timeout_is_retried_on_another_pod(make_router):
    stuck, healthy = PodProcess().start(), PodProcess().start()
    held: list[socket.socket] = []
    try:
        router = await make_router([stuck.url, healthy.url], connect_timeout_s=0.5, snapshot_max_age_s=60)
        entry = router.router.pods.pods[stuck.url.removeprefix("http://")]
        assert stuck.proc is not None
        os.kill(stuck.proc.pid, signal.SIGSTOP)
        held = fill_accept_queue(stuck.port)
        async with aiohttp.ClientSession() as session:
            for _ in range(20):  # until the policy has picked the stuck pod at least once
                async with session.post(f"{router.url}/v1/completions",
                                        json={"model": MODEL, "prompt": "hi", "max_tokens": 2}) as resp:
                    assert resp.status == 200, await resp.text()
                if entry.failures:
                    break
        assert entry.failures == 1 and not entry.reachable  # tried once, then left alone
    finally:
        for sock in held:
            sock.close()
        if stuck.proc is not None:
            os.kill(stuck.proc.pid, signal.SIGCONT)
        stuck.kill()
        healthy.kill()
