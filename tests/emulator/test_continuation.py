"""A preempted request resumes as a continuation, in the shapes the router sends to vLLM: the prompt
grows by exactly what was generated, and on the same pod the prefix cache still holds most of it."""
from __future__ import annotations

import asyncio

import openai
import pytest

from sagesched.engines import sglang, vllm
from sagesched.emulator import EmulatedPod, PodConfig
from sagesched.emulator.text import generated_text, split_generated

from tests.emulator.conftest import MODEL, client, scrape

PROMPT = "Summarise the following report. " + "Quarterly revenue grew steadily across regions. " * 40
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": PROMPT}]
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}
KINDS = ("completions", "chat")


def original(kind: str) -> dict:
    return {"prompt": PROMPT} if kind == "completions" else {"messages": MESSAGES}


def continuation(kind: str, generated: str) -> dict:
    """What the router resumes with: the prompt plus the text so far, or the partial reply continued."""
    if kind == "completions":
        return {"prompt": PROMPT + generated}
    return {"messages": [*MESSAGES, {"role": "assistant", "content": generated}], "extra_body": CONTINUE}


async def create(pod: EmulatedPod, kind: str, request: dict, **kwargs):
    """One request through the official client, its output length forced with ignore_eos."""
    api = client(pod).completions if kind == "completions" else client(pod).chat.completions
    extra_body = {"ignore_eos": True, **request.get("extra_body", {})}
    return await api.create(model=MODEL, **{**request, "extra_body": extra_body}, **kwargs)


def reply_text(kind: str, reply) -> str:
    return reply.choices[0].text if kind == "completions" else reply.choices[0].message.content


def chunk_text(kind: str, chunk) -> str:
    if not chunk.choices:
        return ""
    choice = chunk.choices[0]
    return (choice.text if kind == "completions" else choice.delta.content) or ""


async def stream_then_disconnect(pod: EmulatedPod, kind: str, tokens: int) -> str:
    """Read `tokens` streamed tokens, then close the connection, as the router preempts."""
    stream = await create(pod, kind, original(kind), max_tokens=4000, stream=True)
    texts = []
    async for chunk in stream:
        text = chunk_text(kind, chunk)
        if text:
            texts.append(text)
        if len(texts) == tokens:
            break
    await stream.close()
    # the abort lands when the server notices the closed socket; the timeout is a deadline against hangs
    await asyncio.wait_for(pod.wait_idle(), timeout=15)
    return "".join(texts)


def counter(metrics: dict[str, list], name: str) -> float:
    return metrics[name][0].value


@pytest.mark.parametrize("kind", KINDS)
async def test_a_resumed_request_counts_its_prompt_plus_what_it_generated_and_picks_up_its_text(pod, kind):
    first = await create(pod, kind, original(kind), max_tokens=7)
    generated = reply_text(kind, first)
    resumed = await create(pod, kind, continuation(kind, generated), max_tokens=3)
    generated += reply_text(kind, resumed)
    again = await create(pod, kind, continuation(kind, generated), max_tokens=2)  # preempted twice
    assert resumed.usage.prompt_tokens == first.usage.prompt_tokens + 7
    assert again.usage.prompt_tokens == first.usage.prompt_tokens + 10
    assert generated + reply_text(kind, again) == generated_text(12)  # as if never interrupted


async def test_continuing_a_clients_own_prefilled_reply_counts_the_same_way(pod):
    prefilled = [*MESSAGES, {"role": "assistant", "content": "Summary:"}]
    first = await create(pod, "chat", {"messages": prefilled, "extra_body": CONTINUE}, max_tokens=5)
    prefilled[-1] = {"role": "assistant", "content": "Summary:" + reply_text("chat", first)}
    resumed = await create(pod, "chat", {"messages": prefilled, "extra_body": CONTINUE}, max_tokens=2)
    assert resumed.usage.prompt_tokens == first.usage.prompt_tokens + 5


async def test_continue_final_message_with_a_generation_prompt_is_refused_as_vllm_does(pod):
    both = {"continue_final_message": True, "add_generation_prompt": True}
    with pytest.raises(openai.BadRequestError,
                       match="Cannot set both `continue_final_message` and `add_generation_prompt` to True."):
        await create(pod, "chat", {"messages": MESSAGES, "extra_body": both}, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="are not compatible"):  # the default generation prompt
        await create(pod, "chat", {"messages": MESSAGES, "extra_body": {"continue_final_message": True}},
                     max_tokens=2)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_disconnected_stream_resumed_on_the_same_pod_hits_its_prefix_cache(kind):
    config = PodConfig(time_scale=0.01)
    async with EmulatedPod(config) as same, EmulatedPod(config) as fresh:
        generated = await stream_then_disconnect(same, kind, tokens=40)
        before = await scrape(same)
        resumed = await create(same, kind, continuation(kind, generated), max_tokens=4)
        elsewhere = await create(fresh, kind, continuation(kind, generated), max_tokens=4)
        after, fresh_metrics = await scrape(same), await scrape(fresh)
    prompt, block = resumed.usage.prompt_tokens, same.profile.block_size
    assert elsewhere.usage.prompt_tokens == prompt
    hits = counter(after, vllm.PREFIX_CACHE_HITS) - counter(before, vllm.PREFIX_CACHE_HITS)
    queries = counter(after, vllm.PREFIX_CACHE_QUERIES) - counter(before, vllm.PREFIX_CACHE_QUERIES)
    assert queries == prompt
    assert hits == (prompt - 1) // block * block  # every full block of it, but the last token is computed anew
    assert counter(fresh_metrics, vllm.PREFIX_CACHE_HITS) == 0
    # the earlier run had computed all but the last prompt token: what the cache did not keep is redone
    assert same.engine.counters.recomputed_tokens == prompt - 1 - hits < block
    assert fresh.engine.counters.recomputed_tokens == prompt - 1


async def test_sglang_flavor_reports_the_prefix_cache_hit_rate():
    async with EmulatedPod(PodConfig(time_scale=0.001, metrics_flavor="sglang")) as pod:
        first = await create(pod, "completions", original("completions"), max_tokens=5)
        await create(pod, "completions", continuation("completions", reply_text("completions", first)),
                     max_tokens=5)
        metrics = await scrape(pod)
    assert 0 < counter(metrics, sglang.CACHE_HIT_RATE) < 1


@pytest.mark.parametrize("text, root, tokens", [
    ("Once upon a time", "Once upon a time", 0),
    ("Once upon a time" + generated_text(3), "Once upon a time", 3),
    ("Once upon a time" + generated_text(45), "Once upon a time", 45),  # the words cycle
    ("Once upon a time the" + generated_text(2), "Once upon a time the", 2),  # the longest run that starts over
    ("Once upon a time\nthe of", "Once upon a time\nthe of", 0),  # generated words follow a space
])
def test_a_prompt_splits_into_its_root_and_the_generated_tokens_it_ends_with(text, root, tokens):
    assert split_generated(text) == (root, tokens)
