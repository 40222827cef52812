"""Service cost of a request on a pod: compute and KV-cache memory, in pod-seconds.

A request with prompt p that has generated x tokens has cost the pod

    compute(x) = prefill(p) + x·(per-token share of a decode step) + attention over its context
    memory(x)  = step · (p·x + x²/2) / KV capacity         (KV token-time as a share of the cache)

Both are polynomials c0 + c1·x + c2·x² in x, so the expected cost under a LengthDistribution is exact
per bin from (E[L], E[L²]) — no sampling. The hybrid cost weighs memory by how scarce it is on the
pod now: a request that holds a lot of memory for long is expensive when memory is what limits the
batch, cheap when compute does.

For the ablation the other cost models of the literature are polynomials too, in the same pod-second
units: `paper` (SageSched's O²/2 + I·O, the KV token-time, no prefill), `output` (O: SSJF, LTR,
TRAIL) and `vtc` (I + 2·O, the Virtual Token Counter's service units).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sagesched.distribution import LengthDistribution, LengthGrid
from sagesched.engine.profile import StepTimeProfile


@dataclass(frozen=True)
class CostPolynomial:
    """cost(x) = c0 + c1·x + c2·x² pod-seconds once x output tokens exist (c0: prefill, paid
    before the first token)."""

    c0: float
    c1: float
    c2: float

    def at(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.c0 + self.c1 * x + self.c2 * np.square(x)

    def spent(self, attained: int) -> float:
        """Cost already paid by a request that has `attained` tokens (prefill counts once started)."""
        return 0.0 if attained <= 0 else float(self.at(attained))

    def expected(self, m1: np.ndarray, m2: np.ndarray) -> np.ndarray:
        """E[cost(L)] from E[L] and E[L²] (per bin, or overall)."""
        return self.c0 + self.c1 * m1 + self.c2 * m2


def _sum_powers(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Σ l, Σ l²) for l = lo..hi, zero where hi < lo."""
    lo = lo.astype(np.float64)
    hi = np.maximum(hi.astype(np.float64), lo - 1)
    s1 = (hi * (hi + 1) - (lo - 1) * lo) / 2.0
    sq = lambda n: n * (n + 1) * (2 * n + 1) / 6.0  # noqa: E731
    return s1, sq(hi) - sq(lo - 1)


_SHAPE_CACHE_LIMIT = 20_000  # ~2 KB each: a long-running router conditions on many (floor, cap) pairs
_shapes: dict[tuple[type, LengthGrid, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def capped_moments(
    dist: LengthDistribution, cap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(p, E[min(L,cap) | bin], E[min(L,cap)² | bin], threshold) per bin.

    max_tokens truncates the output: the engine stops at `cap` whatever the model wanted, so mass
    above it is mass at it. The threshold of a bin is its largest (capped) length — the token counts
    at which the Gittins index may stop a quantum. Only `p` is the distribution's own: the rest
    depends on the bins' bounds, which a distribution type derives from (grid, floor) alone, so it
    is computed once per (type, grid, floor, cap) and shared (every rank refresh asks for it).
    """
    p, lo, hi = dist.support()
    key = (type(dist), dist.grid, dist.floor, cap)
    shape = _shapes.get(key)
    if shape is None:
        if len(_shapes) > _SHAPE_CACHE_LIMIT:
            _shapes.clear()
        shape = _shapes[key] = capped_shape(lo, hi, cap)
    return p, *shape


def capped_shape(lo: np.ndarray, hi: np.ndarray, cap: int | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`capped_moments`' per-bin part from the bins' bounds; elementwise, so `lo`, `hi` and `cap`
    may be stacked rows (one per conditioning, scheduling/outstanding.py)."""
    n = (hi - lo + 1).astype(np.float64)
    below_hi = np.minimum(hi, cap)
    s1, s2 = _sum_powers(lo, below_hi)
    above = np.maximum(hi - np.maximum(below_hi, lo - 1), 0).astype(np.float64)
    m1 = (s1 + above * cap) / n
    m2 = (s2 + above * np.square(np.asarray(cap, dtype=np.float64))) / n
    shape = m1, m2, np.minimum(hi, cap).astype(np.float64)
    for a in shape:
        a.setflags(write=False)
    return shape


COST_MODELS = ("hybrid", "paper", "output", "vtc")


@dataclass(frozen=True)
class CostModel:
    """Turns a pod profile and the current scarcity into cost polynomials.

    `memory_weight` in [0, 1]: 0 = compute alone matters, 1 = memory alone. `memory_weight_for`
    derives it from a pod's live state.
    """

    profile: StepTimeProfile

    def _decode_share_s(self) -> float:
        # marginal time one sequence adds to a decode step at a full batch: its token's GEMM work,
        # its bookkeeping, and its share of the weight-streaming floor
        pr = self.profile
        return pr.per_token_s + pr.per_seq_s + pr.base_s / pr.max_num_seqs

    def _full_step_s(self) -> float:
        pr = self.profile
        return pr.decode_step_seconds(pr.max_num_seqs, pr.kv_capacity_tokens)

    def compute(self, prompt_tokens: int) -> CostPolynomial:
        pr, p = self.profile, float(prompt_tokens)
        prefill = pr.per_token_s * p + pr.per_prefill_attn_s * p * p / 2.0
        ctx = pr.per_ctx_token_s
        return CostPolynomial(prefill, self._decode_share_s() + ctx * (p + 0.5), ctx / 2.0)

    def memory(self, prompt_tokens: int) -> CostPolynomial:
        scale = self._full_step_s() / self.profile.kv_capacity_tokens
        return CostPolynomial(0.0, scale * prompt_tokens, scale / 2.0)

    def output(self, prompt_tokens: int) -> CostPolynomial:
        return CostPolynomial(0.0, self._decode_share_s(), 0.0)

    def vtc(self, prompt_tokens: int) -> CostPolynomial:
        share = self._decode_share_s()
        return CostPolynomial(share * prompt_tokens, 2.0 * share, 0.0)

    def polynomial(self, kind: str, prompt_tokens: int, memory_weight: float) -> CostPolynomial:
        """The cost polynomial of cost model `kind` (one of COST_MODELS)."""
        if kind == "hybrid":
            return self.hybrid(prompt_tokens, memory_weight)
        if kind == "paper":
            return self.memory(prompt_tokens)
        if kind == "output":
            return self.output(prompt_tokens)
        if kind == "vtc":
            return self.vtc(prompt_tokens)
        raise ValueError(f"unknown cost model {kind!r}; known: {', '.join(COST_MODELS)}")

    def hybrid(self, prompt_tokens: int, memory_weight: float) -> CostPolynomial:
        c, m, w = self.compute(prompt_tokens), self.memory(prompt_tokens), memory_weight
        return CostPolynomial(
            (1 - w) * c.c0 + w * m.c0, (1 - w) * c.c1 + w * m.c1, (1 - w) * c.c2 + w * m.c2
        )


def memory_weight_for(kv_usage: float, batch_fill: float) -> float:
    """Which resource is scarce: KV usage against batch fill (running / max_num_seqs, the compute
    side). Equal pressure → equal weight; an idle pod counts both equally."""
    total = kv_usage + batch_fill
    return 0.5 if total <= 1e-9 else float(np.clip(kv_usage / total, 0.0, 1.0))


def expected_cost(poly: CostPolynomial, dist: LengthDistribution, cap: int) -> float:
    p, m1, m2, _ = capped_moments(dist, cap)
    return float(p @ poly.expected(m1, m2))
