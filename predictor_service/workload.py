"""ShareGPT requests with every predictor mode's real per-request distributions, for the simulator.

`sharegpt_workload()` replays the ShareGPT test split in arrival order through each predictor mode
(comparison.build_methods: the same warm state and code as `sagesched predictor eval`), offline: a
batch is predicted, and each request's completion is reported `report_lag` requests after it arrived
— a stand-in for the requests still in flight when the next ones are predicted, since the true
completion order depends on the schedule the simulator has not run yet. The result carries what the
simulator needs per request: the prompt's key (same text, same key) and text, prompt and true output
tokens, and one probability matrix per mode; `.trace(mode)` packs one mode as a `sagesched.traces.Trace`
(arrivals are request indices: the simulator sets arrival times).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sagesched.distribution import LengthGrid, grid
from sagesched.predictor.data import Example
from sagesched.predictor.evaluation import StreamedMethod, stream_predictor
from sagesched.traces import Trace

MODES = ("buckets", "input-length", "network", "semantic-hashed", "semantic-minilm", "blend-hashed", "blend-minilm")
DEFAULT_REPORT_LAG = 64


@dataclass(frozen=True)
class PredictedWorkload:
    name: str
    texts: list[str]  # the prompt as the predictor saw it (head + tail of long prompts)
    keys: np.ndarray  # int64: index of the distinct prompt text; equal keys = the same prompt again
    prompt_tokens: np.ndarray  # int64
    outputs: np.ndarray  # int64, the true output tokens
    predicted: dict[str, np.ndarray]  # mode → (n × grid.num_bins) probabilities, rows sum to 1
    grid: LengthGrid

    def __len__(self) -> int:
        return len(self.keys)

    def trace(self, mode: str) -> Trace:
        """One mode's predictions as a simulator Trace (arrivals = request index)."""
        return Trace(f"{self.name}:{mode}", np.arange(len(self), dtype=np.float64), self.prompt_tokens,
                     self.outputs, self.predicted[mode], self.grid, keys=self.keys)


def predicted_workload(name: str, examples: Sequence[Example], warm_history: Sequence[Example],
                       methods: dict[str, StreamedMethod], report_lag: int = DEFAULT_REPORT_LAG) -> PredictedWorkload:
    """Stream `examples` through each method (after reporting `warm_history`) and collect rows."""
    texts = [e.prompt for e in examples]
    _, keys = np.unique(np.array(texts, dtype=object), return_inverse=True)
    predicted = {mode: stream_predictor(m, warm_history, examples, report_lag=report_lag)
                 for mode, m in methods.items()}
    return PredictedWorkload(name, texts, keys.astype(np.int64), np.array([e.prompt_tokens for e in examples]),
                             np.array([e.output_tokens for e in examples]), predicted, grid())


def sharegpt_workload(n: int | None = None, modes: Sequence[str] = MODES, report_lag: int = DEFAULT_REPORT_LAG,
                      seed: int = 0, checkpoint: Path | None = None) -> PredictedWorkload:
    """The first `n` ShareGPT test-split requests (all 6,168 by default) with each mode's predictions.

    Needs the [train] extra. Cost: seconds per mode, plus embedding ~20k prompts once for the
    "*-minilm" modes (~15 minutes on a 2-core CPU; cached on disk under data.cache_dir()).
    """
    from sagesched.predictor.checkpoint import load_checkpoint
    from sagesched.predictor.comparison import EvalData, build_methods, eval_embedders
    from sagesched.predictor.config import DEFAULT_CHECKPOINT
    from sagesched.predictor.data import load_splits

    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown predictor modes {sorted(unknown)}; known: {MODES}")
    splits = load_splits(seed)
    data = EvalData.from_splits(splits)  # the whole split: its embeddings are cached by the eval
    net, features, _, _ = load_checkpoint(checkpoint or DEFAULT_CHECKPOINT)
    kinds = ["hashed"] + (["minilm"] if any(m.endswith("minilm") for m in modes) else [])
    factories = build_methods(net, features, data, splits["train"], eval_embedders(kinds, data))
    return predicted_workload("sharegpt", data.test[:n], data.warm_history, {m: factories[m]() for m in modes},
                              report_lag)
