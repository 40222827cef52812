"""`sagesched bench sim`: replay a trace over N simulated pods for each policy and load."""
from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_POLICIES = (
    "round-robin,least-requests,llmd,fcfs,fcfs:noadm,sjf-mean,sagesched,sagesched:noadm,sagesched:true,oracle"
)


def register_bench(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sim", help="discrete-event cluster simulation of the scheduling policies")
    p.add_argument("--trace", default="conv", help="conv | code | a CSV of the same columns | a predictor export (.npz)")
    p.add_argument("--pods", type=int, default=8)
    p.add_argument("--loads", default="0.5,0.7,0.85,0.95", help="fractions of measured cluster capacity")
    p.add_argument("--policies", default=DEFAULT_POLICIES, help="name[:true|:pred][:noadm], comma-separated (pred: the trace's predictor export)")
    p.add_argument("--arrivals", default="trace", choices=("trace", "poisson", "bursty"))
    p.add_argument("--profile", default="h100-llama3-8b")
    p.add_argument("--history-fraction", type=float, default=0.3)
    p.add_argument("--limit", type=int, default=0, help="replay only the first N requests (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aging-rate", type=float, default=None)
    p.add_argument("--admission-quantile", type=float, default=0.9)
    p.add_argument("--engine-buffer", type=int, default=4)
    p.add_argument("--prefill-budget", type=int, default=None,
                   help="prompt tokens a pod may have waiting for prefill (default: auto from the profile; 0: off)")
    p.add_argument("--out", type=Path, default=Path("bench/results/sim"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from sagesched.engine import load_profile
    from sagesched.scheduling.scheduler import DEFAULT_AGING_RATE
    from sagesched.simulator.cluster import PolicySpec, SimConfig, simulate
    from sagesched.simulator.report import markdown_table, plot_mean_ttlt, summarize, write_tables
    from sagesched.simulator.workload import build_workload
    from sagesched.traces import load_trace

    profile = load_profile(args.profile)
    trace = load_trace(args.trace)
    history, replay = trace.split(args.history_fraction)
    if args.limit:
        replay = replay.slice(0, args.limit)
    config = SimConfig(args.pods, args.seed, args.aging_rate if args.aging_rate is not None else DEFAULT_AGING_RATE,
                       args.admission_quantile, args.engine_buffer, args.prefill_budget)
    rows = []
    for load in (float(x) for x in args.loads.split(",")):
        workload = build_workload(replay, profile, args.pods, load, args.arrivals, args.seed)
        for text in args.policies.split(","):
            t0 = time.perf_counter()
            result = simulate(workload, PolicySpec.parse(text), profile, history, trace, config)
            rows.append(summarize(result, trace.name, args.arrivals, time.perf_counter() - t0))
            r = rows[-1]
            print(f"{trace.name} load={load:.2f} {r['policy']:18s} mean={r['ttlt_mean']:8.3f} "
                  f"p99={r['ttlt_p99']:8.3f} ttft={r['ttft_mean']:7.3f} queue={r['queue_mean']:7.3f} "
                  f"preempt={r['preemptions']:5d} ({r['wall_s']:.1f}s, {r['requests'] / r['wall_s']:.0f} req/s)",
                  flush=True)
    stem = f"{trace.name}-{args.arrivals}-{args.pods}pods"
    write_tables(rows, args.out, stem)
    plot_mean_ttlt(rows, args.out / f"{stem}.png", f"{trace.name} trace, {args.pods} pods, {args.arrivals} arrivals")
    print(markdown_table(rows))
    return 0
