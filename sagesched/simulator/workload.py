"""What the simulator replays: requests with arrival times at a target load.

Load is relative to cluster capacity, measured rather than guessed: one engine model, saturated
with the trace's own length mix (all requests present at t=0, plain FCFS engine), completes
`capacity_per_pod` requests/s while requests still wait for it; the cluster's capacity is N times that. Arrivals are then the trace's
own inter-arrival pattern stretched or compressed to rate = load × capacity (burstiness preserved),
or synthetic Poisson / bursty (gamma inter-arrivals, CV 4) at that rate.

A multi-turn workload replays conversations turn by turn: turn k+1's prompt is turn k's prompt and
answer plus the next user message, so prefixes repeat. Conversations start as a Poisson process; a
user sends the next turn after reading the answer (its length at a nominal decode speed) and a
think time. Arrivals are fixed in advance (open loop): at high load a turn may arrive before the
previous answer is done, and then finds nothing cached.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sagesched.engine import Engine, EngineRequest, StepTimeProfile
from sagesched.scheduling.affinity import BLOCK_CHARS, CHARS_PER_TOKEN, MAX_BLOCKS
from sagesched.traces import Trace

ARRIVALS = ("trace", "poisson", "bursty")
BURSTY_CV = 4.0
CAPACITY_SAMPLE = 3000
SATURATION_PROBE_S = 0.5  # engine seconds between checks of its waiting queue
SATURATED_MIN_DONE = 100  # completions needed for a saturated rate
THINK_S = 15.0  # mean think time between reading an answer and sending the next turn
READ_S_PER_TOKEN = 0.03  # an answer streams at a nominal ~33 tokens/s before the user reads it
WARM_S = 300.0  # conversations start this long before the first replayed arrival


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
    conversations: np.ndarray | None = None  # multi-turn: the conversation each request is a turn of

    def __len__(self) -> int:
        return len(self.arrivals)

    def cache_key(self, i: int) -> str:
        """Request i's prefix-cache identity at the engine: its conversation's, so a turn finds the
        previous turn's prompt and answer cached; otherwise its own (a continuation finds itself)."""
        return str(i) if self.conversations is None else f"conv-{self.conversations[i]}"

    def prefix_blocks(self, i: int) -> tuple[int, ...]:
        """What the router would hash from request i's prompt text: one id per whole block of
        characters, unique to its conversation and depth (the text itself is not replayed); none
        outside multi-turn workloads (every prompt differs)."""
        if self.conversations is None:
            return ()
        first = int(self.conversations[i]) * MAX_BLOCKS
        return tuple(range(first, first + min(int(self.prompts[i]) * CHARS_PER_TOKEN // BLOCK_CHARS, MAX_BLOCKS)))


def build_workload(
    replay: Trace, profile: StepTimeProfile, pods: int, load: float, mode: str = "trace", seed: int = 0
) -> Workload:
    rate = load * pods * capacity_per_pod(profile, replay, seed)
    prompts, outputs = fit_lengths(replay.prompts, replay.outputs, profile.max_model_len)
    return Workload(replay.name, arrival_times(replay, rate, mode, seed), prompts, outputs, load, rate, replay)


Conversation = list[tuple[int, int]]  # (user message tokens, answer tokens) per turn


def conversation_turns(conversations: list[Conversation], max_model_len: int) -> Trace:
    """One request per turn, in conversation order: the prompt is everything said before plus the
    user's message; `keys` is the conversation's index. A conversation ends before the turn that
    would overflow the context window (clients would cut old turns, and the prefix with them)."""
    prompts, outputs, keys = [], [], []
    for c, turns in enumerate(conversations):
        context = 0
        for user, answer in turns:
            if context + user + answer > max_model_len:
                break
            prompts.append(context + user)
            outputs.append(answer)
            keys.append(c)
            context += user + answer
    n = len(prompts)
    return Trace("multi-turn", np.zeros(n), np.array(prompts, np.int64), np.array(outputs, np.int64),
                 keys=np.array(keys, np.int64))


def build_conversation_workload(turns: Trace, profile: StepTimeProfile, pods: int, load: float, requests: int,
                                seed: int = 0) -> Workload:
    """The first `requests` turns after time 0 of `turns` (from `conversation_turns`) replayed at
    `load`, in arrival order. Conversations start from WARM_S before 0, so the arrivals run at the
    steady rate from the first one on (many conversations are under way), not ramping up."""
    rate = load * pods * capacity_per_pod(profile, turns, seed)
    rng = np.random.default_rng(seed)
    conv = turns.keys
    first = np.r_[True, conv[1:] != conv[:-1]]
    n_conv = int(first.sum())
    starts = np.cumsum(rng.exponential(len(turns) / (rate * n_conv), n_conv)) - WARM_S
    gaps = np.r_[0.0, turns.outputs[:-1] * READ_S_PER_TOKEN] + rng.exponential(THINK_S, len(turns))
    gaps[first] = 0.0
    t = starts[np.cumsum(first) - 1] + _cumsum_within(gaps, first)
    order = np.argsort(t, kind="stable")
    order = order[t[order] >= 0][:requests]
    if len(order) < requests or t[order[-1]] > starts[-1]:
        raise ValueError(f"{n_conv} conversations are too few for {requests} requests at {rate:.1f}/s")
    replay = Trace(turns.name, t[order], turns.prompts[order], turns.outputs[order], keys=conv[order])
    return Workload(replay.name, replay.arrivals, replay.prompts, replay.outputs, load, rate, replay, replay.keys)


def _cumsum_within(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Running sums of `values` restarting where `first` is set."""
    total = np.cumsum(values)
    return total - (total - values)[first][np.cumsum(first) - 1]
