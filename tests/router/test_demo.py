"""`sagesched demo` end to end at a tiny size: emulated pods, router, trace replay, table."""
from __future__ import annotations

from sagesched.cli import build_parser


async def test_demo_replays_the_trace_through_each_policy(capsys, tmp_path):
    from sagesched.router.demo import _main

    args = build_parser().parse_args(["demo", "--pods", "2", "--requests", "12", "--rate", "20",
                                      "--time-scale", "0.02", "--max-output", "64",
                                      "--policies", "sagesched,round-robin", "--json", str(tmp_path / "r.json")])
    assert await _main(args) == 0
    out = capsys.readouterr().out
    assert "sagesched" in out and "round-robin" in out and "TTLT mean" in out
    assert "simulator, same slice" in out and "order by mean TTLT" in out
    import json

    results = json.loads((tmp_path / "r.json").read_text())
    assert [r["ok"] for r in results] == [12, 12]
