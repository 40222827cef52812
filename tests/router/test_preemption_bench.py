"""`sagesched bench preemption` end to end on a tiny replay: every request of every policy answered
through a real router and emulated pods, the simulator's row beside each, and the summary of the
JSON it writes."""
from __future__ import annotations

import argparse

from sagesched.bench.preemption import run_bench, summarize


def test_the_preemption_bench_replays_each_policy_beside_the_simulator(tmp_path, capsys):
    args = argparse.Namespace(pods=1, pod="compute-bound", requests=12, load=1.3, time_scale=0.02,
                              policies="sagesched,llmd", seed=0, json=str(tmp_path / "run.json"), summarize=None)
    assert run_bench(args) == 0  # every request of every policy answered in full
    out = capsys.readouterr().out
    assert "| sagesched |" in out and "| llmd |" in out and "live mean TTLT, sagesched vs llmd" in out
    table = summarize(tmp_path)
    assert "| compute-bound | sagesched | 0 |" in table and "| compute-bound | llmd | 0 |" in table
