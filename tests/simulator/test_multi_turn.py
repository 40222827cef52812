"""Multi-turn replays: each turn extends its conversation's prompt, and the engines' prefix caches see it."""
from __future__ import annotations

import numpy as np

from sagesched.engine import load_profile
from sagesched.simulator.cluster import PolicySpec, SimConfig, simulate
from sagesched.simulator.workload import build_conversation_workload, conversation_turns

PROFILE = load_profile("h200-qwen3-32b-96gb")


def _conversations(n: int = 3000, seed: int = 0) -> list[list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    return [[(int(rng.integers(20, 200)), int(rng.integers(50, 400))) for _ in range(rng.integers(1, 8))]
            for _ in range(n)]


def test_a_turns_prompt_is_everything_said_before_plus_its_message() -> None:
    turns = conversation_turns([[(10, 100), (20, 200), (30, 300)], [(5, 50)]], max_model_len=400)
    assert turns.prompts.tolist() == [10, 130, 5]  # the third turn would overflow 400 tokens: the chat ends
    assert turns.outputs.tolist() == [100, 200, 50]
    assert turns.keys.tolist() == [0, 0, 1]


def test_replayed_turns_keep_their_order_and_carry_their_conversations_cache_key_and_blocks() -> None:
    turns = conversation_turns(_conversations(), PROFILE.max_model_len)
    w = build_conversation_workload(turns, PROFILE, pods=4, load=0.8, requests=300, seed=1)
    assert len(w) == 300 and (np.diff(w.arrivals) >= 0).all()
    for c in set(w.conversations.tolist()):
        prompts = w.prompts[w.conversations == c]
        assert (np.diff(prompts) > 0).all()
    i = int(np.argmax(w.prompts))
    later = [j for j in range(len(w)) if w.conversations[j] == w.conversations[i] and j != i]
    assert all(w.cache_key(j) == w.cache_key(i) for j in later)
    assert all(w.prefix_blocks(i)[:len(w.prefix_blocks(j))] == w.prefix_blocks(j) for j in later)


def test_prefix_affinity_raises_the_prefix_cache_hit_rate() -> None:
    turns = conversation_turns(_conversations(), PROFILE.max_model_len)
    w = build_conversation_workload(turns, PROFILE, pods=4, load=0.8, requests=600, seed=1)
    hit = {}
    for label in ("llmd:prefix=0", "llmd", "sagesched:prefix=0", "sagesched"):
        r = simulate(w, PolicySpec.parse(label), PROFILE, turns, turns, SimConfig(pods=4))
        assert len(r.finished_ids) == len(w)
        hit[label] = r.prefix_cache_hit_tokens / r.prefix_cache_queried_tokens
    assert hit["llmd"] > 2 * hit["llmd:prefix=0"]
    assert hit["sagesched"] > 2 * hit["sagesched:prefix=0"]
