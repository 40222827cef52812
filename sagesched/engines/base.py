"""What the router and the operator must know of one inference engine, behind one interface.

Each engine (vLLM, SGLang, ...) is one module in this package holding one `EngineAdapter`: its
metric names, the parser of its /metrics series into our engine-neutral `PodMetrics`, the direction
of its `priority` field and whether it can resume a stopped request. Code elsewhere asks the
registry (`sagesched.engines.ENGINES`) instead of comparing engine names, so a new engine is a new
module plus one registry entry.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping

from sagesched.podmetrics import MetricsParseError, PodMetrics, Sample


class EngineAdapter(ABC):
    """One engine's conventions. Subclasses set the class attributes and say how the engine reports
    its KV cache; summing the per-rank counts is common to all."""

    name: str  # as in the CRD's spec.engine, a Backend's engine and snapshots' `engine`
    title: str  # as people write it, for messages
    prefix: str  # the namespace of its metric names ("vllm:"): auto-detection looks for it
    label_model: str  # the label naming the served model
    # Exposed series (counters with their `_total`) summed over label sets into a PodMetrics field.
    totals: Mapping[str, str]
    kv_series: frozenset[str]  # exposed series `kv_capacity` and `kv_usage` read
    # The engine serves lower `priority` values first (vLLM) or higher ones (SGLang's default).
    lower_priority_first: bool
    # Its OpenAI server takes continuations (chat `continue_final_message` with
    # `add_generation_prompt`) and aborts a request whose client disconnects: a running request can
    # then be preempted and resumed later.
    takes_continuations: bool

    @property
    def wanted(self) -> frozenset[str]:
        """Every series the parser reads; the scanner skips all others."""
        return frozenset(self.totals) | self.kv_series

    @abstractmethod
    def kv_capacity(self, samples: list[Sample]) -> tuple[int | None, int | None]:
        """(block_size, num_gpu_blocks) as the engine reports them; their product, the KV tokens,
        sizes the cost model's profile for this pod."""

    @abstractmethod
    def kv_usage(self, samples: list[Sample]) -> float:
        """The fraction of KV in use, of the fullest data-parallel rank."""

    def owns(self, samples: Iterable[Sample]) -> bool:
        """Some sample carries this engine's metric prefix."""
        return any(name.startswith(self.prefix) for name, _, _ in samples)

    def parse(self, samples: list[Sample]) -> PodMetrics:
        """The pod's load from its scraped samples. Raises MetricsParseError when none of the
        engine's series are present."""
        if not self.owns(samples):
            raise MetricsParseError(f"no {self.title} series in the metrics text")
        m = PodMetrics(engine=self.name, models=models(samples, self.label_model))
        for name, _, value in samples:
            field = self.totals.get(name)
            if field is not None:
                total = getattr(m, field)  # request counts stay ints, token counters floats
                setattr(m, field, total + (int(value) if isinstance(total, int) else value))
        m.block_size, m.num_gpu_blocks = self.kv_capacity(samples)
        if m.block_size and m.num_gpu_blocks:
            m.kv_capacity_tokens = m.block_size * m.num_gpu_blocks
        m.kv_cache_usage = self.kv_usage(samples)
        return m


def models(samples: Iterable[Sample], label: str) -> list[str]:
    """The distinct values of the model label, in order of appearance."""
    seen: dict[str, None] = {}
    for _, labels, _ in samples:
        model = labels.get(label)
        if model:
            seen[model] = None
    return list(seen)
