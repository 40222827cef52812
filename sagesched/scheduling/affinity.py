"""Prefix-cache affinity, approximate and router-side (after llm-d's prefix-cache scorer).

Engines cache the KV of prompts they have computed (vLLM's automatic prefix caching), so a request
whose prompt starts like one a pod served recently prefills only the rest there. The router cannot
see those caches; it remembers instead what it sent where. A prompt is cut into fixed-size blocks of
characters (not tokens: no tokenising on the hot path), each block's hash chained to the one before,
so one hash names the whole prefix up to it and two prompts share a block hash only where they share
everything before it. Each pod keeps the hashes of the prompts recently dispatched to it, least
recently used first, bounded by what its KV cache could hold; a pod's score for a new request is the
share of the request's leading blocks it holds.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from sagesched.scheduling.types import PodView, SchedRequest

BLOCK_CHARS = 64  # ~16 tokens at ~4 characters a token: vLLM's default KV block
CHARS_PER_TOKEN = 4  # the router's own estimate (router/parse.py), to size a pod's memory in blocks
MAX_BLOCKS = 256  # a prompt's first 16k characters decide; beyond that, hashing costs more than it tells


def prefix_blocks(text: str) -> tuple[int, ...]:
    """Chained hashes of `text`'s whole leading blocks (a partial last block is never cached whole
    by an engine either). Hashes are process-local (Python salts str hashes): the index lives in one
    router and is never shared."""
    out, h = [], 0
    for start in range(0, min(len(text), BLOCK_CHARS * MAX_BLOCKS) - BLOCK_CHARS + 1, BLOCK_CHARS):
        h = hash((h, text[start:start + BLOCK_CHARS]))
        out.append(h)
    return tuple(out)


class PrefixIndex:
    """Which pods were recently sent which prefix blocks: per pod an LRU of block hashes, and per
    block the pods holding it (scoring walks the request's blocks, not the pods' memories)."""

    def __init__(self) -> None:
        self._held: dict[str, OrderedDict[int, None]] = {}
        self._holders: dict[int, set[str]] = {}
        # the last request's matched depths, valid until the next `record`: one placement asks for
        # them up to three times (admission gates, the scorer, the chosen pod's load)
        self._records = 0
        self._last: tuple[SchedRequest, int, dict[str, int]] | None = None

    def record(self, req: SchedRequest, pod: PodView) -> None:
        """`req` went to `pod`: its prompt's blocks are now in that pod's cache (until it fills up)."""
        if not req.prefix_blocks:
            return
        self._records += 1
        held = self._held.setdefault(pod.name, OrderedDict())
        for h in reversed(req.prefix_blocks):  # head blocks most recent: tails go first, as in the engine
            if h in held:
                held.move_to_end(h)
            else:
                held[h] = None
                self._holders.setdefault(h, set()).add(pod.name)
        capacity = pod.profile.kv_capacity_tokens * CHARS_PER_TOKEN // BLOCK_CHARS
        while len(held) > capacity:
            self._drop(pod.name, held.popitem(last=False)[0])

    def _drop(self, pod: str, h: int) -> None:
        holders = self._holders[h]
        holders.discard(pod)
        if not holders:
            del self._holders[h]

    def score(self, req: SchedRequest, pods: Sequence[PodView]) -> list[float]:
        """Per pod, the share of the request's leading blocks it holds (0 for a prompt without blocks)."""
        blocks = req.prefix_blocks
        if not blocks:
            return [0.0] * len(pods)
        matched = self._matched(req)
        return [matched.get(p.name, 0) / len(blocks) for p in pods]

    def _matched(self, req: SchedRequest) -> dict[str, int]:
        """Per pod, how many of the request's leading blocks it holds (walked once per request and
        index state)."""
        last = self._last
        if last is not None and last[0] is req and last[1] == self._records:
            return last[2]
        matched: dict[str, int] = {}
        for depth, h in enumerate(req.prefix_blocks):
            holders = self._holders.get(h)
            if not holders:
                break
            for name in holders:
                if matched.get(name, 0) == depth:  # held every block before this one too
                    matched[name] = depth + 1
        self._last = (req, self._records, matched)
        return matched
