"""Small engine profiles and workload helpers: tiny KV caches make preemption easy to provoke."""
from __future__ import annotations

import numpy as np
import pytest

from sagesched.engine import Engine, EngineRequest, StepTimeProfile, load_profile


def small_profile(**overrides: object) -> StepTimeProfile:
    base = dict(block_size=4, num_gpu_blocks=80, max_num_seqs=8, max_num_batched_tokens=64,
                max_model_len=256)
    base.update(overrides)
    return load_profile().with_overrides(**base)


def random_workload(seed: int, n: int, max_prompt: int = 120, max_output: int = 100,
                    spacing: float = 0.01, priorities: int = 1, keyed: bool = False) -> list[EngineRequest]:
    """Random requests; `keyed` gives each a prefix-cache key, so preempted ones can find their blocks."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(spacing, n))
    return [
        EngineRequest(
            request_id=f"r{i}",
            prompt_tokens=int(rng.integers(1, max_prompt + 1)),
            output_tokens=int(rng.integers(1, max_output + 1)),
            max_tokens=int(rng.integers(1, max_output + 1)) if rng.random() < 0.3 else None,
            priority=int(rng.integers(0, priorities)),
            arrival=float(arrivals[i]),
            cache_key=f"r{i}" if keyed else None,
        )
        for i in range(n)
    ]


def run_by_steps(engine: Engine, requests: list[EngineRequest]) -> None:
    """Reference driver: one `step()` at a time, adding each request at the first iteration
    boundary at or after its arrival."""
    for req in requests:
        while engine.has_work and engine.now < req.arrival:
            engine.step()
        engine.add_request(req)
    while engine.has_work:
        engine.step()


def run_by_advance(engine: Engine, requests: list[EngineRequest], stop_on_finish: bool = False) -> None:
    """The simulator's driver: `advance` to each arrival, then add it."""
    for req in requests:
        while engine.has_work and engine.now < req.arrival:
            engine.advance(req.arrival - engine.now, stop_on_finish=stop_on_finish)
        engine.add_request(req)
    while engine.has_work:
        engine.advance(1e9, stop_on_finish=stop_on_finish)


@pytest.fixture
def tiny() -> StepTimeProfile:
    return small_profile()
