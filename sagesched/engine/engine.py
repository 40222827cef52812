"""An iteration-level model of a continuous-batching engine with vLLM v1's scheduler.

Each `step()` is one engine iteration: schedule under a token budget (running requests first,
chunked prefill, then waiting ones while sequences, budget and KV blocks allow), preempt by
recompute when a running request cannot get a block, then take the profile's step time and sample one
token for every request whose computation caught up. `advance()` runs many iterations and jumps
over stretches of pure decode in one vectorised move; its results equal repeated `step()` exactly
(same floating-point additions, in the same order), which `tests/engine` checks on random workloads.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from sagesched.engine.kv_cache import KVCache, blocks_for
from sagesched.engine.profile import StepTimeProfile
from sagesched.engine.queues import make_queue
from sagesched.engine.request import EngineRequest, FinishReason, RequestStatus

# A decode run this short is timed with scalar float additions, longer ones with numpy; both add the
# same numbers in the same order, so the choice changes only speed.
SCALAR_RUN = 24


@dataclass
class StepOutcome:
    """What one iteration (or, from `advance`, a run of them) did. Times live on the requests:
    `first_token_time`, `last_token_time`, `finish_time`."""

    duration: float = 0.0
    steps: int = 0
    tokens: dict[str, int] = field(default_factory=dict)  # request id -> tokens emitted
    finished: list[EngineRequest] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    first_tokens: list[str] = field(default_factory=list)

    def absorb(self, other: "StepOutcome") -> None:
        self.duration += other.duration
        self.steps += other.steps
        for rid, n in other.tokens.items():
            self.tokens[rid] = self.tokens.get(rid, 0) + n
        self.finished.extend(other.finished)
        self.preempted.extend(other.preempted)
        self.first_tokens.extend(other.first_tokens)


class _DecodeRun(NamedTuple):
    """The running set while it only decodes together, moved on by `_jump` instead of recounted
    from the requests at every event."""

    computed: np.ndarray  # tokens computed, per running request
    left: int  # fewest tokens any running request has left to generate
    context: int  # prompt and generated tokens of them all
    ids: list[str]  # their request ids, in running order (the token report's keys)


@dataclass
class EngineCounters:
    """Monotone totals, named after the vLLM counters they feed."""

    prompt_tokens: int = 0  # counted once per request, at its first token (recompute not counted)
    recomputed_tokens: int = 0  # tokens computed again after a preemption or a resume (cache misses)
    generation_tokens: int = 0
    preemptions: int = 0
    steps: int = 0
    busy_seconds: float = 0.0
    finished: Counter = field(default_factory=Counter)  # finish reason -> requests


class Engine:
    """One pod's engine. Deterministic: the same calls give the same results."""

    def __init__(self, profile: StepTimeProfile, scheduling: str = "fcfs", seed: int = 0) -> None:
        if profile.kv_capacity_tokens < profile.max_model_len:
            raise ValueError("KV cache smaller than max_model_len: a lone request could never finish")
        self.profile = profile
        self.scheduling = scheduling
        self.seed = seed
        # for callers that draw request lengths next to the engine (the emulator): one seed per pod
        self.rng = np.random.default_rng(seed)
        self.now = 0.0
        self.kv = KVCache(profile.num_gpu_blocks, profile.block_size)
        self.waiting = make_queue(scheduling)
        self.running: list[EngineRequest] = []
        self.counters = EngineCounters()
        self._next_seq = 0
        self._all_decoding = False  # every running request decodes next step (set by _apply)
        self._decoding: _DecodeRun | None = None  # None: to be counted again from `running`

    # --- read-only state ----------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_usage(self) -> float:
        return self.kv.usage

    # --- requests -----------------------------------------------------------------------------------
    def add_request(self, req: EngineRequest) -> None:
        """Queue `req`. An idle engine's clock jumps to the arrival; a busy one takes it at its
        next iteration (arrivals earlier than `now` simply waited for the iteration in flight)."""
        room = self.profile.max_model_len - req.prompt_tokens
        if req.prompt_tokens < 1 or room < 1:
            raise ValueError(f"prompt of {req.prompt_tokens} tokens does not fit max_model_len")
        if not self.has_work:
            self.now = max(self.now, req.arrival)
        req.limit = max(1, min(req.output_tokens, self._cap(req)))
        req.status = RequestStatus.WAITING
        req._seq = self._next_seq
        self._next_seq += 1
        self.waiting.push(req)
        self._all_decoding = False

    def abort(self, request_id: str) -> EngineRequest | None:
        """Drop a request wherever it is; frees its blocks. Returns it, or None if unknown."""
        req = self.waiting.remove(request_id)
        if req is None:
            req = next((r for r in self.running if r.request_id == request_id), None)
            if req is None:
                return None
            self.running.remove(req)
            self._decoding = None
        self._finish(req, FinishReason.ABORT)
        return req

    def _cap(self, req: EngineRequest) -> int:
        """Most tokens `req` may generate: max_tokens, and the context window."""
        room = self.profile.max_model_len - req.prompt_tokens
        return room if req.max_tokens is None else min(room, req.max_tokens)

    def _complete(self, req: EngineRequest, out: StepOutcome) -> None:
        """`req` generated its last token. As in vLLM, hitting a cap is 'length' even when the
        model would have stopped right there."""
        self._finish(req, FinishReason.STOP if req.output_tokens < self._cap(req) else FinishReason.LENGTH)
        out.finished.append(req)

    def idle_until(self, t: float) -> None:
        """Let time pass outside iterations (idle pod, host overhead): the clock moves to `t`."""
        self.now = max(self.now, t)

    # --- one iteration ------------------------------------------------------------------------------
    def step(self) -> StepOutcome:
        self._decoding = None
        batch, preempted = self._schedule()
        duration = self._duration(batch)
        self.now += duration
        out = StepOutcome(duration=duration, steps=1 if batch else 0, preempted=preempted)
        self._apply(batch, out)
        return out

    def _schedule(self) -> tuple[dict[EngineRequest, int], list[str]]:
        budget = self.profile.max_num_batched_tokens
        bs = self.kv.block_size
        batch: dict[EngineRequest, int] = {}
        preempted: list[str] = []
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            n = req.prompt_tokens + req.generated - req.num_computed_tokens
            n = n if n < budget else budget  # min(), without the call: this loop runs per request per step
            if req.num_computed_tokens + n <= req.num_blocks * bs:  # fits its blocks: the hot path
                batch[req] = n
                budget -= n
                i += 1
                continue
            i, budget, scheduled = self._allocate_running(req, n, i, budget, batch, preempted)
            if not scheduled:
                break
        if not preempted:  # vLLM admits nothing in an iteration that had to preempt
            self._admit_waiting(budget, batch)
        return batch, preempted

    def _allocate_running(
        self, req: EngineRequest, n: int, i: int, budget: int,
        batch: dict[EngineRequest, int], preempted: list[str],
    ) -> tuple[int, int, bool]:
        """Get blocks for `req`'s `n` tokens, preempting victims until they fit or `req` itself is
        the victim. Returns (next index, budget left, whether `req` was scheduled)."""
        while not self.kv.allocate(req, req.num_computed_tokens + n):
            victim = self._pick_victim()
            vi = self.running.index(victim)
            self.running.pop(vi)
            budget += batch.pop(victim, 0)  # a victim scheduled earlier this step gives its share back
            self._preempt(victim)
            preempted.append(victim.request_id)
            if victim is req:
                return i, budget, False
            if vi < i:
                i -= 1
        batch[req] = n
        return i + 1, budget - n, True

    def _pick_victim(self) -> EngineRequest:
        if self.scheduling == "priority":
            return max(self.running, key=lambda r: (r.priority, r.arrival))
        return self.running[-1]  # the most recently scheduled

    def _preempt(self, req: EngineRequest) -> None:
        self.kv.free(req)
        req.previously_computed = req.num_computed_tokens
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.counters.preemptions += 1
        self.waiting.push_preempted(req)

    def _admit_waiting(self, budget: int, batch: dict[EngineRequest, int]) -> None:
        while budget > 0 and len(self.running) < self.profile.max_num_seqs:
            req = self.waiting.peek()
            if req is None:
                return
            hit = self.kv.cached_blocks(req.cache_key, req.num_tokens) if req.num_blocks == 0 else 0
            start = hit * self.kv.block_size or req.num_computed_tokens
            n = min(req.num_tokens - start, budget)
            if blocks_for(start + n, self.kv.block_size) - req.num_blocks > self.kv.free_blocks:
                return
            self.waiting.pop()
            self._claim_prefix(req, hit)
            self.kv.allocate(req, start + n)
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_time is None:
                req.first_scheduled_time = self.now
            self.running.append(req)
            batch[req] = n
            budget -= n

    def _claim_prefix(self, req: EngineRequest, hit: int) -> None:
        """Take the cached prefix found for `req`; what an earlier run computed beyond it is
        computed again (the recompute cost of preemption)."""
        if req.cache_key is not None and req.num_blocks == 0:
            self.kv.claim(req, hit)
        if req.previously_computed:
            self.counters.recomputed_tokens += max(req.previously_computed - req.num_computed_tokens, 0)
            req.previously_computed = 0

    def _duration(self, batch: dict[EngineRequest, int]) -> float:
        batched = 0
        context = 0
        pairs = 0
        for req, n in batch.items():
            batched += n
            tokens = req.prompt_tokens + req.generated
            if n == 1 and req.generated > 0 and req.num_computed_tokens == tokens - 1:  # decode
                context += tokens
            else:
                pairs += n * (req.num_computed_tokens + n / 2.0)
        return self.profile.step_seconds(batched, len(batch), context, pairs)

    def _apply(self, batch: dict[EngineRequest, int], out: StepOutcome) -> None:
        """Advance computation, sample a token where the cache caught up, retire finished."""
        self.counters.steps += out.steps
        self.counters.busy_seconds += out.duration
        now, tokens = self.now, out.tokens
        decoding = emitted = 0
        for req, n in batch.items():
            computed = req.num_computed_tokens + n
            req.num_computed_tokens = computed
            if computed < req.prompt_tokens + req.generated:
                continue  # a prefill chunk: nothing sampled yet
            req.generated += 1
            req.last_token_time = now
            tokens[req.request_id] = 1
            emitted += 1
            if req.first_token_time is None:
                self._first_token(req, out)
            if req.generated >= req.limit:
                self._complete(req, out)
            else:
                decoding += 1
        self.counters.generation_tokens += emitted
        if out.finished:
            self.running = [r for r in self.running if r.status is RequestStatus.RUNNING]
        self._all_decoding = decoding == len(self.running) > 0

    def _first_token(self, req: EngineRequest, out: StepOutcome) -> None:
        req.first_token_time = self.now
        out.first_tokens.append(req.request_id)
        self.counters.prompt_tokens += req.prompt_tokens

    def _finish(self, req: EngineRequest, reason: str) -> None:
        self.kv.free(req)
        req.status = RequestStatus.FINISHED
        req.finish_time = self.now
        req.finish_reason = reason
        self.counters.finished[reason] += 1

    # --- many iterations, fast --------------------------------------------------------------------------
    def advance(self, horizon: float, stop_on_finish: bool = False) -> StepOutcome:
        """Run every iteration that starts before `now + horizon` (the last may end after it: an
        iteration is atomic), or until no work is left, or - with `stop_on_finish` - until an
        iteration finishes a request. The clock does not move while idle."""
        end = self.now + horizon
        total = StepOutcome()
        while self.has_work and self.now < end:
            k = self._decode_run_length(end)
            part = self._jump(k, end) if k > 1 else self.step()
            if total.steps == 0:
                total = part  # the common single-part case needs no merging
            else:
                total.absorb(part)
            if stop_on_finish and part.finished:
                break
            if part.steps == 0:  # nothing schedulable (cannot happen with a valid profile)
                break
        return total

    def _decode_run_length(self, end: float = math.inf) -> int:
        """How many upcoming iterations are pure decode with an identical batch: every running
        request decodes, nothing waiting can be admitted, no block allocation fails, no request
        finishes before the last of them. 0 when the next iteration is not of that kind. Capped
        at a bound on the iterations that start before `end`: `_jump` cuts the run there anyway."""
        running = self.running
        n = len(running)
        if not self._all_decoding or n == 0 or n > self.profile.max_num_batched_tokens:
            return 0
        computed, left, _, _ = self._decoding_state()
        steps_to_finish = min(left, self._steps_before(end, n))
        fit = self._steps_that_fit(computed, steps_to_finish)
        if fit == 0 or self._waiting_could_enter(computed):
            return 0
        return fit

    def _decoding_state(self) -> _DecodeRun:
        if self._decoding is None:
            running = self.running
            self._decoding = _DecodeRun(np.array([r.num_computed_tokens for r in running], np.int64),
                                        min([r.limit - r.generated for r in running]),
                                        sum([r.prompt_tokens + r.generated for r in running]),
                                        [r.request_id for r in running])
        return self._decoding

    def _steps_before(self, end: float, n: int) -> int:
        """About how many decode iterations of `n` sequences start before `end` (none is shorter
        than one with no context; two spare). Any cap on a decode run gives the same results, as
        `advance` carries on from where a run stops; this one only spares timing iterations that
        the horizon would cut off."""
        shortest = self.profile.step_seconds(n, n, 0, 0)
        if shortest <= 0 or not math.isfinite(end):
            return 2**62
        return int((end - self.now) / shortest) + 2

    def _new_blocks(self, computed: np.ndarray, steps: int) -> int:
        bs = self.kv.block_size
        return int(((computed + steps + bs - 1) // bs - (computed + bs - 1) // bs).sum())

    def _steps_that_fit(self, computed: np.ndarray, limit: int) -> int:
        """Largest m <= limit whose block growth fits in the free blocks (blocks grow monotonically,
        so binary search)."""
        free = self.kv.free_blocks
        if self._new_blocks(computed, limit) <= free:
            return limit
        lo, hi = 0, limit  # fits(lo), not fits(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._new_blocks(computed, mid) <= free:
                lo = mid
            else:
                hi = mid
        return lo

    def _waiting_could_enter(self, computed: np.ndarray) -> bool:
        """Whether the head of the queue would be admitted at the next iteration. Free blocks only
        shrink during a decode run and the budget stays put, so a head refused now stays refused."""
        n = len(self.running)
        budget = self.profile.max_num_batched_tokens - n
        head = self.waiting.peek()
        if head is None or budget <= 0 or n >= self.profile.max_num_seqs:
            return False
        bs = self.kv.block_size
        free_after_decode = self.kv.free_blocks - self._new_blocks(computed, 1)
        hit = self.kv.cached_blocks(head.cache_key, head.num_tokens, free_after_decode) if head.num_blocks == 0 else 0
        start = hit * bs or head.num_computed_tokens
        tokens = min(head.num_tokens - start, budget)
        return blocks_for(start + tokens, bs) - head.num_blocks <= free_after_decode

    def _jump(self, k: int, end: float) -> StepOutcome:
        """Apply up to `k` pure-decode iterations at once (fewer if the horizon comes first)."""
        n = len(self.running)
        run = self._decoding_state()
        timed = self._time_short_run if k <= SCALAR_RUN else self._time_long_run
        k, self.now, busy, duration = timed(n, run.context, k, end)
        out = StepOutcome(duration=duration, steps=k)
        self.counters.steps += k
        self.counters.busy_seconds = busy
        run = _DecodeRun(run.computed + k, run.left - k, run.context + n * k, run.ids)
        self._grow_decodes(k, out, run)
        if out.finished:
            self.running = [r for r in self.running if r.status is RequestStatus.RUNNING]
            self._all_decoding = bool(self.running)
            self._decoding = None
        else:
            self._decoding = run
        return out

    def _time_short_run(self, n: int, context0: int, k: int, end: float) -> tuple[int, float, float, float]:
        """(iterations that start before `end`, at most k; clock, busy seconds and duration after
        them), summed one iteration at a time exactly as `step()` would."""
        now, busy, duration, context, taken = self.now, self.counters.busy_seconds, 0.0, context0, 0
        while taken < k and now < end:
            d = self.profile.step_seconds(n, n, context, 0)
            now += d
            busy += d
            duration = d if taken == 0 else duration + d
            context += n
            taken += 1
        return taken, now, busy, duration

    def _time_long_run(self, n: int, context0: int, k: int, end: float) -> tuple[int, float, float, float]:
        """`_time_short_run` in numpy: cumulative sums are sequential, so the same additions."""
        contexts = context0 + n * np.arange(k, dtype=np.int64)
        durations = self.profile.step_seconds(n, n, contexts, 0)  # vectorised, same arithmetic
        clock = np.cumsum(np.concatenate(([self.now], durations)))
        k = min(k, int(np.searchsorted(clock[:k], end, side="left")))
        busy = np.cumsum(np.concatenate(([self.counters.busy_seconds], durations[:k])))
        return k, float(clock[k]), float(busy[-1]), float(np.cumsum(durations[:k])[-1])

    def _grow_decodes(self, k: int, out: StepOutcome, run: _DecodeRun) -> None:
        """Every running request decoded `k` tokens, reaching `run`. This runs for every request at
        every event of a simulation, so the block counts come from numpy and the loop is kept to
        plain stores (block growth is summed and taken from the cache once; integer sums commute)."""
        now = self.now
        running = self.running
        computed = run.computed
        held = -(-computed // self.kv.block_size)  # blocks_for, per request
        grown = 0
        for req, c, h in zip(running, computed.tolist(), held.tolist()):
            req.num_computed_tokens = c
            req.generated += k
            grown += h - req.num_blocks
            req.num_blocks = h
            req.last_token_time = now
        out.tokens = dict.fromkeys(run.ids, k)
        self.kv.take(grown)  # allocated before the last iteration's finishes free theirs, as in step()
        for req in [r for r in running if r.generated >= r.limit] if run.left <= 0 else ():
            self._complete(req, out)
        self.counters.generation_tokens += k * len(running)
