"""`sagesched bench preemption`: live preemption on emulated pods, beside the simulator's forecast.

The workload: emulated vLLM pods (memory-bound by default: a KV cache small for their batch;
priority scheduling), the simulator's `heavy` mix (outputs spread widely even for one prompt, so a request's
length is uncertain until it runs), Poisson arrivals at a load calibrated to the pods' capacity, and
requests that ask for their length by `min_tokens` alone (pods that stop as early as allowed), so the
router learns nothing from them that the simulator's scheduler would not know. Every policy runs on
identically configured fresh pods; then the simulator runs the same requests on the same pods and
profile, policy by policy. Latencies are in emulated seconds on the clock the pods share (see
bench/demo.py: host stalls are taken out of it).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Emulated pods with the h100-llama3-8b step times and a small batch, so that one process can stream
# what they generate: memory-bound, KV for about half the batch (24 sequences, 12,288 KV tokens);
# compute-bound, KV to spare for a batch of 4 (a resume finds its blocks still cached).
PODS = {"memory-bound": {"max_num_seqs": 24, "num_gpu_blocks": 768},
        "compute-bound": {"max_num_seqs": 4, "num_gpu_blocks": 4096}}
MECHANISMS = {
    "sagesched": "central queue, Gittins index refreshed per bucket, live preemption (stop + resume as continuation)",
    "sagesched:nopreempt": "central queue, Gittins index without preemption (expected-cost order)",
    "llmd": "no central queue: llm-d-style scorers (queue + KV) pick a pod at arrival",
    "fcfs": "central queue in arrival order",
}


@dataclass
class Row:
    policy: str
    live: dict  # mean/p50/p90/p99 TTLT, emulated s
    live_ttft: float
    simulated: dict  # the simulator's summary row
    router_preemptions: int
    prefix_hit_tokens: int
    host: str
    ok: int
    requests: int

    @property
    def ratio(self) -> float:
        return self.live["mean"] / self.simulated["ttlt_mean"]


def pod_profile(directory: Path, kind: str) -> str:
    from sagesched.engine.profile import load_profile

    profile = load_profile().with_overrides(name=f"bench-{kind}-pod", **PODS[kind],
                                            provenance=f"h100-llama3-8b, {kind} (bench preemption)")
    path = directory / f"bench-{kind}-pod.json"
    path.write_text(profile.to_json())
    return str(path)


def make_workload(args: argparse.Namespace, profile: str):
    """(history trace, full trace, replayed Workload) of the heavy mix at the asked load."""
    from sagesched.engine.profile import load_profile
    from sagesched.simulator.mixes import make_mix
    from sagesched.simulator.workload import build_workload

    trace = make_mix("heavy", 2 * args.requests, seed=args.seed)
    history, replay = trace.split(0.5)
    workload = build_workload(replay, load_profile(profile), args.pods, args.load, "poisson", args.seed)
    return history, trace, workload


def simulate(label: str, args: argparse.Namespace, profile: str, history, trace, workload) -> dict:
    """The simulator with the live router's defaults (engine buffer, preemption, aging)."""
    from sagesched.engine.profile import load_profile
    from sagesched.simulator.cluster import PolicySpec, SimConfig, simulate as run
    from sagesched.simulator.report import summarize

    config = SimConfig(args.pods, args.seed)
    return summarize(run(workload, PolicySpec.parse(label), load_profile(profile), history, trace, config),
                     "heavy", "poisson", 0.0)


async def _live(label: str, args: argparse.Namespace, profile: str, history, workload):
    from sagesched.bench.demo import LiveSetup, run_policy

    setup = LiveSetup(args.pods, profile, args.time_scale, args.seed, scheduling="priority", hide_lengths=True)
    work = (workload.arrivals, workload.prompts, workload.outputs)
    return await run_policy(label, setup, (history.prompts, history.outputs), work)


def run(args: argparse.Namespace) -> list[Row]:
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        profile = pod_profile(Path(tmp), args.pod)
        history, trace, workload = make_workload(args, profile)
        pod = PODS[args.pod]
        print(f"bench preemption: {args.pods} {args.pod} emulated pods ({pod['max_num_seqs']} seqs, "
              f"{pod['num_gpu_blocks'] * 16} KV tokens), {len(workload.prompts)} heavy-tailed requests at load "
              f"{args.load} ({workload.rate:.2f} req/s), mean prompt {workload.prompts.mean():.0f} / output "
              f"{workload.outputs.mean():.0f} tokens (P99 {np.percentile(workload.outputs, 99):.0f}); time scale "
              f"{args.time_scale}", flush=True)
        for label in policies:
            live = asyncio.run(_live(label, args, profile, history, workload))
            sim = simulate(label, args, profile, history, trace, workload)
            rows.append(Row(label, live.engine.stats("ttlt"), live.engine.stats("ttft")["mean"], sim,
                            live.router_preemptions, live.prefix_hit_tokens, live.host.describe(),
                            len(live.engine.ok), len(live.engine.outcomes)))
            r = rows[-1]
            print(f"  {label:<20} live {r.live['mean']:.2f} s, simulator {sim['ttlt_mean']:.2f} s, "
                  f"{r.ok}/{r.requests} ok, {r.router_preemptions} router preemptions; host: {r.host}", flush=True)
    return rows


def table(rows: list[Row]) -> str:
    head = ("| policy | router-side mechanisms | live mean TTLT | P50 | P99 | live mean TTFT | simulator mean TTLT | "
            "live / simulator | router preemptions (live / sim) | prefix-cache hit tokens |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r.policy} | {MECHANISMS.get(r.policy, '')} | {r.live['mean']:.2f} | {r.live['p50']:.2f} | "
            f"{r.live['p99']:.2f} | {r.live_ttft:.3f} | {r.simulated['ttlt_mean']:.2f} | {r.ratio:.2f} | "
            f"{r.router_preemptions} / {r.simulated['router_preemptions']} | {r.prefix_hit_tokens} |")
    base = {r.policy: r.live["mean"] for r in rows}
    if "sagesched" in base and "llmd" in base:
        lines.append(f"\nlive mean TTLT, sagesched vs llmd: {base['sagesched'] / base['llmd'] - 1:+.1%}")
    return "\n".join(lines)


def summarize(directory: Path) -> str:
    """Per pod shape and policy, over the runs (`--json` files) in `directory`: mean live and
    simulated TTLT with each run's figure, live/simulated ratios, router preemptions, and each
    policy's live mean relative to llmd's on the same runs."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        for row in data["rows"]:
            runs.setdefault((data["args"]["pod"], row["policy"]), []).append(row | {"seed": data["args"]["seed"]})
    lines = ["| pods | policy | seeds | live mean TTLT (per seed) | simulator (per seed) | live / simulator | "
             "vs llmd, live (per seed) | router preemptions live / sim |", "|" + "---|" * 8]
    for (pod, policy), rows in runs.items():
        llmd = {r["seed"]: r["live"]["mean"] for r in runs.get((pod, "llmd"), [])}
        live = [r["live"]["mean"] for r in rows]
        sim = [r["simulated"]["ttlt_mean"] for r in rows]
        rel = [r["live"]["mean"] / llmd[r["seed"]] - 1 for r in rows if r["seed"] in llmd]
        lines.append(
            f"| {pod} | {policy} | {', '.join(str(r['seed']) for r in rows)} | {np.mean(live):.2f} "
            f"({', '.join(f'{x:.2f}' for x in live)}) | {np.mean(sim):.2f} ({', '.join(f'{x:.2f}' for x in sim)}) | "
            f"{', '.join(f'{a / b:.2f}' for a, b in zip(live, sim))} | "
            f"{np.mean(rel):+.1%} ({', '.join(f'{x:+.1%}' for x in rel)}) | "
            f"{sum(r['router_preemptions'] for r in rows)} / {sum(r['simulated']['router_preemptions'] for r in rows)} |")
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    if args.summarize:
        print(summarize(Path(args.summarize)))
        return 0
    rows = run(args)
    print("\n" + table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args) | {"func": None}, "pod": PODS[args.pod],
                                               "rows": [vars(r) for r in rows]}, indent=2, default=float))
    return 0 if all(r.ok == r.requests for r in rows) else 1


def register_bench(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("preemption", help="live preemption on memory-bound emulated pods vs the simulator",
                         description="Replay a heavy-tailed workload through a router per policy in front of fresh "
                                     "memory-bound emulated vLLM pods, then simulate the same requests, and print "
                                     "both (emulated seconds).")
    p.add_argument("--pods", type=int, default=2, help="emulated pods (default %(default)s)")
    p.add_argument("--pod", choices=sorted(PODS), default="memory-bound", help="pod shape (default %(default)s)")
    p.add_argument("--requests", type=int, default=300, help="requests replayed (default %(default)s)")
    p.add_argument("--load", type=float, default=1.0,
                   help="arrival rate as a share of the pods' saturated capacity (default %(default)s)")
    p.add_argument("--time-scale", type=float, default=1.0, help="wall s per emulated s (default %(default)s)")
    p.add_argument("--policies", default="sagesched,sagesched:nopreempt,llmd",
                   help="comma-separated, simulator spelling (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="workload and arrival seed (default %(default)s)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--summarize", default=None, metavar="DIR",
                   help="run nothing: print the summary table of the --json files in DIR")
    p.set_defaults(func=run_bench)
