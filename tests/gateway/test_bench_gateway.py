"""`sagesched bench gateway` runs end to end: pods, picker, two Envoys and the load generator, each its
own process, and prints one table row per rate (figures are the benchmark's business, not asserted)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from sagesched.bench.gateway import HEADER


@pytest.mark.parametrize("null_picker", [False, True], ids=["picker", "null-picker"])
def test_the_gateway_benchmark_prints_its_table_and_leaves_no_process(null_picker):
    cmd = [sys.executable, "-m", "sagesched.cli", "bench", "gateway", "--pods", "1", "--rates", "20",
           "--duration", "1", "--repeats", "1", *(["--null-picker"] if null_picker else [])]
    # Its own session: whatever it started and left running would still be found there afterwards.
    bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err = bench.communicate(timeout=120)
    assert bench.returncode == 0, err[-3000:]
    lines = out.splitlines()
    assert HEADER in lines
    (row,) = [line for line in lines if line.startswith("20 |")]
    cells = row.split(" | ")
    assert len(cells) == len(HEADER.split(" | "))
    assert cells[-1] == "0", row  # every request went through, both ways
    left = subprocess.run(["ps", "-o", "pid=,args=", "-s", str(bench.pid)], capture_output=True, text=True)
    assert not left.stdout.strip(), left.stdout
