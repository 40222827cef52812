"""`sagesched demo`: end to end at a tiny size (emulated pods, router, trace replay, table), its
verdicts (order against the simulator, a host that could not keep up) and its stall-free clock."""
from __future__ import annotations

import json

from sagesched.bench.live import Outcome, Summary
from sagesched.cli import build_parser
from sagesched.bench.demo import EXIT_FAILED, EXIT_ORDER_DIFFERS, HostLoad, PolicyRun, StallFreeClock, _main, judge

TINY = ["demo", "--pods", "2", "--requests", "12", "--rate", "20", "--max-output", "64",
        "--policies", "sagesched,round-robin"]


async def test_demo_replays_the_trace_through_each_policy(capsys, tmp_path):
    args = build_parser().parse_args([*TINY, "--time-scale", "0.02", "--json", str(tmp_path / "r.json")])
    code = await _main(args)
    out = capsys.readouterr().out
    assert "sagesched" in out and "round-robin" in out and "TTLT mean" in out
    assert "simulator, same slice" in out and "order by mean TTLT" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert [r["ok"] for r in result["runs"]] == [12, 12]
    # latencies on the emulated clock: positive, last token after first
    for r in result["runs"]:
        assert 0 < r["ttft"]["mean"] < r["ttlt"]["mean"]
        assert r["host"]["wall"] > 0 and 0 <= r["host"]["stalled"] <= r["host"]["wall"]
    # the exit status follows the order check, whichever way it went on this host
    live = sorted(result["runs"], key=lambda r: r["ttlt"]["mean"])
    assert result["live_order"] == [r["policy"] for r in live]
    assert result["same_order"] == (result["live_order"] == result["simulator_order"])
    assert code == result["exit_status"] == (0 if result["same_order"] else EXIT_ORDER_DIFFERS)
    assert ("(same)" in out) == result["same_order"] and ("(DIFFERENT)" in out) != result["same_order"]
    assert ("HOST COULD NOT KEEP UP" in out) != result["host_kept_up"]


async def test_a_starved_host_is_reported(capsys, tmp_path):
    """At 0.0001 wall s per emulated s no host keeps up: the engines want an iteration every few
    microseconds, so the process never idles."""
    args = build_parser().parse_args([*TINY, "--time-scale", "0.0001", "--no-sim", "--json", str(tmp_path / "r.json")])
    code = await _main(args)
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["host_kept_up"] is False
    assert "HOST COULD NOT KEEP UP" in out and "host kept up" not in out
    assert code == 0  # nothing to disagree with: the verdict is printed, the status is for the order check


def _run(label: str, ttlts: list[float], host: HostLoad | None = None, failed: int = 0) -> PolicyRun:
    outcomes = [Outcome(0.0, 100, 10, ttft=t / 2, ttlt=t, received_tokens=10) for t in ttlts]
    outcomes += [Outcome(0.0, 100, 10, error="boom") for _ in range(failed)]
    summary = Summary(label, outcomes, makespan=10.0, time_scale=1.0)
    return PolicyRun(summary, summary, 0, host or HostLoad(wall=10.0, stalled=1.0, cpu=2.0, waited=0.5))


def _sim(**ttlt: float) -> list[dict]:
    return [{"policy": p.replace("_", "-"), "ttlt_mean": t, "ttlt_p50": t, "ttlt_p99": t, "ttft_mean": t / 2}
            for p, t in ttlt.items()]


def test_same_order_as_the_simulator_exits_zero():
    code, lines, verdict = judge([_run("sagesched", [0.5, 0.7]), _run("fcfs", [0.8, 0.9])],
                                 _sim(sagesched=0.55, fcfs=0.6), max_stall=0.5)
    text = "\n".join(lines)
    assert code == 0 and verdict["same_order"] and verdict["host_kept_up"]
    assert "live sagesched < fcfs; simulator sagesched < fcfs (same)" in text and "host kept up" in text


def test_a_different_order_exits_non_zero_and_says_so():
    code, lines, verdict = judge([_run("sagesched", [0.9, 1.1]), _run("round-robin", [0.5, 0.7])],
                                 _sim(sagesched=0.55, round_robin=0.65), max_stall=0.5)
    text = "\n".join(lines)
    assert code == EXIT_ORDER_DIFFERS and verdict["same_order"] is False
    assert "(DIFFERENT)" in text and f"exit status {EXIT_ORDER_DIFFERS}" in text
    assert "could not keep up" not in text  # the host is not blamed when it kept up


def test_failed_requests_exit_non_zero_even_in_order():
    code, _, _ = judge([_run("sagesched", [0.5], failed=1), _run("fcfs", [0.8])],
                       _sim(sagesched=0.55, fcfs=0.6), max_stall=0.5)
    assert code == EXIT_FAILED


def test_a_stalled_or_saturated_host_is_reported_beside_the_order():
    stalled = HostLoad(wall=10.0, stalled=6.0, cpu=0.5, waited=0.1)  # stopped more than half the time
    code, lines, verdict = judge([_run("sagesched", [0.9]), _run("fcfs", [0.5], stalled)],
                                 _sim(sagesched=0.55, fcfs=0.6), max_stall=0.5)
    text = "\n".join(lines)
    assert verdict["host_kept_up"] is False and code == EXIT_ORDER_DIFFERS
    assert "HOST COULD NOT KEEP UP: the fcfs replay was stalled for 60%" in text
    assert "(the host could not keep up: see above)" in text

    saturated = HostLoad(wall=10.0, stalled=0.5, cpu=6.0, waited=3.5)  # runnable 95% of the time
    code, lines, verdict = judge([_run("sagesched", [0.5], saturated), _run("fcfs", [0.8])],
                                 _sim(sagesched=0.55, fcfs=0.6), max_stall=0.5)
    assert verdict["host_kept_up"] is False and code == 0
    assert "kept this process busy 95%" in "\n".join(lines)


def test_the_clock_takes_a_stall_out_of_emulated_time_and_never_goes_back():
    wall = [100.0]
    clock = StallFreeClock(time_scale=2.0, loop_time=lambda: wall[0])
    wall[0] += 2.0
    assert clock.now() == 1.0  # wall seconds over the time scale
    wall[0] += 1.0  # something due at emulated 1.25 runs at 1.5: 0.25 emulated (0.5 wall) late
    clock.catch(1.25)
    assert clock.stalled == 0.5 and clock.now() == 1.25
    clock.catch(1.0)  # on time or early: nothing to take out
    assert clock.stalled == 0.5
    wall[0] += 0.5
    seen = clock.now()  # 1.5, read by someone: a later catch cannot take it back
    clock.catch(1.25)
    assert clock.now() == seen == 1.5 and clock.stalled == 0.5


async def test_the_clock_sleeps_until_its_reading():
    clock = StallFreeClock(time_scale=0.001)
    await clock.sleep_until(5.0)  # 5 ms of wall
    assert clock.now() >= 5.0
