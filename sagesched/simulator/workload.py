"""What the simulator replays: requests with arrival times at a target load.

Load is relative to cluster capacity, measured rather than guessed: one engine model, saturated
with the trace's own length mix (all requests present at t=0, plain FCFS engine), completes
`capacity_per_pod` requests/s while requests still wait for it; the cluster's capacity is N times that. Arrivals are then the trace's
own inter-arrival pattern stretched or compressed to rate = load × capacity (burstiness preserved),
or synthetic Poisson / bursty (gamma inter-arrivals, CV 4) at that rate.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sagesched.engine import Engine, EngineRequest, StepTimeProfile
from sagesched.traces import Trace

ARRIVALS = ("trace", "poisson", "bursty")
BURSTY_CV = 4.0
CAPACITY_SAMPLE = 3000
SATURATION_PROBE_S = 0.5  # engine seconds between checks of its waiting queue
SATURATED_MIN_DONE = 100  # completions needed for a saturated rate


def fit_lengths(prompts: np.ndarray, outputs: np.ndarray, max_model_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the true output; cut prompts that would not leave it room in the context window (a
    few conv prompts exceed the 8k window of the shipped profile)."""
    outputs = np.minimum(outputs, max_model_len // 2)
    return np.minimum(prompts, max_model_len - outputs), outputs


@lru_cache(maxsize=16)
def _capacity(profile_json: str, prompts: tuple[int, ...], outputs: tuple[int, ...]) -> float:
    """Completions per second while the engine still has requests waiting (it is saturated then);
    the drain at the end, where the last long requests run in a thin batch, is not capacity — with
    heavy tails it would halve the estimate and put "load 1.2" below saturation. A sample too small
    to saturate the engine falls back to the whole run."""
    engine = Engine(StepTimeProfile(**json.loads(profile_json)), "fcfs", seed=0)
    for i, (p, o) in enumerate(zip(prompts, outputs)):
        engine.add_request(EngineRequest(str(i), p, o))
    done = 0
    while engine.has_work and engine.num_waiting > 0:
        done += len(engine.advance(SATURATION_PROBE_S).finished)
    if done < SATURATED_MIN_DONE:
        while engine.has_work:
            engine.advance(60.0)
        return len(prompts) / engine.now
    return done / engine.now


def capacity_per_pod(profile: StepTimeProfile, trace: Trace, seed: int = 0) -> float:
    """Saturated requests/s of one pod on a random sample of the trace's requests."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(trace), size=min(CAPACITY_SAMPLE, len(trace)), replace=False))
    prompts, outputs = fit_lengths(trace.prompts[idx], trace.outputs[idx], profile.max_model_len)
    return _capacity(profile.to_json(), tuple(prompts.tolist()), tuple(outputs.tolist()))


def arrival_times(trace: Trace, rate: float, mode: str, seed: int) -> np.ndarray:
    n = len(trace)
    rng = np.random.default_rng(seed)
    if mode == "trace":
        t = trace.arrivals - trace.arrivals[0]
        span = t[-1] if n > 1 and t[-1] > 0 else 1.0
        return t * ((n - 1) / rate) / span
    if mode == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    elif mode == "bursty":
        shape = 1.0 / BURSTY_CV**2
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    else:
        raise ValueError(f"unknown arrival mode {mode!r}; expected one of {ARRIVALS}")
    return np.cumsum(gaps) - gaps[0]


@dataclass(frozen=True)
class Workload:
    trace: str
    arrivals: np.ndarray
    prompts: np.ndarray
    outputs: np.ndarray
    load: float
    rate: float  # requests/s offered
    source: Trace | None = None  # the replayed trace, index-aligned (its predictions, if any)

    def __len__(self) -> int:
        return len(self.arrivals)


def build_workload(
    replay: Trace, profile: StepTimeProfile, pods: int, load: float, mode: str = "trace", seed: int = 0
) -> Workload:
    rate = load * pods * capacity_per_pod(profile, replay, seed)
    prompts, outputs = fit_lengths(replay.prompts, replay.outputs, profile.max_model_len)
    return Workload(replay.name, arrival_times(replay, rate, mode, seed), prompts, outputs, load, rate, replay)
