"""An iteration-level model of a continuous-batching engine with vLLM v1's scheduler.

Each `step()` is one engine iteration: schedule under a token budget (running requests first,
chunked prefill, then waiting ones while sequences, budget and KV blocks allow), preempt by
recompute when a running request cannot get a block, then take the profile's step time and sample one
token for every request whose computation caught up. `advance()` runs many iterations and jumps
over stretches of pure decode in one vectorised move; its results equal repeated `step()` exactly
(same floating-point additions, in the same order), which `tests/engine` checks on random workloads.
While the running requests decode together, `advance` moves only the run's aggregates (an iteration
counter, the fewest tokens left, the context, the KV blocks the next iterations open), so an event
costs O(block size) rather than O(batch); an iteration that admits requests beside the run moves
its members the same way, and the admitted join it. The requests' own counts catch up when the run
ends, or on `settle()`, and `progress()` reports them meanwhile.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

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


class _DecodeRun:
    """The running set while it only decodes together, kept lazily: the requests' own counts stay
    as they were when they joined the run and `tick` says how many iterations have passed since the
    run began, so an event costs O(block size), not O(batch). Members are the first `len(ids)`
    running requests (admission appends). `Engine._settle` writes the counts back when the run
    ends (a finish, a step, an abort) or a caller asks (`Engine.settle`)."""

    __slots__ = ("tick", "left", "context", "ids", "generated", "joined", "need", "per_cycle", "last_token_time",
                 "report", "bound", "_unit")

    def __init__(self, left: int, context: int, ids: list[str], generated: list[int], need: list[int]) -> None:
        self.tick = 0  # iterations applied since the run began
        self.left = left  # fewest tokens any running request has left to generate
        self.context = context  # prompt and generated tokens of them all
        self.ids = ids  # their request ids, in running order (the token report's keys)
        self.generated = generated  # their generated tokens less the tick they joined at: now, plus `tick`
        self.joined = [0] * len(ids)  # the tick each joined at
        # need[j]: requests that cross into a new KV block at the run's iterations T with T % block_size == j
        self.need = need
        self.per_cycle = sum(need)  # blocks per `block_size` iterations: one for each request
        self.last_token_time = 0.0
        self.report: dict[str, int] | None = None  # the token report of the latest jump
        # the tick up to which every iteration is known to be pure decode; None: to be worked out.
        # It holds while nothing but the run's own growth changes the engine: free blocks only
        # shrink by what the bound allowed for, and a queue head refused stays refused
        self.bound: int | None = None
        self._unit: dict[str, int] | None = None  # the one-iteration token report, kept to be copied

    def tokens(self, k: int) -> dict[str, int]:
        """The token report of `k` iterations: `k` for every member. The common one-iteration report
        is a copy of a kept one (copying a dict costs about a tenth of building it from the ids)."""
        if k != 1:
            return dict.fromkeys(self.ids, k)
        if self._unit is None:
            self._unit = dict.fromkeys(self.ids, 1)
        return self._unit.copy()

    def new_blocks(self, steps: int) -> int:
        """Blocks the next `steps` iterations allocate: every request crosses one block boundary
        per `block_size` iterations, at a phase set by its computed tokens."""
        need, bs = self.need, len(self.need)
        full, partial = divmod(steps, bs)
        total = full * self.per_cycle
        start = self.tick + 1
        for j in range(partial):
            total += need[(start + j) % bs]
        return total

    def join(self, req: EngineRequest, block_size: int) -> None:
        """`req` decodes from the next iteration on, beside the members."""
        tick = self.tick
        self.ids.append(req.request_id)
        self.generated.append(req.generated - tick)
        self.joined.append(tick)
        self.need[(tick + 1 - req.num_computed_tokens) % block_size] += 1
        self.per_cycle += 1
        self.context += req.prompt_tokens + req.generated
        self.left = min(self.left, req.limit - req.generated)
        self.bound = None
        self._unit = None

    def steps_that_fit(self, free: int, limit: int) -> int:
        """Largest m <= limit whose block growth fits in `free` blocks (growth is monotone in m)."""
        need, bs, per_cycle = self.need, len(self.need), self.per_cycle
        if per_cycle == 0:
            return limit
        cycles, spare = divmod(free, per_cycle)
        m = cycles * bs
        start = self.tick + 1
        while m < limit:  # a whole cycle would take per_cycle > spare blocks: this stops within one
            spare -= need[(start + m) % bs]
            if spare < 0:
                break
            m += 1
        return min(m, limit)


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
        self._head_changed()

    def abort(self, request_id: str) -> EngineRequest | None:
        """Drop a request wherever it is; frees its blocks. Returns it, or None if unknown."""
        req = self.waiting.remove(request_id)
        if req is not None:
            self._head_changed()
        else:
            req = next((r for r in self.running if r.request_id == request_id), None)
            if req is None:
                return None
            self._settle()
            self.running.remove(req)
        self._finish(req, FinishReason.ABORT)
        return req

    def _head_changed(self) -> None:
        """The waiting queue changed, so its head may now enter: the decode run's bound is checked again."""
        if self._decoding is not None:
            self._decoding.bound = None

    def _cap(self, req: EngineRequest) -> int:
        """Most tokens `req` may generate: max_tokens, and the context window."""
        room = self.profile.max_model_len - req.prompt_tokens
        return room if req.max_tokens is None else min(room, req.max_tokens)

    def _complete(self, req: EngineRequest, out: StepOutcome) -> None:
        """`req` generated its last token. As in vLLM, hitting a cap is 'length' even when the
        model would have stopped right there."""
        self._finish(req, FinishReason.STOP if req.output_tokens < self._cap(req) else FinishReason.LENGTH)
        out.finished.append(req)

    def settle(self) -> None:
        """Write the running requests' counts and times: `advance` leaves them pending while they
        decode together (`progress` reports them meanwhile); `step` and `abort` settle first."""
        self._settle()

    def progress(self, out: StepOutcome, requests: Mapping[str, EngineRequest]) -> list[tuple[str, int]]:
        """(request id, tokens generated so far) for every request `out` reports tokens of, in its
        order, pending ones of a decode run included. When `out` is one jump of the current run (the
        common case) the counts come from the run; otherwise `requests` finds each by id."""
        run = self._decoding
        if run is not None and out.tokens is run.report:
            tick = run.tick
            return list(zip(run.ids, [g + tick for g in run.generated]))
        pending = {} if run is None else dict(zip(run.ids, [run.tick - j for j in run.joined]))
        return [(rid, requests[rid].generated + pending.get(rid, 0)) for rid in out.tokens]

    def _settle(self) -> None:
        """End the lazy decode run: move every running request on by the run's iterations."""
        run = self._decoding
        self._decoding = None
        if run is None or run.tick == 0:
            return
        tick, now, bs = run.tick, run.last_token_time, self.kv.block_size
        for req, joined in zip(self.running, run.joined):
            k = tick - joined
            if k:
                c = req.num_computed_tokens + k
                req.num_computed_tokens = c
                req.generated += k
                req.num_blocks = -(-c // bs)  # blocks_for; their growth was taken from the cache as it happened
                req.last_token_time = now

    def idle_until(self, t: float) -> None:
        """Let time pass outside iterations (idle pod, host overhead): the clock moves to `t`."""
        self.now = max(self.now, t)

    # --- one iteration ------------------------------------------------------------------------------
    def step(self) -> StepOutcome:
        self._settle()
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

    def _duration(self, batch: dict[EngineRequest, int], decoding: int = 0, decode_context: int = 0) -> float:
        """The iteration's time; `decoding` requests of `decode_context` tokens decode beside `batch`
        (a decode run's members, ahead of it: their integer totals add in any order)."""
        batched = decoding
        context = decode_context
        pairs = 0
        for req, n in batch.items():
            batched += n
            tokens = req.prompt_tokens + req.generated
            if n == 1 and req.generated > 0 and req.num_computed_tokens == tokens - 1:  # decode
                context += tokens
            else:
                pairs += n * (req.num_computed_tokens + n / 2.0)
        return self.profile.step_seconds(batched, len(batch) + decoding, context, pairs)

    def _apply(self, batch: dict[EngineRequest, int], out: StepOutcome, decoding: int = 0) -> int:
        """Advance computation, sample a token where the cache caught up, retire finished. `decoding`
        running requests outside `batch` decode next iteration (a decode run's members). Returns how
        many of `batch` do."""
        self.counters.steps += out.steps
        self.counters.busy_seconds += out.duration
        now, tokens = self.now, out.tokens
        emitted = 0
        beside = decoding
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
        return decoding - beside

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
        iteration finishes a request. The clock does not move while idle. Requests still decoding
        together are left with their counts pending (`progress`, `settle`)."""
        end = self.now + horizon
        total: StepOutcome | None = None
        while self.has_work and self.now < end:
            k = self._decode_run_length(end)
            if k > 0:
                part = self._jump(k, end)
            elif self._run_can_admit():
                part = self._admit_beside_run()
            else:
                part = self.step()
            if total is None or total.steps == 0:
                total = part  # the common single-part case needs no merging
            else:
                total.absorb(part)
            if stop_on_finish and part.finished:
                break
            if part.steps == 0:  # nothing schedulable (cannot happen with a valid profile)
                break
        return StepOutcome() if total is None else total

    def _decode_run_length(self, end: float = math.inf) -> int:
        """How many upcoming iterations are pure decode with an identical batch: every running
        request decodes, nothing waiting can be admitted, no block allocation fails, no request
        finishes before the last of them. 0 when the next iteration is not of that kind. Capped
        at a bound on the iterations that start before `end`: `_jump` cuts the run there anyway."""
        n = len(self.running)
        if not self._all_decoding or n == 0 or n > self.profile.max_num_batched_tokens:
            return 0
        run = self._decoding_state()
        if run.bound is None:
            fit = run.steps_that_fit(self.kv.free_blocks, run.left)
            run.bound = run.tick + (0 if fit == 0 or self._waiting_could_enter(run) else fit)
        k = run.bound - run.tick
        return k if k <= SCALAR_RUN else min(k, self._steps_before(end, n))

    def _decoding_state(self) -> _DecodeRun:
        if self._decoding is None:
            running, bs = self.running, self.kv.block_size
            need = [0] * bs
            for r in running:  # a decode from c computed tokens opens a block when c % bs == 0
                need[(1 - r.num_computed_tokens) % bs] += 1
            generated = [r.generated for r in running]
            self._decoding = _DecodeRun(min([r.limit - r.generated for r in running]),
                                        sum([r.prompt_tokens for r in running]) + sum(generated),
                                        [r.request_id for r in running], generated, need)
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

    def _waiting_could_enter(self, run: _DecodeRun) -> bool:
        """Whether the head of the queue would be admitted at the next iteration. Free blocks only
        shrink during a decode run and the budget stays put, so a head refused now stays refused."""
        n = len(self.running)
        budget = self.profile.max_num_batched_tokens - n
        head = self.waiting.peek()
        if head is None or budget <= 0 or n >= self.profile.max_num_seqs:
            return False
        bs = self.kv.block_size
        free_after_decode = self.kv.free_blocks - run.new_blocks(1)
        hit = self.kv.cached_blocks(head.cache_key, head.num_tokens, free_after_decode) if head.num_blocks == 0 else 0
        start = hit * bs or head.num_computed_tokens
        tokens = min(head.num_tokens - start, budget)
        return blocks_for(start + tokens, bs) - head.num_blocks <= free_after_decode

    def _jump(self, k: int, end: float) -> StepOutcome:
        """Apply up to `k` pure-decode iterations at once (fewer if the horizon comes first). Only
        the run's aggregates move; the requests catch up when the run ends (`_settle`)."""
        n = len(self.running)
        run = self._decoding
        assert run is not None  # _decode_run_length built it
        timed = self._time_short_run if k <= SCALAR_RUN else self._time_long_run
        k, self.now, busy, duration = timed(n, run.context, k, end)
        out = StepOutcome(duration=duration, steps=k, tokens=run.tokens(k))
        self.counters.steps += k
        self.counters.busy_seconds = busy
        self.counters.generation_tokens += k * n
        # allocated before the last iteration's finishes free theirs, as in step(); one take of
        # the sum evicts what per-iteration takes would
        self.kv.take(run.new_blocks(k))
        run.tick += k
        run.left -= k
        run.context += n * k
        run.last_token_time = self.now
        run.report = out.tokens
        if run.left <= 0:
            self._finish_run(out)
        return out

    def _run_can_admit(self) -> bool:
        """Whether the next iteration is the decode run's members decoding, blocks for all of them,
        and the queue head entering beside them (`_decode_run_length` found the run and said 0)."""
        run = self._decoding
        return (run is not None and self._all_decoding and len(self.running) <= self.profile.max_num_batched_tokens
                and run.new_blocks(1) <= self.kv.free_blocks)

    def _admit_beside_run(self) -> StepOutcome:
        """`step()` for an iteration in which the run's members decode and waiting requests are
        admitted after them (running order: members, then admissions): the members move on by the
        run's aggregates; the admitted, if they all decode next, join the run."""
        run = self._decoding
        assert run is not None
        n = len(self.running)
        self.kv.take(run.new_blocks(1))  # the members' blocks, before admission as in _schedule; none fails
        admitted: dict[EngineRequest, int] = {}
        self._admit_waiting(self.profile.max_num_batched_tokens - n, admitted)
        duration = self._duration(admitted, n, run.context)
        self.now += duration
        run.tick += 1
        run.left -= 1
        run.context += n
        run.last_token_time = self.now
        out = StepOutcome(duration=duration, steps=1, tokens=run.tokens(1))
        self.counters.generation_tokens += n
        members = n
        if run.left <= 0:  # members finished: settled and retired ahead of the admitted, in batch order
            self._settle()
            for req in [r for r in self.running[:n] if r.generated >= r.limit]:
                self._complete(req, out)
                members -= 1
        if self._apply(admitted, out, members) == len(admitted) and self._decoding is not None:
            for req in admitted:
                run.join(req, self.kv.block_size)
            run.report = out.tokens
        else:
            self._settle()
        return out

    def _finish_run(self, out: StepOutcome) -> None:
        """The run's last iteration finished requests: settle the run and retire them, in running order."""
        self._settle()
        done = [r for r in self.running if r.generated >= r.limit]  # the run was everything running
        for req in done:
            self._complete(req, out)
        self.running = [r for r in self.running if r.status is RequestStatus.RUNNING]
        self._all_decoding = bool(self.running)

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
