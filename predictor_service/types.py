"""Domain objects of the predictor: what the servicer translates protobufs into.

The core (features, model, history, core.Predictor) speaks only these types, never the generated
gRPC modules, so it can be driven from the simulator or a benchmark without a server.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sagesched.distribution import LengthDistribution


@dataclass(frozen=True)
class PredictQuery:
    """One request as the router sees it before dispatch."""

    model: str
    prompt: str = ""
    prompt_tokens: int = 0  # engine tokens if known; 0 = estimate from the text
    max_tokens: int = 0  # 0 = unset
    temperature: float | None = None
    stop: tuple[str, ...] = ()
    request_id: str = ""


@dataclass(frozen=True)
class Prediction:
    distribution: LengthDistribution
    source: str  # "model", "history", "blend" or "prior"
    history_weight: float = 0.0


@dataclass(frozen=True)
class CompletionRecord:
    """A finished request; `output_tokens` is the engine's own usage.completion_tokens."""

    query: PredictQuery
    output_tokens: int
    finish_reason: str = "stop"
    completed_at: float = 0.0
    pod: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def learnable(self) -> bool:
        """Aborted or failed requests say nothing about how long the answer would have been."""
        return self.finish_reason in ("stop", "length") and self.output_tokens > 0
