"""Our order, in the engine's priority field, so the engine's own queue agrees with ours.

Each engine's adapter says which way its field runs (vLLM lower first, SGLang by default higher
first); an engine the registry does not know, like the simulator's engine model ("sim"), runs lower
first as vLLM does. The value is the queue's time-invariant order key (ln rank + aging·arrival, see
queue.py): requests dispatched at different times still compare as our queue would compare them,
which matters when the engine picks whom to preempt as KV runs out. ×1000 keeps ranks 0.1% apart
distinct in an int.
"""
from __future__ import annotations

from sagesched.engines import ENGINES

LOWER_FIRST = {name: engine.lower_priority_first for name, engine in ENGINES.items()}
_MAX = 2**31 - 1
RESOLUTION = 1000.0


def engine_priority(order_key: float, engine: str = "vllm") -> int:
    value = int(max(-_MAX, min(_MAX, round(order_key * RESOLUTION))))
    return value if LOWER_FIRST.get(engine, True) else -value
