"""The engine model behaves like vLLM v1's scheduler on a paged KV cache."""
from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagesched.engine import engine as engine_module
from sagesched.engine import Engine, EngineRequest, FinishReason, RequestStatus, load_profile
from sagesched.engine.kv_cache import blocks_for

from tests.engine.conftest import random_workload, run_by_advance, run_by_steps, small_profile


def request_state(req: EngineRequest) -> tuple:
    return (req.request_id, req.status, req.generated, req.num_computed_tokens, req.num_blocks,
            req.num_preemptions, req.first_scheduled_time, req.first_token_time,
            req.last_token_time, req.finish_time, req.finish_reason)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scheduling=st.sampled_from(["fcfs", "priority"]),
       blocks=st.integers(64, 200))
def test_kv_use_never_exceeds_capacity_and_matches_computed_tokens(seed, scheduling, blocks):
    profile = small_profile(num_gpu_blocks=blocks)
    engine = Engine(profile, scheduling)
    pending = random_workload(seed, 30, spacing=0.002, priorities=3)
    for req in pending:
        engine.add_request(req)
    while engine.has_work:
        engine.step()
        held = sum(r.num_blocks for r in engine.running)
        assert held == engine.kv.used_blocks <= profile.num_gpu_blocks
        assert 0.0 <= engine.kv_usage <= 1.0
        for r in engine.running:
            assert r.num_blocks == blocks_for(r.num_computed_tokens, profile.block_size)
    assert engine.kv.used_blocks == 0
    assert all(r.generated == r.limit and r.status is RequestStatus.FINISHED for r in pending)


def test_overcommitted_memory_preempts_and_recomputes_without_losing_tokens():
    profile = small_profile(num_gpu_blocks=64, max_num_seqs=8)  # 256 token slots for 8 x ~100
    engine = Engine(profile)
    reqs = [EngineRequest(f"r{i}", prompt_tokens=60, output_tokens=80) for i in range(8)]
    for r in reqs:
        engine.add_request(r)
    preempted: list[str] = []
    while engine.has_work:
        preempted += engine.step().preempted
    assert engine.counters.preemptions == len(preempted) > 0
    assert sum(r.num_preemptions for r in reqs) == len(preempted)
    assert all(r.generated == 80 and r.finish_reason == FinishReason.STOP for r in reqs)
    assert engine.counters.generation_tokens == 8 * 80
    assert engine.counters.prompt_tokens == 8 * 60  # recompute is not new prompt


def test_fcfs_preempts_the_most_recently_scheduled_request():
    engine = Engine(small_profile(num_gpu_blocks=64, max_num_seqs=4))
    reqs = [EngineRequest(f"r{i}", prompt_tokens=60, output_tokens=200) for i in range(4)]
    for r in reqs:
        engine.add_request(r)
    while not (out := engine.step()).preempted:
        assert engine.has_work, "every request finished without a preemption"
    assert out.preempted[0] == engine.waiting.peek().request_id == "r3"  # back at the front


def test_priority_mode_preempts_the_lowest_priority_request():
    engine = Engine(small_profile(num_gpu_blocks=64, max_num_seqs=4), scheduling="priority")
    for i, prio in enumerate([2, 0, 5, 1]):
        engine.add_request(EngineRequest(f"r{i}", 60, 200, priority=prio, arrival=0.0))
    while not (out := engine.step()).preempted:
        assert engine.has_work, "every request finished without a preemption"
    assert out.preempted[0] == "r2"


def _decode_step_time(n: int) -> tuple[float, int]:
    """Duration of the first pure-decode iteration with `n` identical requests, and its tokens."""
    engine = Engine(load_profile())
    for i in range(n):
        engine.add_request(EngineRequest(f"r{i}", prompt_tokens=100, output_tokens=50))
    engine.step()  # the batched prefill
    out = engine.step()
    return out.duration, sum(out.tokens.values())


def test_batching_raises_throughput_and_per_token_latency_as_the_profile_says():
    profile = load_profile()
    single, single_tokens = _decode_step_time(1)
    batched, batched_tokens = _decode_step_time(64)
    assert single == profile.decode_step_seconds(1, 101)
    assert batched == profile.decode_step_seconds(64, 64 * 101)
    assert batched > single  # each token waits longer ...
    assert batched_tokens / batched > 10 * single_tokens / single  # ... but throughput grows


def test_long_prompts_are_prefilled_in_chunks_of_the_token_budget():
    engine = Engine(small_profile(max_num_batched_tokens=64))
    req = EngineRequest("long", prompt_tokens=200, output_tokens=3)
    engine.add_request(req)
    steps_to_first_token = 0
    while req.first_token_time is None:
        assert engine.has_work, "the request left the engine without a first token"
        engine.step()
        steps_to_first_token += 1
    assert steps_to_first_token == math.ceil(200 / 64)


def test_priority_mode_serves_lower_values_first_and_fcfs_serves_arrival_order():
    def finish_order(scheduling: str) -> list[str]:
        engine = Engine(small_profile(max_num_seqs=1), scheduling=scheduling)
        for i, prio in enumerate([3, 1, 2, 0]):
            engine.add_request(EngineRequest(f"p{prio}", 10, 5, priority=prio, arrival=i * 1e-6))
        order = []
        while engine.has_work:
            order += [r.request_id for r in engine.step().finished]
        return order

    assert finish_order("priority") == ["p0", "p1", "p2", "p3"]
    assert finish_order("fcfs") == ["p3", "p1", "p2", "p0"]


def test_finish_reason_is_length_when_a_cap_ends_the_output():
    engine = Engine(small_profile())
    capped = EngineRequest("capped", 10, output_tokens=50, max_tokens=7)
    natural = EngineRequest("natural", 10, output_tokens=5, max_tokens=7)
    window = EngineRequest("window", 250, output_tokens=50)  # max_model_len 256 leaves 6
    for r in (capped, natural, window):
        engine.add_request(r)
    run_by_steps(engine, [])
    assert (capped.generated, capped.finish_reason) == (7, FinishReason.LENGTH)
    assert (natural.generated, natural.finish_reason) == (5, FinishReason.STOP)
    assert (window.generated, window.finish_reason) == (6, FinishReason.LENGTH)
    assert engine.counters.finished == {"length": 2, "stop": 1}


def test_abort_frees_blocks_and_counts_as_abort():
    engine = Engine(small_profile())
    a, b = EngineRequest("a", 40, 50), EngineRequest("b", 40, 50)
    engine.add_request(a)
    engine.step()
    engine.add_request(b)
    assert engine.abort("a") is a and engine.abort("b") is b and engine.abort("zzz") is None
    assert engine.kv.used_blocks == 0 and not engine.has_work
    assert engine.counters.finished["abort"] == 2


def test_latency_fields_are_consistent():
    engine = Engine(small_profile())
    reqs = random_workload(3, 20)
    run_by_steps(engine, reqs)
    for r in reqs:
        assert 0 <= r.queue_time <= r.ttft <= r.e2e
        assert r.finish_time == r.last_token_time


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scheduling=st.sampled_from(["fcfs", "priority"]),
       blocks=st.integers(64, 400), stop_on_finish=st.booleans(),
       scalar_run=st.sampled_from([0, engine_module.SCALAR_RUN, 10**9]), keyed=st.booleans(),
       budget=st.sampled_from([64, 512]))
def test_advance_equals_repeated_step_exactly(seed, scheduling, blocks, stop_on_finish, scalar_run, keyed, budget):
    """Whichever way a decode run is timed (numpy, scalar, or the default mix), with or without
    prefix-cache keys (preempted requests then find part of their blocks again), with a token budget
    that chunks prompts or one that admits them whole beside a decode run."""
    profile = small_profile(num_gpu_blocks=blocks, max_num_seqs=12, max_num_batched_tokens=budget)
    workload = random_workload(seed, 40, spacing=0.02, priorities=3, keyed=keyed)
    stepped, advanced = Engine(profile, scheduling), Engine(profile, scheduling)
    by_step, by_advance = copy.deepcopy(workload), copy.deepcopy(workload)
    run_by_steps(stepped, by_step)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "SCALAR_RUN", scalar_run)
        run_by_advance(advanced, by_advance, stop_on_finish)
    assert [request_state(r) for r in by_advance] == [request_state(r) for r in by_step]
    assert advanced.counters == stepped.counters
    assert advanced.now == stepped.now


def test_advance_jumps_over_decode_and_stops_at_the_horizon():
    engine = Engine(load_profile())
    for i in range(16):
        engine.add_request(EngineRequest(f"r{i}", 100, 1000 + i))
    out = engine.advance(0.5)
    assert out.steps > 10
    engine.settle()  # advance leaves the counts of a decode run pending
    last_step = engine.profile.decode_step_seconds(16, sum(r.num_tokens - 1 for r in engine.running))
    assert engine.now - last_step < 0.5 <= engine.now  # the last iteration started before the horizon
    assert all(n == out.steps for n in out.tokens.values())  # one token per iteration, prefill's included


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scheduling=st.sampled_from(["fcfs", "priority"]), blocks=st.integers(64, 300))
def test_progress_reports_the_counts_that_stepping_reaches_and_settle_writes_them(seed, scheduling, blocks):
    """`advance` moves a decode run's aggregates only; `progress` and `settle` must show exactly
    what one `step()` at a time reaches, at every arrival."""
    profile = small_profile(num_gpu_blocks=blocks, max_num_seqs=12)
    workload = random_workload(seed, 30, spacing=0.02, priorities=3, keyed=True)
    stepped, advanced = Engine(profile, scheduling), Engine(profile, scheduling)
    by_step, by_advance = copy.deepcopy(workload), copy.deepcopy(workload)
    step_ids = {r.request_id: r for r in by_step}
    advance_ids = {r.request_id: r for r in by_advance}
    reports: list[tuple[str, int]] = []
    for ref, req in zip(by_step, by_advance):
        while stepped.has_work and stepped.now < ref.arrival:
            stepped.step()
        while advanced.has_work and advanced.now < req.arrival:
            out = advanced.advance(req.arrival - advanced.now)
            reports = advanced.progress(out, advance_ids)
            assert [rid for rid, _ in reports] == list(out.tokens)
        assert all(generated == step_ids[rid].generated for rid, generated in reports)
        stepped.add_request(ref)
        advanced.add_request(req)
    advanced.settle()
    assert [request_state(r) for r in by_advance] == [request_state(r) for r in by_step]


def test_same_seed_same_results():
    def run(seed: int) -> list[tuple]:
        engine = Engine(small_profile(num_gpu_blocks=70), seed=seed)
        reqs = [EngineRequest(f"r{i}", int(engine.rng.integers(1, 100)), int(engine.rng.integers(1, 80)),
                              arrival=i * 0.003) for i in range(25)]
        run_by_advance(engine, reqs)
        return [request_state(r) for r in reqs]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_a_continuation_finds_its_aborted_blocks_in_the_prefix_cache():
    """vLLM's automatic prefix caching: an aborted request's full blocks stay cached, and its
    continuation (prompt + generated, same key) computes only the rest."""
    profile = small_profile(num_gpu_blocks=80, block_size=4)
    engine = Engine(profile, "priority")
    first = EngineRequest("a", prompt_tokens=30, output_tokens=50, cache_key="a")
    engine.add_request(first)
    while first.generated < 10:
        engine.step()
    computed = first.num_computed_tokens  # 30 + 10 - 1 = 39: the last sampled token is not in the cache yet
    assert computed == 39
    engine.abort("a")
    assert engine.kv.used_blocks == 0 and engine.kv.cached_total == 39 // 4  # 9 full blocks kept
    resumed = EngineRequest("a", prompt_tokens=40, output_tokens=40, cache_key="a", previously_computed=computed)
    engine.add_request(resumed)
    engine.step()
    assert resumed.num_computed_tokens == 40  # 36 from the cache, 4 computed in this step
    assert engine.kv.hit_tokens == 36
    assert engine.counters.recomputed_tokens == 39 - 36  # what the cache had lost: the partial block
    while engine.has_work:
        engine.step()
    assert resumed.generated == 40


def test_cached_blocks_are_evicted_least_recently_freed_first_and_a_keyless_request_never_hits():
    engine = Engine(small_profile(num_gpu_blocks=20, block_size=4, max_num_seqs=4, max_model_len=80), "priority")
    for key in ("old", "new"):
        req = EngineRequest(key, prompt_tokens=32, output_tokens=100, cache_key=key)
        engine.add_request(req)
        while req.generated < 1:
            engine.step()
        engine.abort(key)  # 8 full blocks each, both cached: 16 of 20 free blocks hold them
    hog = EngineRequest("hog", prompt_tokens=40, output_tokens=1)  # needs 10 blocks: evicts 6 of "old"
    engine.add_request(hog)
    engine.step()
    engine.step()
    assert engine.kv.cached_blocks("old", 33) == 2 and engine.kv.cached_blocks("new", 33) == 8
    assert engine.kv.cached_blocks(None, 33) == 0
