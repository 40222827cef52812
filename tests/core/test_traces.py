"""Traces ship with the package (a plain clone replays them); SAGESCHED_DATA_DIR overrides the folder;
a trace that is not there is one line on stderr and a non-zero exit, not a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sagesched.traces import SHIPPED_DATA, TraceNotFound, data_dir, load_trace

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def test_the_azure_traces_ship_inside_the_package_with_their_licence(monkeypatch):
    monkeypatch.delenv("SAGESCHED_DATA_DIR", raising=False)
    assert data_dir() == SHIPPED_DATA
    assert SHIPPED_DATA.is_relative_to(Path(sys.modules["sagesched"].__file__).parent)
    # the files' own row counts (header excluded): shipped unchanged
    assert len(load_trace("code")) == 8819
    assert len(load_trace("conv")) == 19366
    licence = (SHIPPED_DATA / "azure-llm-2023" / "LICENSE.md").read_text()
    assert "CC-BY 4.0" in licence and "Azure Public Dataset" in licence
    assert "Splitwise: Efficient generative LLM inference using phase splitting" in licence


def test_sagesched_data_dir_overrides_the_shipped_folder(monkeypatch, tmp_path):
    folder = tmp_path / "azure-llm-2023"
    folder.mkdir()
    (folder / "conv.csv").write_text(HEADER + "2023-11-16 18:17:05.5000000,10,3\n"
                                              "2023-11-16 18:17:03.0000000,20,0\n")
    monkeypatch.setenv("SAGESCHED_DATA_DIR", str(tmp_path))
    trace = load_trace("conv")
    assert trace.arrivals.tolist() == [0.0, 2.5]  # sorted by arrival, from the first request
    assert trace.prompts.tolist() == [20, 10]
    assert trace.outputs.tolist() == [1, 3]  # at least one token
    with pytest.raises(TraceNotFound):
        load_trace("code")  # the override replaces the shipped folder, it does not fall back to it


def test_a_missing_trace_is_one_line_on_stderr_and_a_failing_exit(tmp_path):
    env = {**os.environ, "SAGESCHED_DATA_DIR": str(tmp_path / "nowhere")}
    out = subprocess.run([sys.executable, "-m", "sagesched", "bench", "sim", "--trace", "conv", "--limit", "10",
                          "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("sagesched: error: trace 'conv' not found: no file ")
    assert str(tmp_path / "nowhere" / "azure-llm-2023" / "conv.csv") in lines[0]
    assert "SAGESCHED_DATA_DIR" in lines[0]
    assert not (tmp_path / "out").exists()
