"""Pods that die or fail: the client gets a well-formed error (or a retry elsewhere), the router
forgets the request, and a failing pod is ejected and later readmitted."""
from __future__ import annotations

import json

import aiohttp
import openai

from sagesched.emulator import PodConfig
from sagesched.emulator.text import generated_text

from tests.reliability.conftest import MODEL, FlakyPod, assert_openai_error, eventually


def sse_payloads(raw: bytes) -> list[bytes]:
    return [e[len(b"data: "):] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]


def router_is_idle(router) -> bool:
    r = router.router
    return (not r.scheduler.inflight() and not r.dispatcher.running and not r.dispatcher.waiting
            and all(not p.inflight for p in r.pods.pods.values()))


async def test_pod_killed_mid_stream_ends_the_stream_with_an_openai_error_event(pod_processes, make_router):
    pod = pod_processes(time_scale=1.0)  # real time: the stream is still running when the pod dies
    router = await make_router([pod.url])
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 5000, "stream": True, "ignore_eos": True}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.post(f"{router.url}/v1/completions", json=body) as resp:
            assert resp.status == 200
            first = await resp.content.readuntil(b"\n\n")
            assert b'"text"' in first
            pod.kill()
            rest = await resp.content.read()  # returns: the stream ends instead of hanging
    last = json.loads(sse_payloads(first + rest)[-1])
    assert assert_openai_error(last)["code"] == "upstream_error"
    await eventually(lambda: router_is_idle(router), what="in-flight accounting released")
    assert router.router.pods.pods[pod.url.removeprefix("http://")].failures >= 1


async def test_openai_client_sees_a_pod_death_mid_stream_as_an_api_error(pod_processes, make_router):
    pod = pod_processes(time_scale=1.0)
    router = await make_router([pod.url])
    client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60)
    stream = await client.completions.create(model=MODEL, prompt="hi", max_tokens=5000, stream=True,
                                             extra_body={"ignore_eos": True})
    received = 0
    try:
        async for _chunk in stream:
            received += 1
            if received == 2:
                pod.kill()
        raise AssertionError("the stream ended without reporting the pod's death")
    except openai.APIError as exc:
        assert "stream broke" in exc.message or "failed" in exc.message
    await eventually(lambda: router_is_idle(router), what="in-flight accounting released")


async def test_a_stream_whose_pod_is_killed_resumes_on_another_pod(pod_processes, make_router):
    """Failover by continuation: the pod under a running stream is killed; the stream resumes on the
    other pod, and its client reads the whole answer as one stream (the emulator's text carries on
    where the first run stopped, so the text is exactly an uninterrupted one's)."""
    first, second = pod_processes(time_scale=0.2), pod_processes(time_scale=0.2)
    router = await make_router([first.url, second.url])
    body = {"model": MODEL, "prompt": "tell me a story", "max_tokens": 300, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    texts, ids, usage = [], set(), None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.post(f"{router.url}/v1/completions", json=body) as resp:
            async for line in resp.content:
                if not line.startswith(b"data: {"):
                    continue
                event = json.loads(line[len(b"data: "):])
                ids.add(event["id"])
                usage = event.get("usage") or usage
                texts += [c["text"] for c in event["choices"]]
                if len(texts) == 20:  # the pod holding the stream dies
                    running = next(iter(router.router.dispatcher.running.values()))
                    killed = running.pod.name
                    next(p for p in (first, second) if p.url.endswith(killed)).kill()
    assert "".join(texts) == generated_text(300)
    assert len(ids) == 1 and usage["completion_tokens"] == 300
    assert router.router.metrics.preemptions.labels(killed, "pod_failed")._value.get() == 1
    assert router.router.pods.pods[killed].failures >= 1
    await eventually(lambda: router_is_idle(router), what="in-flight accounting released")


async def test_request_to_a_dead_pod_is_retried_on_another_pod(pod_processes, make_router):
    dead, alive = pod_processes(), pod_processes()
    # Scrapes are rare here, so the router still believes the dead pod is up when requests arrive.
    router = await make_router([dead.url, alive.url], scrape_interval_s=60, policy="round-robin")
    dead.kill()
    client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=30)
    for stream in (False, True, False, True):
        resp = await client.completions.create(model=MODEL, prompt="hi", max_tokens=3, stream=stream,
                                               extra_body={"ignore_eos": True})
        if stream:
            assert len([c async for c in resp if c.choices]) == 3
        else:
            assert resp.usage.completion_tokens == 3
    entry = router.router.pods.pods[dead.url.removeprefix("http://")]
    assert entry.failures >= 1 and not entry.reachable
    assert router_is_idle(router)


async def test_no_live_pod_left_is_a_502_in_openai_shape(pod_processes, make_router):
    pod = pod_processes()
    router = await make_router([pod.url], scrape_interval_s=60)
    pod.kill()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{router.url}/v1/completions", json={"model": MODEL, "prompt": "hi"}) as resp:
            assert resp.status == 502
            assert assert_openai_error(await resp.json())["code"] == "upstream_error"
    assert router_is_idle(router)


async def test_pod_is_ejected_after_consecutive_5xx_and_readmitted_when_healthy(make_router):
    pod = await FlakyPod(PodConfig(model=MODEL, time_scale=0.001)).start()
    try:
        router = await make_router([pod.base_url], eject_after_failures=3, upstream_retries=0)
        entry = next(iter(router.router.pods.pods.values()))
        pod.broken = True
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.post(f"{router.url}/v1/completions", json={"model": MODEL, "prompt": "hi"}) as r:
                    assert r.status == 502  # the pod's 500 is the router's bad gateway, not its own fault
                    assert_openai_error(await r.json())
            assert entry.ejected
            async with session.post(f"{router.url}/v1/completions", json={"model": MODEL, "prompt": "hi"}) as r:
                assert r.status == 503  # ejected: no pod to send to, answered at once
                assert assert_openai_error(await r.json())["code"] == "no_pods"
            pod.broken = False
            await eventually(lambda: not entry.ejected, what="readmission after a good health probe")
            async with session.post(f"{router.url}/v1/completions",
                                    json={"model": MODEL, "prompt": "hi", "max_tokens": 2}) as r:
                assert r.status == 200
        assert b'pod_ejections_total{pod="' in router.router.metrics.exposition()[0]
        assert router_is_idle(router)
    finally:
        await pod.stop()
