"""Our order, in the engine's priority field, so the engine's own queue agrees with ours.

vLLM serves lower `priority` first, SGLang (by default) higher first. The aged rank is in
pod-seconds; milliseconds resolution keeps distinct ranks distinct in an int.
"""
from __future__ import annotations

LOWER_FIRST = {"vllm": True, "sglang": False, "sim": True}
_MAX = 2**31 - 1


def engine_priority(aged_rank_s: float, engine: str = "vllm") -> int:
    value = int(max(-_MAX, min(_MAX, round(aged_rank_s * 1000.0))))
    return value if LOWER_FIRST.get(engine, True) else -value
