"""`sagesched bench simspeed`: how many requests the simulator gets through per second of wall time.

Issue 22's target is 16,700 simulated requests/s on 64 pods (a million requests on 64 pods per
minute), for every policy. Each policy replays the same synthetic mix at a fixed load; only
`simulate` is timed (the workload's capacity probe is built once, before). `--cprofile N` runs each
policy again under cProfile and prints its N costliest functions by own time, to show where it goes.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections.abc import Callable
from functools import partial

POLICIES = "sagesched,llmd,fcfs,trail,sjf-mean,round-robin"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simspeed", help="simulated requests per second of wall time, per policy (with a profile)",
        description="Simulate --requests requests of a synthetic mix on --pods pods at --load for each "
                    "policy; print simulated requests per wall second, and optionally a cProfile summary.")
    p.add_argument("--requests", type=int, default=20000, help="requests replayed (default: %(default)s)")
    p.add_argument("--pods", type=int, default=64, help="simulated pods (default: %(default)s)")
    p.add_argument("--load", type=float, default=0.9,
                   help="offered load, a fraction of measured cluster capacity (default: %(default)s)")
    p.add_argument("--trace", default="mixed", help="a synthetic mix (sagesched bench sim --help) (default: %(default)s)")
    p.add_argument("--policies", default=POLICIES, help="comma-separated (default: %(default)s)")
    p.add_argument("--profile", default="h100-llama3-8b", help="engine step-time profile (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the mix and arrivals (default: %(default)s)")
    p.add_argument("--cprofile", type=int, default=0, metavar="N",
                   help="also profile each policy and print its N costliest functions (default: off)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sagesched.engine import load_profile
    from sagesched.simulator.cluster import PolicySpec, SimConfig, simulate
    from sagesched.simulator.mixes import make_mix
    from sagesched.simulator.workload import build_workload

    profile = load_profile(args.profile)
    trace = make_mix(args.trace, 2 * args.requests, args.seed)
    history, replay = trace.split(0.5)
    workload = build_workload(replay, profile, args.pods, args.load, "poisson", args.seed)
    config = SimConfig(args.pods, args.seed)
    print(f"{args.trace}, {len(workload)} requests, {args.pods} pods, load {args.load}, poisson arrivals")
    for label in args.policies.split(","):
        run_once = partial(simulate, workload, PolicySpec.parse(label), profile, history, trace, config)
        wall, cpu = _timed(run_once)
        print(f"{label:14s} {len(workload) / wall:9.0f} simulated req/s ({wall:.1f} s wall, "
              f"{len(workload) / cpu:.0f}/s of CPU time)", flush=True)
        if args.cprofile:
            print(_profile(run_once, args.cprofile))
    return 0


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of `fn()`; on a shared machine the CPU time is the steadier figure."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _profile(fn: Callable[[], object], top: int) -> str:
    """The `top` functions by own time (tottime), with their cumulative time."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return "\n".join(line for line in out.getvalue().splitlines() if line.strip() and "function calls" not in line)
