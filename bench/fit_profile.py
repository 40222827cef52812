"""Fit StepTimeProfile coefficients to measured step times (CPU, numpy only).

Why numpy only: the fit must re-run in CI from the committed raw CSV, and the project does not
depend on scipy. The problem is small and has structure we can use exactly:

    step_s = max(base_s, per_token_s*T) + per_seq_s*S + per_ctx_token_s*Ctx + per_prefill_attn_s*P

For a fixed split of the points into "weight-streaming floor" (T <= T*) and "compute" (T > T*) the
model is linear in the five coefficients, so minimising the squared *relative* error with all
coefficients >= 0 is a non-negative least-squares problem (rows divided by the measured time). The
split is a threshold on batched tokens T, so we try every threshold between distinct T values, then
re-assign points by the fitted crossover until the split is stable, and keep the lowest objective of
the true (max) model. Deterministic: same CSV, same coefficients.

Held-out check: about 20% of points, drawn per kind (prefill/decode/mixed) with a fixed seed, are
left out of the fit and scored afterwards; the median absolute % error on them is the figure the
profile documents.

CLI:  python3 bench/fit_profile.py bench/results/calibration/steps-llama3-8b.csv [--profile OUT.json ...]
(`--card-gib 48` sizes the profile's KV cache for a 48 GiB card from the same run's memory facts.)
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

COEFS = ("base_s", "per_token_s", "per_seq_s", "per_ctx_token_s", "per_prefill_attn_s")
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 20240917


def load_rows(path: Path) -> dict[str, np.ndarray]:
    """The columns the fit needs from a calibrate_gpu.py CSV."""
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return {
        "kind": np.array([r["kind"] for r in rows]),
        "T": np.array([float(r["batched_tokens"]) for r in rows]),
        "S": np.array([float(r["num_seqs"]) for r in rows]),
        "Ctx": np.array([float(r["decode_context_tokens"]) for r in rows]),
        "P": np.array([float(r["prefill_attention_pairs"]) for r in rows]),
        "y": np.array([float(r["median_s"]) for r in rows]),
    }


def holdout_mask(kinds: np.ndarray, fraction: float = HOLDOUT_FRACTION, seed: int = HOLDOUT_SEED) -> np.ndarray:
    """True for held-out points: round(fraction * n) of each kind, chosen by a seeded permutation."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(kinds), dtype=bool)
    for kind in sorted(set(kinds.tolist())):
        idx = np.flatnonzero(kinds == kind)
        k = int(round(fraction * len(idx)))
        mask[rng.permutation(idx)[:k]] = True
    return mask


def nnls(A: np.ndarray, b: np.ndarray, max_iter: int = 200) -> np.ndarray:
    """Lawson-Hanson active-set non-negative least squares: min ||Ax - b|| with x >= 0."""
    m, n = A.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = A.T @ (b - A @ x)
    tol = 10 * np.finfo(float).eps * np.linalg.norm(A, 1) * max(m, n)
    for _ in range(max_iter):
        if passive.all() or (w[~passive] <= tol).all():
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        w = A.T @ (b - A @ x)
    return x


def predict(coef: np.ndarray, d: dict[str, np.ndarray]) -> np.ndarray:
    """The StepTimeProfile formula, vectorised (same as StepTimeProfile.step_seconds)."""
    base, pt, ps, pc, pa = coef
    return np.maximum(base, pt * d["T"]) + ps * d["S"] + pc * d["Ctx"] + pa * d["P"]


def _solve_split(d: dict[str, np.ndarray], floor: np.ndarray) -> np.ndarray:
    """NNLS on relative error with the given points pinned to the floor term (linear model)."""
    X = np.column_stack((floor.astype(float), np.where(floor, 0.0, d["T"]), d["S"], d["Ctx"], d["P"]))
    A = X / d["y"][:, None]
    scale = np.linalg.norm(A, axis=0)
    scale[scale == 0] = 1.0
    return nnls(A / scale, np.ones(len(d["y"]))) / scale


def _objective(coef: np.ndarray, d: dict[str, np.ndarray]) -> float:
    return float(np.sum((predict(coef, d) / d["y"] - 1.0) ** 2))


def fit_coefficients(d: dict[str, np.ndarray]) -> np.ndarray:
    """Least squares on relative error over all floor/compute splits; see the module docstring."""
    ts = np.unique(d["T"])
    thresholds = np.concatenate(([ts[0] - 1.0], (ts[:-1] + ts[1:]) / 2.0, [ts[-1] + 1.0]))
    best, best_obj = None, np.inf
    for thr in thresholds:
        floor = d["T"] <= thr
        coef = _solve_split(d, floor)
        for _ in range(20):  # let the crossover the coefficients imply re-assign points
            new_floor = coef[0] >= coef[1] * d["T"]
            if np.array_equal(new_floor, floor):
                break
            floor = new_floor
            coef = _solve_split(d, floor)
        obj = _objective(coef, d)
        if obj < best_obj - 1e-15:
            best, best_obj = coef, obj
    assert best is not None
    return best


def _subset(d: dict[str, np.ndarray], m: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[m] for k, v in d.items()}


def abs_pct_errors(coef: np.ndarray, d: dict[str, np.ndarray]) -> np.ndarray:
    return 100.0 * np.abs(predict(coef, d) / d["y"] - 1.0)


def fit_file(path: Path) -> dict:
    """Fit on ~80% of a CSV's points and score the rest; returns the profile's `fit` record."""
    d = load_rows(path)
    held = holdout_mask(d["kind"])
    train, test = _subset(d, ~held), _subset(d, held)
    coef = fit_coefficients(train)
    e_train, e_test = abs_pct_errors(coef, train), abs_pct_errors(coef, test)
    e_all = abs_pct_errors(coef, d)
    by_kind = {
        k: round(float(np.median(e_all[d["kind"] == k])), 3) for k in sorted(set(d["kind"].tolist()))
    }
    return {
        "method": "numpy NNLS on relative error, floor/compute split searched (bench/fit_profile.py)",
        "raw": str(path),
        "holdout_fraction": HOLDOUT_FRACTION,
        "holdout_seed": HOLDOUT_SEED,
        "train_points": int((~held).sum()),
        "holdout_points": int(held.sum()),
        "coefficients": {name: float(c) for name, c in zip(COEFS, coef)},
        "train_median_abs_pct_err": round(float(np.median(e_train)), 3),
        "holdout_median_abs_pct_err": round(float(np.median(e_test)), 3),
        "holdout_max_abs_pct_err": round(float(np.max(e_test)), 3),
        "all_median_abs_pct_err_by_kind": by_kind,
    }


def kv_blocks(facts: dict, total_bytes: float | None = None) -> int:
    """vLLM's KV sizing from a run's memory facts; `total_bytes` sizes it for another card.

    (gpu_memory_utilization x total - weights - activation peak - non-torch) // (block x KV bytes per
    token). With another total, the weights, activation peak and non-torch memory are still the ones
    measured on the run's GPU: the same model on a card of that size.
    """
    total = facts["total_bytes"] if total_bytes is None else total_bytes
    budget = (
        facts["gpu_memory_utilization"] * total
        - facts["weight_bytes"]
        - facts["activation_peak_bytes"]
        - facts["non_torch_bytes"]
    )
    return int(budget // (facts["block_size"] * facts["kv_bytes_per_token"]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="fit StepTimeProfile coefficients from calibrate_gpu.py rows")
    ap.add_argument("csv", type=Path)
    ap.add_argument("--profile", type=Path, help="write a profile JSON here")
    ap.add_argument("--run-json", type=Path, help="run.json from the same run (GPU name, KV blocks)")
    ap.add_argument("--name", help="profile name, e.g. h100-llama3-8b")
    ap.add_argument("--model-desc", default="")
    ap.add_argument("--provenance", default="")
    ap.add_argument("--gpu", help="the profile's gpu text (default: the run's GPU name)")
    ap.add_argument(
        "--card-gib",
        type=float,
        help="size num_gpu_blocks for a card of this many GiB (default: the measured card's total), "
        "keeping the run's measured weights, activation peak and non-torch memory",
    )
    ap.add_argument("--max-model-len", type=int, default=8192)
    args = ap.parse_args(argv)
    fit = fit_file(args.csv)
    print(json.dumps(fit, indent=2))
    if args.profile:
        run = json.loads(args.run_json.read_text())
        model_name = Path(args.csv).stem.removeprefix("steps-")
        facts = run["models"][model_name]
        total = None if args.card_gib is None else args.card_gib * 2**30
        num_gpu_blocks = kv_blocks(facts, total)
        if num_gpu_blocks * facts["block_size"] < args.max_model_len:
            ap.error(f"{num_gpu_blocks} blocks cannot hold one {args.max_model_len}-token sequence")
        profile = {
            "name": args.name,
            "gpu": args.gpu or run["gpu"],
            "model": args.model_desc or model_name,
            **fit["coefficients"],
            "block_size": facts["block_size"],
            "num_gpu_blocks": num_gpu_blocks,
            "max_num_seqs": 256,
            "max_num_batched_tokens": 8192,
            "max_model_len": args.max_model_len,
            "provenance": args.provenance,
            "fit": fit,
        }
        args.profile.write_text(json.dumps(profile, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
