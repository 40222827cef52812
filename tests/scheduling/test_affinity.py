"""Prefix-cache affinity: block hashes of prompt text, the per-pod index, and the policies that use it."""
from __future__ import annotations

from sagesched.distribution import LengthDistribution, grid
from sagesched.engine import load_profile
from sagesched.scheduling import Admission, Scheduler
from sagesched.scheduling.affinity import BLOCK_CHARS, MAX_BLOCKS, PrefixIndex, prefix_blocks
from sagesched.scheduling.picker import PickContext
from sagesched.scheduling.plugins import PluginClock
from sagesched.scheduling.policies import make_policy
from sagesched.scheduling.types import PodView, SchedRequest

PROFILE = load_profile("h100-llama3-8b")
CONTEXT = "".join(f"turn {i}: some earlier message and its answer. " for i in range(40))


def _req(text: str, rid: str = "r") -> SchedRequest:
    return SchedRequest(rid, "m", len(text) // 4, 0.0, LengthDistribution.flat(grid()), prefix_blocks=prefix_blocks(text))


def _pods(n: int, profile=PROFILE) -> list[PodView]:
    return [PodView(f"pod-{k}", ("m",), profile) for k in range(n)]


def test_prompts_share_block_hashes_exactly_as_far_as_they_share_whole_leading_blocks() -> None:
    a, b = prefix_blocks(CONTEXT + "next question A"), prefix_blocks(CONTEXT + "another question B")
    shared = len(CONTEXT) // BLOCK_CHARS
    assert a[:shared] == b[:shared]
    assert len(a) == (len(CONTEXT) + 15) // BLOCK_CHARS  # a partial last block is not hashed
    assert not set(prefix_blocks("x" + CONTEXT)) & set(a)  # chained: one early difference changes every block
    assert len(prefix_blocks("y" * BLOCK_CHARS * (MAX_BLOCKS + 10))) == MAX_BLOCKS
    assert prefix_blocks("short") == ()


def test_a_pods_score_is_the_share_of_leading_blocks_it_was_sent() -> None:
    index, pods = PrefixIndex(), _pods(3)
    index.record(_req(CONTEXT), pods[1])
    follow_up = _req(CONTEXT + "and now something longer than one block of characters, " * 3)
    scores = index.score(follow_up, pods)
    assert scores[0] == scores[2] == 0.0
    assert scores[1] == len(prefix_blocks(CONTEXT)) / len(follow_up.prefix_blocks)
    assert index.score(_req("unrelated " * 40), pods) == [0.0, 0.0, 0.0]
    assert index.score(_req(""), pods) == [0.0, 0.0, 0.0]


def test_a_full_pod_forgets_tail_blocks_first_as_its_engine_would() -> None:
    tiny = PROFILE.with_overrides(num_gpu_blocks=2)  # 32 tokens: ~2 blocks of characters
    index, (pod,) = PrefixIndex(), _pods(1, tiny)
    first = _req(CONTEXT)
    index.record(first, pod)
    assert index.score(first, [pod])[0] == 2 / len(first.prefix_blocks)
    index.record(_req("other prompt " * 30), pod)
    assert index.score(first, [pod]) == [0.0]


def test_llmd_sends_a_conversations_next_turn_to_the_pod_that_served_it() -> None:
    for weight, expect_same in ((3.0, True), (0.0, False)):
        llmd, pods = make_policy("llmd", prefix_weight=weight), _pods(4)
        ctx = _ctx(llmd)
        first = llmd.choose(_req(CONTEXT), pods, ctx)
        ctx.pick.dispatched(_req(CONTEXT), first)
        ctx.tick += 1  # round-robin among equals moves on
        nxt = llmd.choose(_req(CONTEXT + "a follow-up question"), pods, ctx)
        assert (nxt is first) == expect_same


def test_sagesched_weighs_affinity_against_free_kv() -> None:
    pods = _pods(2)
    pods[1].kv_usage = 0.3
    for weight, expect in ((0.0, "pod-0"), (1.0, "pod-1")):
        policy = make_policy("sagesched", prefix_weight=weight)
        ctx = _ctx(policy)
        ctx.pick.dispatched(_req(CONTEXT), pods[1])
        assert policy.choose(_req(CONTEXT + "follow-up"), pods, ctx).name == expect


def _ctx(policy) -> PickContext:
    return PickContext(policy.default_pick(), lambda p: 1.0 - p.kv_usage, 0, PluginClock())


def test_only_picks_with_the_prefix_scorer_ask_for_prompt_blocks():
    """The router hashes prompts (microseconds per long prompt) only for a pick that reads them."""
    from sagesched.scheduling.picker import Pick
    from sagesched.scheduling.policies import make_policy

    assert make_policy("llmd").default_pick().reads_prefix_blocks
    assert make_policy("sagesched").default_pick().reads_prefix_blocks
    assert not make_policy("fcfs").default_pick().reads_prefix_blocks
    assert not Pick.weighted(("kv", 1.0), ("prefix", 0.0)).reads_prefix_blocks  # a zero weight is not run


def _turns(affinity_buffer: int, follow_up: str) -> str:
    """A conversation's first turn waits at pod a (its engine queue at the buffer of 1); where does the
    next request go, with pod b empty?"""
    sched = Scheduler("sagesched", Admission(engine_buffer=1, prefill_tokens=0, affinity_buffer=affinity_buffer))
    a, b = sched.view("a", ("m",), PROFILE), sched.view("b", ("m",), PROFILE)
    sched.submit(_req(CONTEXT, "turn-1"), 0.0)
    assert [p.name for _, p in sched.dispatch([a], 0.0)] == ["a"] and a.waiting == 1
    sched.submit(_req(follow_up, "turn-2"), 1.0)
    ((_, pod),) = sched.dispatch([a, b], 1.0)
    return pod.name


def test_a_pod_caching_the_prompt_may_queue_one_more_for_it():
    assert _turns(1, CONTEXT + "and a short follow-up question") == "a"  # its prefix is cached there
    assert _turns(0, CONTEXT + "and a short follow-up question") == "b"  # without the allowance: the free pod
    assert _turns(1, "an unrelated prompt, long enough to have blocks of its own " * 4) == "b"
