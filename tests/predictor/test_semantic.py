"""Semantic history retrieval (the paper's predictor): hand-computed matches, eviction, fallbacks,
both real embedders, the predictor modes, and the replayed stream the eval and the trace builder use."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from sagesched.distribution import grid
from sagesched.predictor.config import PredictorSettings
from sagesched.predictor.core import Predictor
from sagesched.predictor.data import Example
from sagesched.predictor.embedders import CachedEmbedder, HashedEmbedder, MiniLMEmbedder
from sagesched.predictor.evaluation import stream_predictor
from sagesched.predictor.history import HistoryParams, prompt_length_keys
from sagesched.predictor.semantic import SemanticHistory, SemanticParams, WarmStart
from sagesched.predictor.types import CompletionRecord, PredictQuery
from sagesched.predictor.workload import predicted_workload

from tests.predictor.conftest import query

G = grid()
# Exact empirical histograms: no neighbour spread, no floor, no prior (unless a test sets one).
BARE = SemanticParams(window=100, threshold=0.8, min_matches=1, prior_weight=0.0, bin_spread=0.0, floor=0.0)


class TableEmbedder:
    """Prompts named by unit vectors we choose, so every cosine similarity is known by hand."""

    name = "table"
    dim = 2

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        angles = np.radians([float(t) for t in texts])  # the text is the vector's angle in degrees
        return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


def angle(deg: float) -> str:
    return str(deg)


def cos_deg(c: float) -> str:
    """The prompt whose similarity with angle 0 is `c`."""
    return angle(float(np.degrees(np.arccos(c))))


def history(params: SemanticParams = BARE, warm: WarmStart | None = None) -> SemanticHistory:
    return SemanticHistory(TableEmbedder(), G, params, warm)


def one_hot(length: int) -> np.ndarray:
    p = np.zeros(G.num_bins)
    p[G.bin_of(length)] = 1.0
    return p


def test_only_prompts_at_or_above_the_threshold_count_as_matches():
    h = history()
    h.report([query(cos_deg(0.9)), query(cos_deg(0.7)), query(angle(0))], np.array([100, 1000, 300]))
    probs, found = h.predict([query(angle(0))])
    # cos 0.9 and cos 1.0 match; cos 0.7 does not: the empirical distribution of {100, 300}.
    assert found[0] == 2
    assert np.allclose(probs[0], (one_hot(100) + one_hot(300)) / 2)
    # The threshold is inclusive (≥ 0.8): a prompt at exactly 0.8 (float32 rounding aside) matches.
    h2 = history(replace(BARE, threshold=0.8 - 1e-6))
    h2.report([query(cos_deg(0.8))], np.array([50]))
    assert h2.predict([query(angle(0))])[1][0] == 1


def test_window_keeps_the_last_completions_first_in_first_out():
    h = history(replace(BARE, window=3))
    h.report([query(angle(0))] * 4, np.array([10, 100, 1000, 5000]))
    probs, found = h.predict([query(angle(1))])
    assert found[0] == 3  # the oldest (10 tokens) was evicted
    assert probs[0, G.bin_of(10)] == 0.0
    assert np.allclose(probs[0], (one_hot(100) + one_hot(1000) + one_hot(5000)) / 3)


def test_windows_are_per_model():
    h = history()
    h.report([query(angle(0), model="a")], np.array([700]))
    assert h.predict([query(angle(0), model="a")])[1][0] == 1
    assert h.predict([query(angle(0), model="b")])[1][0] == 0


def _warm(lengths: list[int], degrees: list[float], prompt_tokens: int = 50) -> WarmStart:
    v = TableEmbedder().embed([angle(d) for d in degrees])
    return WarmStart("table", v, np.array(lengths), np.full(len(lengths), prompt_tokens))


def test_warm_start_is_searched_only_when_live_matches_are_too_few():
    warm = _warm([2000, 2000], [0.0, 2.0])
    h = history(replace(BARE, min_matches=2), warm)
    h.report([query(angle(0))], np.array([20]))
    probs, found = h.predict([query(angle(0))])
    assert found[0] == 3  # 1 live match < 2: both warm-start matches join it
    assert np.allclose(probs[0], (one_hot(20) + 2 * one_hot(2000)) / 3)
    h.report([query(angle(1))], np.array([20]))
    probs, found = h.predict([query(angle(0))])
    assert found[0] == 2 and np.allclose(probs[0], one_hot(20))  # enough live matches: warm start unused


def test_no_match_falls_back_to_input_length_history_and_few_matches_are_shrunk_toward_it():
    params = replace(BARE, prior_weight=2.0)
    lp = HistoryParams(capacity=64)
    h = SemanticHistory(TableEmbedder(), G, params, length_params=lp)
    h.report([query(angle(0), prompt_tokens=40)], np.array([900]))
    h.report([query(angle(90), prompt_tokens=40)], np.array([30]))
    prior = h.length_history["m"].query(prompt_length_keys(np.array([40])))[0][0]
    # Nothing similar to 45° (cos 0.707 with both): the prediction is the input-length history's.
    probs, found = h.predict([query(angle(45), prompt_tokens=40)])
    assert found[0] == 0 and np.allclose(probs[0], prior)
    # One match: 1 / (1 + 2) of it, 2 / 3 of the prior.
    probs, found = h.predict([query(angle(0), prompt_tokens=40)])
    assert found[0] == 1 and np.allclose(probs[0], one_hot(900) / 3 + 2 * prior / 3)


def test_cold_model_falls_back_to_the_warm_start_lengths_by_prompt_length():
    short, long_ = _warm([10] * 60, [90.0] * 60, prompt_tokens=20), _warm([3000] * 60, [90.0] * 60, prompt_tokens=3000)
    warm = WarmStart("table", np.concatenate([short.vectors, long_.vectors]),
                     np.concatenate([short.lengths, long_.lengths]), np.concatenate([short.prompt_tokens, long_.prompt_tokens]))
    h = history(replace(BARE, prior_weight=2.0), warm)
    probs, found = h.predict([query(angle(0), prompt_tokens=20), query(angle(0), prompt_tokens=3000)])
    assert list(found) == [0, 0]
    near = lambda row, n: probs[row, G.bin_of(n) - 1: G.bin_of(n) + 2].sum()  # noqa: E731 (±1 bin: spread)
    assert near(0, 10) > 0.9 and near(1, 3000) > 0.9


def test_warm_start_from_another_embedder_is_refused():
    with pytest.raises(ValueError, match="embedded with"):
        SemanticHistory(HashedEmbedder(), G, BARE, _warm([10], [0.0]))


def test_warm_start_round_trips_through_a_file(tmp_path):
    warm = _warm([10, 20], [0.0, 30.0])
    back = WarmStart.load(warm.save(tmp_path / "warm.npz"))
    assert back.embedder == "table" and list(back.lengths) == [10, 20]
    assert np.allclose(back.vectors, warm.vectors, atol=1e-3)  # stored as float16


# --- embedders ---------------------------------------------------------------------------------
def test_hashed_embedder_is_deterministic_unit_norm_and_ranks_word_overlap():
    a, b = HashedEmbedder(), HashedEmbedder()
    texts = ["Write a poem about rivers", "write a poem about rivers!", "Write a poem about the sea",
             "Explain quantum computing in simple terms", ""]
    v = a.embed(texts)
    assert np.array_equal(v, b.embed(texts))  # same vectors on every replica
    assert np.allclose(np.linalg.norm(v[:4], axis=1), 1.0) and not v[4].any()
    sims = v[0] @ v.T
    assert sims[1] > 0.8 > sims[2] > sims[3]


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_minilm_finds_a_paraphrase_that_shares_few_words(minilm):
    texts = ["How do I make an HTTP request in Javascript?", "What is the way to send a web request using JS?",
             "Write a sonnet about autumn leaves"]
    v = minilm.embed(texts)
    assert v[0] @ v[1] >= 0.8 > 0.2 > v[0] @ v[2]  # the paraphrase clears the paper's threshold (0.84)
    hashed = HashedEmbedder().embed(texts)
    assert hashed[0] @ hashed[1] < 0.3  # the words barely overlap (0.10): hashed features cannot see it


def test_minilm_batched_equals_one_by_one_and_empty_text_matches_nothing(minilm):
    texts = ["short", "a much longer prompt about the history of the Roman empire " * 30, ""]
    batched = minilm.embed(texts)
    single = np.concatenate([minilm.embed([t]) for t in texts])
    assert np.allclose(batched, single, atol=1e-5)
    assert not batched[2].any()


def test_cached_embedder_embeds_a_prompt_once():
    inner = TableEmbedder()
    cached = CachedEmbedder(inner, capacity=2)
    first = cached.embed(["10", "20"])
    again = cached.embed(["20", "10"])
    assert inner.calls == 1 and np.array_equal(again, first[::-1])
    cached.embed(["30"])  # capacity 2: evicts "20" (least recently used after the reorder)
    cached.embed(["20"])
    assert inner.calls == 3


# --- predictor modes -----------------------------------------------------------------------------
def semantic_predictor(mode: str = "semantic-history", net=None, features=None, **kw) -> Predictor:
    settings = replace(PredictorSettings(), mode=mode, online_every=0, **kw)
    return Predictor(net, settings, features, semantic=SemanticHistory(HashedEmbedder(), G, settings.semantic))


def test_semantic_mode_predicts_the_lengths_of_repeated_prompts_and_needs_no_network():
    p = semantic_predictor()
    prompt = "Explain quantum computing in simple terms"
    p.report([CompletionRecord(query(prompt), n) for n in (300, 400, 500, 350, 450, 380, 420, 390)])
    p.report([CompletionRecord(query("Say hi in one word"), 2) for _ in range(8)])
    pred = p.predict(query(prompt))
    assert pred.source == "history"
    assert 300 <= pred.distribution.quantile(0.5) <= 500
    assert pred.distribution.cdf(100) < 0.05  # the one-word answers of another prompt are not matches


def test_blend_mode_moves_toward_semantic_history_with_the_number_of_matches(trained):
    net, features = trained
    network_only = Predictor(net, replace(PredictorSettings(), online_every=0), features)
    blend = semantic_predictor("blend", net, features, semantic_blend_strength=8.0)
    prompt = "List three prime numbers."
    before = network_only.predict(query(prompt)).distribution.quantile(0.5)
    blend.report([CompletionRecord(query(prompt), 4000) for _ in range(24)])
    after = blend.predict(query(prompt))
    # 24 matches: 24 / (24 + 8) = 3/4 of the mass from 4000-token answers, whatever the network says.
    assert after.history_weight >= 0.75 and after.distribution.survival(3000) > 0.7 and before < 1000


def test_a_mode_that_needs_semantic_history_refuses_to_start_without_it():
    with pytest.raises(ValueError, match="needs a SemanticHistory"):
        Predictor(None, replace(PredictorSettings(), mode="semantic-history"))


# --- the replayed stream -------------------------------------------------------------------------
class Recorder:
    """A method that records how many completions it had been told of at each prediction."""

    def __init__(self) -> None:
        self.known = 0
        self.seen_at_predict: list[int] = []

    def predict_probs(self, queries: Sequence[PredictQuery]):
        self.seen_at_predict.append(self.known)
        return np.full((len(queries), G.num_bins), 1.0 / G.num_bins), np.zeros(len(queries))

    def report(self, records) -> int:
        self.known += len(records)
        return len(records)


def _examples(n: int, repeat: int = 1) -> list[Example]:
    return [Example(f"c{i}", f"prompt {i // repeat}", 8, 3, 10 + i) for i in range(n)]


@pytest.mark.parametrize("lag,expected", [(0, [5, 9, 13, 17]), (6, [5, 5, 7, 11])])
def test_stream_reports_each_completion_report_lag_requests_after_it_arrived(lag, expected):
    r = Recorder()
    stream_predictor(r, _examples(5), _examples(16), batch=4, report_lag=lag)
    assert r.seen_at_predict == expected
    assert r.known == 5 + 16 - lag  # the last `lag` were still in flight when the stream ended


def test_predicted_workload_carries_keys_truths_and_one_distribution_per_mode():
    test = _examples(40, repeat=4)  # each prompt asked 4 times
    w = predicted_workload("t", test, _examples(8), {"semantic-hashed": semantic_predictor(), "idle": Recorder()},
                           report_lag=4)
    assert len(w) == 40 and list(w.outputs) == [e.output_tokens for e in test]
    assert list(w.keys[:8]) == [0, 0, 0, 0, 1, 1, 1, 1] and len(set(w.keys)) == 10
    trace = w.trace("semantic-hashed")
    assert trace.predicted.shape == (40, G.num_bins) and np.allclose(trace.predicted.sum(1), 1.0)
    assert np.array_equal(trace.keys, w.keys) and np.array_equal(trace.outputs, w.outputs)
    assert trace.prediction(0).grid == G


def test_serve_flags_build_a_semantic_predictor_warm_started_from_a_file(tmp_path):
    from sagesched.cli import build_parser
    from sagesched.predictor.cli import _settings
    from sagesched.predictor.server import build_predictor

    prompt = "Translate this sentence into French: the cat sleeps."
    warm = WarmStart("hashed-256-16384", HashedEmbedder().embed([prompt] * 10), np.full(10, 12), np.full(10, 14))
    args = build_parser().parse_args(["predictor", "serve", "--mode", "semantic-history", "--window", "500",
                                      "--similarity-threshold", "0.9", "--warm-start", str(warm.save(tmp_path / "w.npz"))])
    settings = _settings(args)
    assert (settings.semantic.window, settings.semantic.threshold, settings.mode) == (500, 0.9, "semantic-history")
    p = build_predictor(replace(settings, online_every=0))
    assert p.net is None  # the paper's mode loads no network
    pred = p.predict(query(prompt, model="never-seen"))
    assert pred.distribution.quantile(0.5) < 20  # a cold model answers from the warm start's 12-token matches
