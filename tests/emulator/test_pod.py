"""An emulated pod looks like vLLM's OpenAI server to the official client and to Prometheus."""
from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import openai
import pytest

from sagesched.engines import sglang, vllm
from sagesched.emulator import EmulatedPod, PodConfig, running_pods
from sagesched.engine import load_profile

from tests.emulator.conftest import FAST, MODEL, client, scrape


async def test_chat_completion_returns_the_forced_length_and_its_usage(pod):
    reply = await client(pod).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say something."}], max_tokens=9,
        extra_body={"ignore_eos": True})
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 9 == len(reply.choices[0].message.content.split())
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 9


async def test_streamed_chat_chunks_match_usage(pod):
    stream = await client(pod).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=40,
        stream=True, stream_options={"include_usage": True})
    contents, finish, usage = [], [], None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                contents.append(choice.delta.content)
            finish.append(choice.finish_reason)
    assert usage is not None and usage.completion_tokens == len(contents) >= 1
    assert finish[-1] in ("stop", "length") and all(f is None for f in finish[:-1])


async def test_streamed_completion_with_token_id_prompt_counts_prompt_exactly(pod):
    stream = await client(pod).completions.create(
        model=MODEL, prompt=[1, 2, 3, 4, 5, 6, 7], max_tokens=6, stream=True,
        stream_options={"include_usage": True}, extra_body={"min_tokens": 6})
    texts, usage = [], None
    async for chunk in stream:
        assert chunk.object == "text_completion"
        usage = chunk.usage or usage
        texts += [c.text for c in chunk.choices]
    assert usage.prompt_tokens == 7 and usage.completion_tokens == len(texts) == 6


async def test_min_tokens_is_respected_without_ignore_eos(pod):
    reply = await client(pod).completions.create(model=MODEL, prompt="hello", max_tokens=200,
                                                 extra_body={"min_tokens": 150})
    assert reply.usage.completion_tokens >= 150


async def test_models_lists_the_served_model(pod):
    models = await client(pod).models.list()
    assert [m.id for m in models.data] == [MODEL]


@pytest.mark.parametrize("body, status", [
    (b"{not json", 400),
    (b'{"model": "other-model", "prompt": "hi"}', 404),
    (b'{"model": "llama-3-8b", "prompt": "hi", "max_tokens": -1}', 400),
    (b'{"model": "llama-3-8b", "prompt": [1, 2], "max_tokens": 8192}', 400),
    (b'{"model": "llama-3-8b", "prompt": "hi", "priority": 3}', 400),  # fcfs pod, as vLLM
    (b'{"model": "llama-3-8b", "temperature": null, "prompt": ""}', 400),  # found by the router's fuzz test
])
async def test_bad_requests_get_openai_shaped_errors(pod, body, status):
    async with aiohttp.ClientSession() as session:
        async with session.post(pod.base_url + "/v1/completions", data=body,
                                headers={"Content-Type": "application/json"}) as resp:
            payload = await resp.json()
    assert resp.status == status
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["code"] == status


async def test_too_long_prompt_raises_in_the_openai_client(pod):
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        await client(pod).completions.create(model=MODEL, prompt=list(range(9000)), max_tokens=1)
    with pytest.raises(openai.NotFoundError):
        await client(pod).completions.create(model="nope", prompt="hi", max_tokens=1)


async def test_queue_limit_answers_429():
    async with EmulatedPod(PodConfig(time_scale=1.0, max_queue=0)) as pod:
        with pytest.raises(openai.RateLimitError):
            await client(pod).completions.create(model=MODEL, prompt="hi", max_tokens=1)


async def test_health_answers_200(pod):
    async with aiohttp.ClientSession() as session, session.get(pod.base_url + "/health") as resp:
        assert resp.status == 200


async def test_vllm_metrics_are_exported_and_count_the_traffic(pod):
    replies = [await client(pod).completions.create(model=MODEL, prompt="count me", max_tokens=5,
                                                    extra_body={"ignore_eos": True}) for _ in range(3)]
    metrics = await scrape(pod)
    for name in (vllm.RUNNING, vllm.WAITING, vllm.KV_USAGE, vllm.CACHE_CONFIG,
                 vllm.PROMPT_TOKENS, vllm.GENERATION_TOKENS, vllm.PREEMPTIONS,
                 vllm.REQUEST_SUCCESS, vllm.TTFT, vllm.ITL, vllm.E2E,
                 vllm.QUEUE_TIME):
        assert name in metrics, name
    value = {s.name: s.value for fam in metrics.values() for s in fam if "finished_reason" not in s.labels}
    assert value[vllm.GENERATION_TOKENS + "_total"] == 15
    assert value[vllm.PROMPT_TOKENS + "_total"] == sum(r.usage.prompt_tokens for r in replies) > 0
    assert value[vllm.E2E + "_count"] == 3 and value[vllm.ITL + "_count"] == 3 * 4
    success = {s.labels["finished_reason"]: s.value for s in metrics[vllm.REQUEST_SUCCESS]}
    assert success["length"] == 3
    info = metrics[vllm.CACHE_CONFIG][0].labels
    profile = load_profile(FAST.profile)
    assert (info["block_size"], info["num_gpu_blocks"]) == (str(profile.block_size), str(profile.num_gpu_blocks))
    assert metrics[vllm.RUNNING][0].labels["model_name"] == MODEL


async def test_sglang_flavor_serves_sglang_names():
    async with EmulatedPod(PodConfig(time_scale=0.001, metrics_flavor="sglang")) as pod:
        await client(pod).completions.create(model=MODEL, prompt="hi", max_tokens=3, extra_body={"ignore_eos": True})
        metrics = await scrape(pod)
    for name in (sglang.RUNNING, sglang.WAITING, sglang.TOKEN_USAGE,
                 sglang.USED_TOKENS, sglang.MAX_TOTAL_TOKENS, sglang.PROMPT_TOKENS,
                 sglang.GENERATION_TOKENS, sglang.TTFT, sglang.E2E):
        assert name in metrics, name
    assert not any(n.startswith("vllm:") for n in metrics)
    assert metrics[sglang.GENERATION_TOKENS][0].value == 3


async def test_overcommitted_pod_preempts_and_the_metric_shows_it(tmp_path):
    config = PodConfig(time_scale=0.0005, profile=_tiny_profile_path(tmp_path))
    async with EmulatedPod(config) as pod:
        await asyncio.gather(*(
            client(pod).completions.create(model=MODEL, prompt=list(range(200)), max_tokens=200,
                                           extra_body={"ignore_eos": True}) for _ in range(8)))
        metrics = await scrape(pod)
    assert metrics[vllm.PREEMPTIONS][0].value > 0
    assert metrics[vllm.GENERATION_TOKENS][0].value == 8 * 200


async def test_client_disconnect_aborts_the_request_in_the_engine():
    async with EmulatedPod(PodConfig(time_scale=0.01)) as pod:
        stream = await client(pod).completions.create(model=MODEL, prompt="hi", max_tokens=5000,
                                                      stream=True, extra_body={"ignore_eos": True})
        async for _ in stream:
            break
        await stream.close()
        # the abort lands when the server notices the closed socket; the timeout is a deadline against hangs
        await asyncio.wait_for(pod.wait_idle(), timeout=15)
        assert pod.engine.counters.finished["abort"] == 1


async def test_many_pods_in_one_process_serve_on_their_own_ports():
    async with running_pods(3, FAST) as pods:
        assert len({p.port for p in pods}) == 3
        for p in pods:
            reply = await client(p).completions.create(model=MODEL, prompt="x", max_tokens=2)
            assert reply.usage.completion_tokens >= 1


def _tiny_profile_path(folder: Path) -> str:
    profile = load_profile().with_overrides(num_gpu_blocks=100, block_size=16, max_model_len=1024)
    path = folder / "tiny-profile.json"
    path.write_text(profile.to_json())
    return str(path)
