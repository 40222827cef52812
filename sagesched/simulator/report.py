"""Per-run summary table (CSV, JSON) and the mean-TTLT-vs-load plot."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from sagesched.simulator.cluster import SimResult

COLUMNS = (
    "trace", "arrivals", "load", "policy", "requests", "ttlt_mean", "ttlt_p50", "ttlt_p90", "ttlt_p99",
    "ttft_mean", "ttft_p99", "queue_mean", "throughput_rps", "preemptions", "router_preemptions",
    "recomputed_tokens", "starvation", "kv_peak", "wall_s",
)


def summarize(r: SimResult, trace: str, arrivals: str, wall_s: float) -> dict[str, float | str | int]:
    ttlt = r.finish - r.arrival
    ttft = r.first_token - r.arrival
    span = float(r.finish.max() - r.arrival.min()) if len(ttlt) else 1.0
    pct = lambda x, q: round(float(np.percentile(x, q)), 4)  # noqa: E731
    return {
        "trace": trace, "arrivals": arrivals, "load": r.load, "policy": r.label, "requests": len(ttlt),
        "ttlt_mean": round(float(ttlt.mean()), 4), "ttlt_p50": pct(ttlt, 50), "ttlt_p90": pct(ttlt, 90),
        "ttlt_p99": pct(ttlt, 99), "ttft_mean": round(float(ttft.mean()), 4), "ttft_p99": pct(ttft, 99),
        "queue_mean": round(float((r.first_scheduled - r.arrival).mean()), 4),
        "throughput_rps": round(len(ttlt) / span, 3), "preemptions": r.preemptions,
        "router_preemptions": r.router_preemptions, "recomputed_tokens": r.recomputed_tokens,
        # seconds of TTLT per output token of the worst-served request: large when something starved
        "starvation": round(float((ttlt / np.maximum(r.output, 1)).max()), 4),
        "kv_peak": round(r.kv_peak, 3), "wall_s": round(wall_s, 2),
    }


def write_tables(rows: list[dict], out: Path, stem: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{stem}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=1) + "\n")


def plot_mean_ttlt(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy in dict.fromkeys(r["policy"] for r in rows):
        pts = sorted((r["load"], r["ttlt_mean"]) for r in rows if r["policy"] == policy)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=policy)
    ax.set_xlabel("offered load (fraction of measured cluster capacity)")
    ax.set_ylabel("mean TTLT (s)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(rows: list[dict]) -> str:
    """Mean TTLT per policy (rows) and load (columns)."""
    loads = sorted({r["load"] for r in rows})
    lines = ["| policy | " + " | ".join(f"{x:.2f}" for x in loads) + " |", "|---" * (len(loads) + 1) + "|"]
    for policy in dict.fromkeys(r["policy"] for r in rows):
        by = {r["load"]: r["ttlt_mean"] for r in rows if r["policy"] == policy}
        lines.append(f"| {policy} | " + " | ".join(f"{by.get(x, float('nan')):.2f}" for x in loads) + " |")
    return "\n".join(lines)
