"""Request traces: arrival times and prompt/output lengths.

Two sources: the Azure LLM inference trace 2023 (`conv`, `code`: samples shipped with the package in
sagesched/data/azure-llm-2023/, CC-BY 4.0, licence and citation in the LICENSE.md beside them;
SAGESCHED_DATA_DIR overrides the location: the folder that holds azure-llm-2023/), and predictor
exports (`.npz` from `sagesched predictor export`: held-out ShareGPT requests with the predictor's own
distribution for each, so the simulator can schedule on real predictions). A `.csv` path in the same
columns as the Azure files is read as such.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from sagesched.distribution import LengthDistribution, LengthGrid, grid
from sagesched.errors import UserError

TRACES = ("conv", "code")
DATA_ENV = "SAGESCHED_DATA_DIR"
SHIPPED_DATA = Path(__file__).resolve().parent / "data"


class TraceNotFound(UserError, FileNotFoundError):
    """A trace name or file that does not resolve to an existing file."""


def data_dir() -> Path:
    """The folder that holds azure-llm-2023/: $SAGESCHED_DATA_DIR if set, else the package's own data."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return SHIPPED_DATA


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival; arrivals in seconds from the first request."""

    name: str
    arrivals: np.ndarray
    prompts: np.ndarray
    outputs: np.ndarray
    # per-request predicted length probabilities (n x bins) on `grid`, when the trace carries them
    predicted: np.ndarray | None = None
    grid: LengthGrid | None = None
    # per-request prompt identity (same key: same prompt, sampled again), for history predictors
    keys: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.arrivals)

    def slice(self, start: int, stop: int) -> "Trace":
        part = lambda a: None if a is None else a[start:stop]  # noqa: E731
        return replace(self, arrivals=self.arrivals[start:stop], prompts=self.prompts[start:stop],
                       outputs=self.outputs[start:stop], predicted=part(self.predicted), keys=part(self.keys))

    def prediction(self, i: int) -> LengthDistribution:
        """The predictor's distribution for request i (only for traces exported with predictions)."""
        if self.predicted is None or self.grid is None:
            raise ValueError(f"trace {self.name!r} carries no predicted distributions")
        return LengthDistribution(self.predicted[i], self.grid)

    def split(self, history_fraction: float) -> tuple["Trace", "Trace"]:
        """Earlier part (history a predictor may learn from), later part (replayed). In time, not
        at random: the replay must not leak into what was known before it."""
        cut = int(len(self) * history_fraction)
        return self.slice(0, cut), self.slice(cut, len(self))


def _seconds(stamp: str) -> float:
    # 7 fractional digits: datetime takes at most 6
    head, _, frac = stamp.partition(".")
    return datetime.fromisoformat(head).timestamp() + float("0." + (frac or "0"))


def load_predicted_replay(path: Path) -> Trace:
    """A predictor export (`sagesched predictor export`): prompts, true outputs and the predictor's
    distribution per request, with no arrival times (replay it with synthetic arrivals)."""
    data = np.load(path)
    n = len(data["prompt_tokens"])
    return Trace(path.stem, np.arange(n, dtype=np.float64), data["prompt_tokens"].astype(np.int64),
                 data["true_output_tokens"].astype(np.int64), data["probs"],
                 grid(int(data["grid_num_bins"]), int(data["grid_max_length"])))


def _missing(name: str, path: Path) -> TraceNotFound:
    if name.endswith((".npz", ".csv")):
        hint = ""
    elif os.environ.get(DATA_ENV):
        hint = (f" ({DATA_ENV} is set: it must name the folder that holds azure-llm-2023/; unset it to use "
                f"the traces shipped with sagesched)")
    else:
        hint = f" (known traces: {', '.join(TRACES)}; or give a .csv or .npz path)"
    return TraceNotFound(f"trace {name!r} not found: no file {path}{hint}")


def load_trace(name: str) -> Trace:
    """A trace by name (`conv`, `code`, under data_dir()/azure-llm-2023/) or by `.csv` / `.npz` path.
    Raises TraceNotFound (a UserError: the CLI prints one line) when the file does not exist."""
    if name.endswith(".npz"):
        path = Path(name)
        if not path.is_file():
            raise _missing(name, path)
        return load_predicted_replay(path)
    path = Path(name) if name.endswith(".csv") else data_dir() / "azure-llm-2023" / f"{name}.csv"
    if not path.is_file():
        raise _missing(name, path)
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    t = np.array([_seconds(r["TIMESTAMP"]) for r in rows])
    order = np.argsort(t, kind="stable")
    prompts = np.array([int(r["ContextTokens"]) for r in rows], dtype=np.int64)[order]
    outputs = np.array([int(r["GeneratedTokens"]) for r in rows], dtype=np.int64)[order]
    return Trace(path.stem, t[order] - t[order][0], np.maximum(prompts, 1), np.maximum(outputs, 1))
