"""One typed settings object for the predictor; CLI flags map onto it. Defaults documented here."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sagesched.predictor.history import HistoryParams
from sagesched.predictor.semantic import SemanticParams

# How a prediction is made (all learn online from reported completions):
# - "network": the torch model over hashed prompt words, blended with its kNN history and drift (ours);
# - "semantic-history": the paper's: lengths of past requests with similar prompts (semantic.py);
# - "blend": the network's prediction mixed with semantic history by how many similar prompts it found.
MODES = ("network", "semantic-history", "blend")

# The trained checkpoint committed with the code, so a fresh service starts with a real model.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "sharegpt-hashed.pt"


@dataclass
class PredictorSettings:
    checkpoint: Path | None = DEFAULT_CHECKPOINT  # initial weights when the store has none
    checkpoint_dir: Path | None = None  # where online updates are written (None: not persisted)
    history: HistoryParams = field(default_factory=HistoryParams)
    # Key for neighbour search: "embedding" (network embedding of the prompt) or "prompt_length"
    # (for traces without text, e.g. Azure).
    history_key: str = "embedding"
    blend_strength: float = 48.0  # see history.blend_weight
    drift_decay: float = 0.995  # per report: the drift estimate looks at the last ~200 reports
    drift_prior: float = 100.0  # pseudo-reports of "no drift": damps noise on little evidence
    prediction_memory: int = 65536  # predictions remembered per request id, for calibration
    # Online network updates: every `online_every` learnable reports, `online_steps` Adam steps
    # on the replay buffer, in a background thread; 0 disables.
    online_every: int = 1024
    online_steps: int = 50
    online_lr: float = 1e-3
    replay_capacity: int = 16384
    checkpoint_every_s: float = 300.0  # how often the online learner persists state
    mode: str = "network"  # one of MODES
    embedder: str = "hashed"  # semantic history's prompt vectors: "hashed" or "minilm" (embedders.py)
    embedder_device: str = "cpu"  # "cuda" runs MiniLM on a GPU
    semantic: SemanticParams = field(default_factory=SemanticParams)
    warm_start: Path | None = None  # .npz from semantic.WarmStart.save, embedded with `embedder`
    # In "blend": similar prompts found at which semantic history and the network weigh the same.
    semantic_blend_strength: float = 8.0
    # Share semantic-history windows with the other predictor replicas through Redis (None: this
    # replica learns only from the reports it receives itself).
    redis_url: str | None = None
