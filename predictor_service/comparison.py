"""Predictor modes side by side on the ShareGPT test split (`sagesched predictor eval`).

Every method sees the same stream: history-based ones start from the last WARM_HISTORY training
completions (reported as if served), semantic history also searches a dataset warm-start slice of
WARM_SLICE earlier training completions when live matches are few, and the test split is predicted
in batches of 32, each batch's true lengths reported before the next (what a router does).

Latency is CPU time of the process (time.process_time, torch on one thread as in serving) per
request, for batches of 1 and 32 of unseen validation prompts (so no embedding cache helps),
methods interleaved round by round so a busy neighbour on the shared CPU slows all of them alike.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from sagesched.distribution import LengthDistribution, grid
from sagesched.predictor.config import PredictorSettings
from sagesched.predictor.core import Predictor
from sagesched.predictor.data import Example, cache_dir
from sagesched.predictor.embedders import CachedEmbedder, Embedder, HashedEmbedder, MiniLMEmbedder, embed_many
from sagesched.predictor.evaluation import Scores, StreamedMethod, score_probs, stream_predictor
from sagesched.predictor.features import FeatureConfig, prompt_token_estimate
from sagesched.predictor.model import LengthNet
from sagesched.predictor.semantic import LENGTH_PRIOR, SemanticHistory, WarmStart
from sagesched.predictor.training import example_query
from sagesched.predictor.types import CompletionRecord, PredictQuery

WARM_HISTORY = 4096
WARM_SLICE = 10_000
REPEATED_AT_LEAST = 3  # a prompt asked this often in the whole dataset counts as repeated
LATENCY_ROUNDS = 40


def corpus_vectors(embedder: Embedder, texts: Sequence[str], tag: str) -> np.ndarray:
    """Vectors of a fixed corpus, cached on disk by content (MiniLM takes minutes on this CPU)."""
    digest = hashlib.sha1("\0".join(texts).encode()).hexdigest()[:16]
    path = cache_dir() / f"vectors_{embedder.name}_{tag}_{digest}.npy"
    if path.exists():
        return np.load(path)
    vectors = embed_many(embedder, texts)
    np.save(path, vectors)
    return vectors


@dataclass(frozen=True)
class EvalData:
    """The stream every method sees."""

    warm_slice: list[Example]
    warm_history: list[Example]
    test: list[Example]
    latency_queries: list[Example]

    @classmethod
    def from_splits(cls, splits: dict[str, list[Example]], test_limit: int | None = None) -> "EvalData":
        train = splits["train"]
        return cls(train[-(WARM_HISTORY + WARM_SLICE):-WARM_HISTORY], train[-WARM_HISTORY:],
                   splits["test"][:test_limit], splits["val"][: 33 * LATENCY_ROUNDS])


def preload(embedder: CachedEmbedder, data: EvalData) -> None:
    """Fill the embedder's cache with every streamed prompt, computed (or read) once."""
    texts = [e.prompt for e in data.warm_history + data.test]
    for text, v in zip(texts, corpus_vectors(embedder.inner, texts, "stream")):
        embedder.put(text, v)


def semantic_predictor(embedder: Embedder, data: EvalData, settings: PredictorSettings,
                       net: LengthNet | None = None, features: FeatureConfig | None = None) -> Predictor:
    """A Predictor in settings.mode over `embedder`, warm-started from the data's slice."""
    inner = embedder.inner if isinstance(embedder, CachedEmbedder) else embedder
    vectors = corpus_vectors(inner, [e.prompt for e in data.warm_slice], "warm")
    warm = WarmStart(embedder.name, vectors, np.array([e.output_tokens for e in data.warm_slice]),
                     np.array([e.prompt_tokens for e in data.warm_slice]))
    semantic = SemanticHistory(embedder, grid(), settings.semantic, warm)
    return Predictor(net, settings, features, semantic=semantic)


class BucketFloor:
    """AIBrix-style prompt-length buckets (the simulator's default estimator): one training-set
    histogram per power-of-two prompt length (the global one where a bucket has < 20 examples).
    Static: learns nothing from reports."""

    def __init__(self, train: Sequence[Example], buckets: int = 24) -> None:
        lengths = np.array([e.output_tokens for e in train])
        which = self._bucket(np.array([e.prompt_tokens for e in train]), buckets)
        overall = LengthDistribution.from_samples(lengths, smoothing=0.01).probs
        self.table = np.stack([LengthDistribution.from_samples(lengths[which == b], smoothing=0.01).probs
                               if (which == b).sum() >= 20 else overall for b in range(buckets)])

    @staticmethod
    def _bucket(prompt_tokens: np.ndarray, buckets: int) -> np.ndarray:
        return np.minimum(np.floor(np.log2(np.maximum(prompt_tokens, 1))).astype(int), buckets - 1)

    def predict_probs(self, queries: Sequence[PredictQuery]) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.array([prompt_token_estimate(q) for q in queries])
        return self.table[self._bucket(tokens, len(self.table))], np.zeros(len(queries))

    def report(self, records: Sequence[CompletionRecord]) -> int:
        return 0


# Short ids (what the trace builder and the simulator use) → the eval table's names.
METHOD_NAMES = {
    "buckets": "prompt-length buckets (floor)",
    "input-length": "input-length history (paper's ablation)",
    "network": "ours: torch network + history + drift",
    "semantic-hashed": "semantic history, hashed words (paper's method)",
    "semantic-minilm": "semantic history, MiniLM (paper's method)",
    "blend-hashed": "blend: network + semantic history (hashed words)",
    "blend-minilm": "blend: network + semantic history (MiniLM)",
}


def build_methods(net: LengthNet, features: FeatureConfig, data: EvalData, train: Sequence[Example],
                  embedders: dict[str, Embedder]) -> dict[str, Callable[[], StreamedMethod]]:
    """Method id → factory of a fresh method (fresh: each stream starts from the same warm state).
    `embedders` maps "hashed"/"minilm" to the embedder of that kind's semantic and blend methods."""
    base = replace(PredictorSettings(), online_every=0, prediction_memory=0)
    sem = replace(base, mode="semantic-history")
    methods: dict[str, Callable[[], StreamedMethod]] = {
        "buckets": lambda: BucketFloor(train),
        "input-length": lambda: Predictor(None, replace(base, history_key="prompt_length", blend_strength=1e-9,
                                                        history=LENGTH_PRIOR), features),
        "network": lambda: Predictor(net, base, features),
    }
    blend = replace(base, mode="blend")
    for kind, emb in embedders.items():
        methods[f"semantic-{kind}"] = lambda emb=emb: semantic_predictor(emb, data, sem)
        methods[f"blend-{kind}"] = lambda emb=emb: semantic_predictor(emb, data, blend, net, features)
    return methods


def repeated_mask(test: Sequence[Example], everything: Sequence[Example]) -> np.ndarray:
    """Test requests whose exact prompt appears ≥ REPEATED_AT_LEAST times in the dataset (the same
    prompt sampled by different users: varied lengths for one text, the paper's uncertainty)."""
    from collections import Counter

    counts = Counter(e.prompt for e in everything)
    return np.array([counts[e.prompt] >= REPEATED_AT_LEAST for e in test])


@dataclass
class Latency:
    batch: int
    p10_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float


def time_methods(methods: dict[str, StreamedMethod], queries: list[PredictQuery], rounds: int = LATENCY_ROUNDS
                 ) -> dict[str, list[Latency]]:
    """Per-request CPU time of predict_probs at batch 1 and 32, methods interleaved per round."""
    from threadpoolctl import threadpool_limits

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    samples: dict[tuple[str, int], list[float]] = {(m, b): [] for m in methods for b in (1, 32)}
    try:
        with threadpool_limits(1):  # numpy's BLAS on one thread, as `predictor serve` runs it
            for r in range(rounds):
                for b in (1, 32):
                    chunk = queries[r * 33 + (b == 32): r * 33 + (b == 32) + b]
                    for name, method in methods.items():
                        start = time.process_time()
                        method.predict_probs(chunk)
                        samples[(name, b)].append((time.process_time() - start) / b * 1e3)
    finally:
        torch.set_num_threads(torch_threads)
    return {m: [Latency(b, *np.percentile(samples[(m, b)], [10, 50, 90, 99]).tolist()) for b in (1, 32)]
            for m in methods}


@dataclass
class Row:
    method: str
    all: Scores
    repeated: Scores
    latency: list[Latency]

    def to_dict(self) -> dict:
        return {"method": self.method, "test": asdict(self.all), "repeated_prompts": asdict(self.repeated),
                "latency_ms_per_request": [asdict(x) for x in self.latency]}


def eval_embedders(kinds: Sequence[str], data: EvalData) -> dict[str, CachedEmbedder]:
    """Each requested embedder, its cache preloaded with every streamed prompt."""
    makers = {"hashed": HashedEmbedder, "minilm": MiniLMEmbedder}
    out = {}
    for kind in kinds:
        out[kind] = CachedEmbedder(makers[kind](), 2 * (len(data.test) + WARM_HISTORY))
        preload(out[kind], data)
    return out


def compare_modes(net: LengthNet, features: FeatureConfig, splits: dict[str, list[Example]],
                  embedder_kinds: Sequence[str] = ("hashed", "minilm"), test_limit: int | None = None,
                  log: Callable[[str], None] = print) -> list[Row]:
    """Stream the test split through every method, score all and the repeated-prompt subset, time them."""
    data = EvalData.from_splits(splits, test_limit)
    methods = build_methods(net, features, data, splits["train"], eval_embedders(embedder_kinds, data))
    y = np.array([e.output_tokens for e in data.test])
    repeated = repeated_mask(data.test, [e for s in splits.values() for e in s])
    warmed: dict[str, StreamedMethod] = {}
    scored = {}
    for key, make in methods.items():
        method = warmed[key] = make()
        probs = stream_predictor(method, data.warm_history, data.test)
        name = METHOD_NAMES[key]
        scored[key] = (score_probs(name, probs, y), score_probs(name, probs[repeated], y[repeated]))
        log(f"{name}: {scored[key][0]}")
    for method in warmed.values():
        semantic = getattr(method, "semantic", None)
        if semantic is not None:  # timed as a new prompt costs in serving: embedded once, uncached
            semantic.embedder = semantic.embedder.inner
    latency = time_methods(warmed, [example_query(e) for e in data.latency_queries])
    return [Row(METHOD_NAMES[k], *scored[k], latency[k]) for k in methods]


TABLE_HEADER = ("| method | NLL ↓ | CRPS ↓ | Kendall τ ↑ | cover 50% | cover 90% "
                "| repeated: NLL | repeated: τ | repeated: cover 90% "
                "| CPU ms/req, batch 1: p50 [p10–p90] | batch 32: p50 [p10–p90] | batch 32 p99 |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(r: Row) -> str:
    a, rep = r.all, r.repeated
    b1, b32 = r.latency
    return (f"| {r.method} | {a.nll:.3f} | {a.rps:.3f} | {a.tau:.3f} | {a.cover50:.3f} | {a.cover90:.3f} "
            f"| {rep.nll:.3f} | {rep.tau:.3f} | {rep.cover90:.3f} "
            f"| {b1.p50_ms:.3f} [{b1.p10_ms:.3f}–{b1.p90_ms:.3f}] "
            f"| {b32.p50_ms:.3f} [{b32.p10_ms:.3f}–{b32.p90_ms:.3f}] | {b32.p99_ms:.3f} |")
