"""`sagesched bench sim`: replay a trace over N simulated pods for each policy and load (and
`sagesched bench simspeed`, the simulator's own speed: speed.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from sagesched.scheduling.preemption import DEFAULT_BUCKET_TOKENS, Preemption
from sagesched.simulator import speed

DEFAULT_POLICIES = "round-robin,least-requests,llmd,fcfs,ssjf,ltr,trail,fastserve,sjf-mean,sagesched,sagesched:true,oracle"


def register_bench(subparsers: argparse._SubParsersAction) -> None:
    speed.register(subparsers)
    p = subparsers.add_parser(
        "sim", help="discrete-event cluster simulation of the scheduling policies",
        description="Replay a trace over N simulated pods for each policy and load; print one line per run, "
                    "write CSV/Markdown tables and a mean-TTLT plot to --out.")
    p.add_argument("--trace", default="conv",
                   help="conv | code | a CSV of the same columns | a predictor export (.npz) | a synthetic mix "
                        "(sharegpt, summarize, write, mixed, heavy: prompts that repeat with varied outputs, each "
                        "request with its true distribution for :pred) (default: %(default)s)")
    p.add_argument("--requests", type=int, default=4000,
                   help="requests a synthetic mix draws, history included (default: %(default)s)")
    p.add_argument("--pods", type=int, default=8, help="number of simulated pods (default: %(default)s)")
    p.add_argument("--loads", default="0.5,0.7,0.85,0.95",
                   help="offered loads, comma-separated fractions of measured cluster capacity (default: %(default)s)")
    p.add_argument("--policies", default=DEFAULT_POLICIES,
                   help="name[:true|:pred][:memgate][:nopreempt][:noise][:cost=hybrid|paper|output|vtc], comma-separated "
                        "(pred: the trace's own per-request distributions; default: %(default)s)")
    p.add_argument("--arrivals", default="trace", choices=("trace", "poisson", "bursty"),
                   help="arrival process: the trace's own timestamps rescaled to the load, Poisson, or bursty "
                        "(gamma gaps) (default: %(default)s)")
    p.add_argument("--profile", default="h100-llama3-8b",
                   help="engine step-time profile name in sagesched/engine/profiles/ (default: %(default)s)")
    p.add_argument("--history-fraction", type=float, default=0.3,
                   help="leading fraction of the trace used as history for the length estimator, not replayed "
                        "(default: %(default)s)")
    p.add_argument("--limit", type=int, default=0, help="replay only the first N requests (0: all)")
    p.add_argument("--seed", type=int, default=0, help="random seed for arrivals and the engines (default: %(default)s)")
    p.add_argument("--aging-rate", type=float, default=None,
                   help="a waiting request's rank shrinks by e^(-rate*wait/T), T the running mean time on a pod "
                        "(default: the scheduler's DEFAULT_AGING_RATE)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="engine max_num_batched_tokens for every pod (engine configuration; default: the profile's)")
    p.add_argument("--bucket-tokens", type=int, default=DEFAULT_BUCKET_TOKENS,
                   help="tokens per refresh bucket of a running request's index (default: %(default)s)")
    p.add_argument("--min-gain", type=float, default=Preemption.min_gain,
                   help="share of the head's rank a victim's must exceed it by (default: %(default)s)")
    p.add_argument("--max-preemptions", type=int, default=Preemption.max_per_request,
                   help="preemptions per request at most (default: %(default)s)")
    p.add_argument("--admission-quantile", type=float, default=0.9,
                   help="quantile of the KV its requests may still need that must fit a pod's free KV "
                        "(default: %(default)s)")
    p.add_argument("--engine-buffer", type=int, default=4,
                   help="requests a pod may have waiting at its engine beyond its running slots "
                        "(default: %(default)s)")
    p.add_argument("--prefill-budget", type=int, default=None,
                   help="prompt tokens a pod may have waiting for prefill (default: auto from the profile; 0: off)")
    p.add_argument("--out", type=Path, default=Path("bench/results/sim"),
                   help="folder for the result tables and plot (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from sagesched.engine import load_profile
    from sagesched.scheduling.scheduler import DEFAULT_AGING_RATE
    from sagesched.simulator.cluster import PolicySpec, SimConfig, simulate
    from sagesched.simulator.mixes import MIXES, make_mix
    from sagesched.simulator.report import markdown_table, plot_mean_ttlt, summarize, write_tables
    from sagesched.simulator.workload import build_workload
    from sagesched.traces import load_trace

    profile = load_profile(args.profile)
    if args.batch_tokens:
        profile = profile.with_overrides(max_num_batched_tokens=args.batch_tokens)
    trace = make_mix(args.trace, args.requests, args.seed) if args.trace in MIXES else load_trace(args.trace)
    history, replay = trace.split(args.history_fraction)
    if args.limit:
        replay = replay.slice(0, args.limit)
    config = SimConfig(args.pods, args.seed, args.aging_rate if args.aging_rate is not None else DEFAULT_AGING_RATE,
                       args.admission_quantile, args.engine_buffer, args.prefill_budget,
                       Preemption(bucket_tokens=args.bucket_tokens, min_gain=args.min_gain,
                                  max_per_request=args.max_preemptions))
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
