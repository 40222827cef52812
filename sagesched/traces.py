"""Request traces: arrival times and prompt/output lengths.

Two sources: the Azure LLM inference trace 2023 (../shared/data/azure-llm-2023/ next to the checkout;
SAGESCHED_DATA_DIR points elsewhere: the folder that holds azure-llm-2023/), and predictor exports
(`.npz` from `sagesched predictor export`: held-out ShareGPT requests with the predictor's own
distribution for each, so the simulator can schedule on real predictions).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from sagesched.distribution import LengthDistribution, LengthGrid, grid

TRACES = ("conv", "code")


def data_dir() -> Path:
    env = os.environ.get("SAGESCHED_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


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

    def __len__(self) -> int:
        return len(self.arrivals)

    def slice(self, start: int, stop: int) -> "Trace":
        cut = None if self.predicted is None else self.predicted[start:stop]
        return replace(self, arrivals=self.arrivals[start:stop], prompts=self.prompts[start:stop],
                       outputs=self.outputs[start:stop], predicted=cut)

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


def load_trace(name: str) -> Trace:
    if name.endswith(".npz"):
        return load_predicted_replay(Path(name))
    path = Path(name) if name.endswith(".csv") else data_dir() / "azure-llm-2023" / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"trace {path} not found (set SAGESCHED_DATA_DIR)")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    t = np.array([_seconds(r["TIMESTAMP"]) for r in rows])
    order = np.argsort(t, kind="stable")
    prompts = np.array([int(r["ContextTokens"]) for r in rows], dtype=np.int64)[order]
    outputs = np.array([int(r["GeneratedTokens"]) for r in rows], dtype=np.int64)[order]
    return Trace(path.stem, t[order] - t[order][0], np.maximum(prompts, 1), np.maximum(outputs, 1))
