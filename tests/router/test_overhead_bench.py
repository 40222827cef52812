"""The benchmarks' load generator (`bench/loadgen.py`), as their orchestrators run it: its own process,
on uvloop."""
from __future__ import annotations

import json
import subprocess
import sys

from sagesched.bench.loadgen import drive


def test_a_load_report_larger_than_a_pipe_buffer_arrives_whole(tmp_path):
    # After a uvloop run, writes to a pipe stop at its 64 KiB buffer (silently, exit status 0) when
    # the reader is slow; 4,000 latencies are about 80 KB of JSON. Nobody reads this generator's
    # stdout until it has exited.
    pods = subprocess.Popen([sys.executable, "-m", "sagesched.bench.instant_pod", "--pods", "1", "--tokens", "1"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert pods.stdout is not None
        url = json.loads(pods.stdout.readline())[0]
        report = tmp_path / "load.json"
        gen = subprocess.Popen([sys.executable, "-m", "sagesched.bench.loadgen", "--url", url, "--rate", "4000",
                                "--count", "4000", "--tokens", "1", "--out", str(report)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert gen.wait(timeout=120) == 0, gen.stderr.read() if gen.stderr else ""
        loaded = json.loads(report.read_text())
        assert len(loaded["latencies"]) + loaded["errors"] == 4000
        assert report.stat().st_size > 64 * 1024
        # The orchestrator reads the same report.
        assert len(drive([url], rate=1000.0, count=50, tokens=1, seed=1).latencies) == 50
    finally:
        pods.terminate()
        pods.wait(10)
