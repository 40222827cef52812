"""`sagesched demo`: the embedded default in one command.

Starts emulated vLLM pods (in this process, time-scaled) and a router in front of them, replays a
slice of an Azure trace (code by default) through the router with the official `openai` client — once
per policy, on fresh pods — and prints a comparison of TTLT, TTFT and throughput. No Kubernetes, no
Redis. Each request asks for exactly its traced output length (max_tokens + ignore_eos).

The pods are deliberately small (few sequences, little KV) so that a short replay on a laptop already
queues: scheduling only matters when there is a queue, and a big emulated H100 would need more
tokens per second than one Python process can stream.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = "llama-3-8b"
HISTORY_REQUESTS = 3000  # trace requests before the replayed slice: what the router "has seen"
# A small pod: the shipped H100 profile with a short batch and little KV memory.
DEMO_POD = {"max_num_seqs": 6, "num_gpu_blocks": 2000}


def _demo_profile(dir_: Path) -> str:
    from sagesched.engine.profile import load_profile

    profile = load_profile().with_overrides(name="demo-small-pod", **DEMO_POD,
                                            provenance="h100-llama3-8b with a short batch and little KV (demo)")
    path = dir_ / "demo-small-pod.json"
    path.write_text(profile.to_json())
    return str(path)


async def _run_policy(policy: str, args: argparse.Namespace, profile: str, history: tuple,
                      work: tuple) -> tuple:
    from sagesched.bench.live import replay
    from sagesched.emulator import PodConfig, start_pods

    from .server import RouterServer
    from .settings import Backend, RouterSettings

    pods = await start_pods(args.pods, PodConfig(model=MODEL, profile=profile, time_scale=args.time_scale,
                                                 seed=args.seed, max_queue=None))
    settings = RouterSettings(
        host="127.0.0.1", port=0, grpc_port=None, policy=policy,
        backends=[Backend(url=p.base_url, profile=profile) for p in pods],
        scrape_interval_s=max(0.02, 0.2 * args.time_scale), snapshot_max_age_s=60.0, queue_timeout_s=3600,
        max_queue_per_model=100_000,
    )
    server = await RouterServer(settings).start()
    try:
        server.router.predictor.estimator.fit(MODEL, history[0], history[1])
        summary = await replay(server.url, MODEL, *work, label=policy, time_scale=args.time_scale)
        preemptions = sum(p.engine.counters.preemptions for p in pods)
    finally:
        await server.stop()
        await asyncio.gather(*(p.stop() for p in pods))
    return summary, preemptions


async def _main(args: argparse.Namespace) -> int:
    from sagesched.bench.live import first_error, format_table, trace_slice

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    h_arr, h_prompts, h_outputs = trace_slice(args.trace, HISTORY_REQUESTS, 0, args.max_output, args.max_prompt)
    arrivals, prompts, outputs = trace_slice(args.trace, args.requests, HISTORY_REQUESTS, args.max_output,
                                             args.max_prompt)
    trace_rate = len(arrivals) / max(arrivals[-1], 1e-9)
    if args.rate:  # keep the trace's burstiness, change its mean rate
        arrivals = arrivals * (trace_rate / args.rate)
    rate = len(arrivals) / max(arrivals[-1], 1e-9)
    print(f"sagesched demo: {args.pods} emulated pods ({MODEL}, {DEMO_POD['max_num_seqs']} seqs, "
          f"{DEMO_POD['num_gpu_blocks'] * 16} KV tokens each), {len(arrivals)} Azure {args.trace} requests at "
          f"{rate:.1f} req/s, mean prompt {prompts.mean():.0f} / output {outputs.mean():.0f} tokens; "
          f"time scale {args.time_scale} wall s per emulated s")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        profile = _demo_profile(Path(tmp))
        for policy in policies:
            t0 = time.perf_counter()
            summary, preemptions = await _run_policy(policy, args, profile, (h_prompts, h_outputs),
                                                     (arrivals, prompts, outputs))
            results.append((summary, preemptions))
            print(f"  {policy:<14} done in {time.perf_counter() - t0:5.1f}s wall, {len(summary.ok)} ok, "
                  f"{preemptions} engine preemptions", flush=True)
            if len(summary.ok) < len(summary.outcomes):
                print(f"    first error: {first_error(summary)}")
        simulated = _simulate(args, policies, profile, (arrivals, prompts, outputs)) if args.sim else []
    print()
    print(format_table([s for s, _ in results], unit="emulated s"))
    if simulated:
        print(f"\nsimulator, same slice, pods and profile (emulated s):\n{'policy':<14}{'TTLT mean':>10}{'p50':>8}"
              f"{'p99':>8}{'TTFT mean':>10}")
        for row in simulated:
            print(f"{row['policy']:<14}{row['ttlt_mean']:>10.2f}{row['ttlt_p50']:>8.2f}{row['ttlt_p99']:>8.2f}"
                  f"{row['ttft_mean']:>10.3f}")
        live = [s.label for s, _ in sorted(results, key=lambda r: r[0].stats("ttlt")["mean"])]
        sim = [str(row["policy"]) for row in sorted(simulated, key=lambda r: r["ttlt_mean"])]
        print(f"order by mean TTLT: live {' < '.join(live)}; simulator {' < '.join(sim)} "
              f"({'same' if live == sim else 'DIFFERENT'})")
    if args.json:
        Path(args.json).write_text(json.dumps([
            {"policy": s.label, "ttlt": s.stats("ttlt"), "ttft": s.stats("ttft"), "rps": s.throughput_rps,
             "tps": s.throughput_tps, "ok": len(s.ok), "requests": len(s.outcomes), "preemptions": pre}
            for s, pre in results], indent=2))
    base = {s.label: s.stats("ttlt")["mean"] for s, _ in results}
    if "sagesched" in base and len(base) > 1:
        others = ", ".join(f"{k} {base[k] / base['sagesched']:.2f}x" for k in base if k != "sagesched")
        print(f"mean TTLT relative to sagesched: {others}")
    return 0 if all(len(s.ok) == len(s.outcomes) for s, _ in results) else 1


def _simulate(args: argparse.Namespace, policies: list[str], profile: str, work: tuple) -> list[dict]:
    """The discrete-event simulator on exactly the replayed requests (same arrivals in emulated
    seconds, lengths, pod count, pod profile and history), so the live ordering of policies can be
    checked against the simulator's."""
    from sagesched.engine.profile import load_profile
    from sagesched.scheduling.scheduler import DEFAULT_AGING_RATE
    from sagesched.simulator.cluster import PolicySpec, SimConfig, simulate
    from sagesched.simulator.report import summarize
    from sagesched.simulator.workload import Workload
    from sagesched.traces import load_trace

    trace = load_trace(args.trace)
    history = trace.slice(0, HISTORY_REQUESTS)
    replayed = trace.slice(HISTORY_REQUESTS, HISTORY_REQUESTS + args.requests)
    arrivals, prompts, outputs = work
    rate = len(arrivals) / max(float(arrivals[-1]), 1e-9)
    workload = Workload(trace.name, np.asarray(arrivals, float), np.asarray(prompts), np.asarray(outputs),
                        float("nan"), rate, replayed)
    config = SimConfig(args.pods, args.seed, DEFAULT_AGING_RATE)
    pod_profile = load_profile(profile)
    return [summarize(simulate(workload, PolicySpec.parse(p), pod_profile, history, trace, config), trace.name,
                      "trace", 0.0) for p in policies]


def main(args: argparse.Namespace) -> int:
    np.seterr(all="ignore")
    return asyncio.run(_main(args))
