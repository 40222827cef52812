"""`sagesched demo`: the embedded default in one command.

Starts emulated vLLM pods (in this process, time-scaled) and a router in front of them, replays a
slice of an Azure trace (code by default) through the router with the official `openai` client — once
per policy, on fresh pods — and prints a comparison of TTLT, TTFT and throughput. No Kubernetes, no
Redis. Each request asks for exactly its traced output length by `min_tokens` alone, on pods that end
each answer as early as allowed: the router learns no length from it (a `max_tokens` equal to the true
length would be a cap the simulator's scheduler does not have).

The pods are deliberately small (few sequences, little KV) so that a short replay on a laptop already
queues: scheduling only matters when there is a queue, and a big emulated H100 would need more
tokens per second than one Python process can stream.

Why a busy host does not change the comparison. Latencies are not the client's wall clock: they are
read on one emulated clock (`StallFreeClock`) that the pods' engines, the load generator and the
measurement share. A request's TTLT is its engine's finish time minus its send time, both on that
clock: the router's queueing and the engine's iterations count, the host's delay in running and
streaming them does not. The clock follows the wall clock (over the time scale) but stops while the
host stalls the process: whenever something waiting on it (an engine iteration's end, a request's
send time) wakes late — the process was descheduled, or its event loop was busy — the lateness is
taken out of emulated time. So a pod never falls behind its clock and never has to catch up, and the
router learns of a finished request at the emulated instant it finished, as in the simulator.

What the clock cannot stop is the router's own timers (metric scrapes, the policy's aging), which
run on the wall clock: when much of the wall time was stalled away, these ran faster than the
emulated time around them. That share is measured for each policy's replay, with the CPU this
process used and how long it waited for one. When the stalled share exceeds `--max-stall`, or the
process was running or waiting to run nearly all the time (its event loop never idle, so the
router's own work ran late and counted as emulated time: a time scale too small for the host), the
demo says plainly that the host could not keep up. The client's wall-clock means are printed beside,
for reference.

Exit status: 1 when requests failed, 2 when the live order of mean TTLT differs from the simulator's
(the host verdict is printed beside it), otherwise 0.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sagesched.bench.live import Summary
    from sagesched.emulator import PodConfig

MODEL = "llama-3-8b"
HISTORY_REQUESTS = 3000  # trace requests before the replayed slice: what the router "has seen"
# A small pod: the shipped H100 profile with a short batch and little KV memory.
DEMO_POD = {"max_num_seqs": 6, "num_gpu_blocks": 2000}
EXIT_FAILED, EXIT_ORDER_DIFFERS = 1, 2
SATURATED = 0.9  # share of wall time the process ran or waited to run: its event loop hardly ever idled


class StallFreeClock:
    """Emulated seconds: (loop time - start - stalled) / time_scale, never going backwards.

    `sleep_until(t)` sleeps until the clock reads `t`; if it wakes late, the lateness not yet seen by
    any reader is added to `stalled`, so the clock reads `t` then: host delay costs no emulated time.
    `loop_time` can be injected (tests)."""

    def __init__(self, time_scale: float, loop_time=None) -> None:
        self.time_scale = time_scale
        self._loop_time = loop_time or asyncio.get_running_loop().time
        self._t0 = self._loop_time()
        self.stalled = 0.0  # wall seconds taken out of emulated time
        self._high = 0.0  # the largest reading handed out: the clock never goes back

    def _raw(self) -> float:
        return (self._loop_time() - self._t0 - self.stalled) / self.time_scale

    def now(self) -> float:
        self._high = max(self._high, self._raw())
        return self._high

    def wall_elapsed(self) -> float:
        return self._loop_time() - self._t0

    async def sleep_until(self, t: float) -> None:
        while (ahead := t - self._raw()) > 0:
            await asyncio.sleep(ahead * self.time_scale)
        self.catch(t)

    def catch(self, t: float) -> None:
        """Something due at emulated `t` runs now: take its lateness out of emulated time."""
        late = self._raw() - max(t, self._high)
        if late > 0:
            self.stalled += late * self.time_scale


@dataclass
class HostLoad:
    """What the host did to one policy's replay."""

    wall: float = 0.0  # wall seconds of the replay
    stalled: float = 0.0  # of which taken out of emulated time (the process was late)
    cpu: float = 0.0  # CPU seconds this process used
    waited: float | None = None  # seconds it was runnable but waited for a CPU (Linux schedstat)

    @property
    def stalled_share(self) -> float:
        return self.stalled / self.wall if self.wall > 0 else 0.0

    @property
    def busy_share(self) -> float:
        """Share of the wall time the process was running or waiting for a CPU: near 1, its event
        loop was never idle, so every task ran late."""
        return (self.cpu + (self.waited or 0.0)) / self.wall if self.wall > 0 else 0.0

    def kept_up(self, max_stall: float) -> bool:
        return self.stalled_share <= max_stall and self.busy_share < SATURATED

    def describe(self) -> str:
        text = (f"{self.stalled_share:.0%} of {self.wall:.1f}s wall stalled; CPU {self.cpu / max(self.wall, 1e-9):.0%}"
                " of a core")
        if self.waited is not None:
            text += f", {self.waited / max(self.wall, 1e-9):.0%} waiting for one"
        return text


def _cpu_wait() -> float | None:
    """Seconds this process's main thread was runnable but not running (Linux), or None."""
    try:
        return int(Path("/proc/self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class PolicyRun:
    """One policy's replay: the summary on the emulated clock (the comparison), the client's wall-
    clock summary (reference), engine preemptions and what the host did to it."""

    engine: Summary  # latencies in emulated s
    wall: Summary  # the same requests timed by the client, wall s / time scale
    preemptions: int = 0
    host: HostLoad = field(default_factory=HostLoad)
    router_preemptions: int = 0  # streams the router stopped and resumed (live preemption)
    prefix_hit_tokens: int = 0  # prompt tokens the pods found in their prefix caches

    @property
    def label(self) -> str:
        return self.engine.label


def _demo_profile(dir_: Path) -> str:
    from sagesched.engine.profile import load_profile

    profile = load_profile().with_overrides(name="demo-small-pod", **DEMO_POD,
                                            provenance="h100-llama3-8b with a short batch and little KV (demo)")
    path = dir_ / "demo-small-pod.json"
    path.write_text(profile.to_json())
    return str(path)


@dataclass(frozen=True)
class LiveSetup:
    """The emulated pods of a replay and how requests ask for their lengths: part of the workload,
    identical for every policy compared (and for the simulator's check)."""

    pods: int
    profile: str  # the pods' step-time profile (name or path)
    time_scale: float
    seed: int = 0
    scheduling: str = "priority"  # the pods' queue order: vLLM --scheduling-policy, as the simulator's engines
    hide_lengths: bool = False  # ask by min_tokens only, so the router cannot read lengths (bench.live.length_fields)

    def pod_config(self) -> "PodConfig":
        from sagesched.emulator import PodConfig

        eager = {"output_median": 1.0, "output_sigma": 0.0} if self.hide_lengths else {}
        return PodConfig(model=MODEL, profile=self.profile, time_scale=self.time_scale, seed=self.seed,
                         max_queue=None, scheduling=self.scheduling, **eager)


def router_policy(label: str) -> tuple[str, bool]:
    """A policy label as the simulator's PolicySpec spells it ("sagesched:nopreempt") → (policy, preemption)."""
    name, *flags = label.split(":")
    if set(flags) - {"nopreempt"}:
        raise SystemExit(f"policy {label!r}: the live router takes only the :nopreempt flag")
    return name, "nopreempt" not in flags


async def _send(client, out, tag: str, clock: StallFreeClock, start: float, sent: list, i: int,
                hide_length: bool) -> None:
    """bench.live's request, sent at its arrival on the emulated clock and tagged (`user`) so that
    the pod's record of it can be found; the client's own timings stay in wall seconds."""
    from sagesched.bench.live import stream_request

    await clock.sleep_until(start + out.arrival)
    sent[i] = clock.now()
    await stream_request(client, MODEL, out, asyncio.get_running_loop().time, user=tag, hide_length=hide_length,
                         uid=i)


async def _replay(url: str, label: str, work: tuple, clock: StallFreeClock, admitted: dict,
                  hide_lengths: bool) -> tuple:
    """Replay `work` (arrivals in emulated s) through the router at `url`; returns the summary on
    the emulated clock and the client's wall-clock one. `admitted` fills in as the pods admit the
    requests: tag -> its EngineRequests (one per run: a preempted request resumes as another)."""
    import openai

    from sagesched.bench.live import Outcome, Summary, _limits

    arrivals, prompts, outputs = work
    http = openai.DefaultAsyncHttpxClient(limits=_limits(), timeout=600.0)
    client = openai.AsyncOpenAI(base_url=url.rstrip("/") + "/v1", api_key="none", http_client=http, max_retries=0)
    outs = [Outcome(float(a), int(p), int(o)) for a, p, o in zip(arrivals, prompts, outputs)]
    tags = [f"demo-{label}-{i}" for i in range(len(outs))]
    sent: list[float | None] = [None] * len(outs)
    start, wall0 = clock.now(), clock.wall_elapsed()
    try:
        await asyncio.gather(*(_send(client, o, t, clock, start, sent, i, hide_lengths)
                               for i, (o, t) in enumerate(zip(outs, tags))))
    finally:
        await client.close()
    emulated, done = [], []
    for o, tag, at in zip(outs, tags, sent):
        e = Outcome(o.arrival, o.prompt_tokens, o.output_tokens, received_tokens=o.received_tokens, error=o.error)
        emulated.append(e)
        if o.error or o.ttlt is None or at is None:
            continue
        runs = admitted.get(tag) or [None]
        first, last = runs[0], runs[-1]  # a preempted request ran more than once: its first token came in the first
        if last is None or last.finish_time is None or first.first_token_time is None:
            e.error = "the pods have no finished request with this tag"
            continue
        e.ttft, e.ttlt = first.first_token_time - at, last.finish_time - at
        done.append(last.finish_time - start)
    # Summary.stats divides by its time scale: the emulated one is in emulated seconds already
    ts = clock.time_scale
    wall = Summary(label, [Outcome(o.arrival, o.prompt_tokens, o.output_tokens, o.ttft, o.ttlt, o.received_tokens,
                                   o.error) for o in outs], clock.wall_elapsed() - wall0, ts)
    return Summary(label, emulated, max(done, default=0.0), 1.0), wall


async def run_policy(label: str, setup: LiveSetup, history: tuple, work: tuple) -> PolicyRun:
    """Replay `work` through a router running the policy `label` in front of fresh emulated pods."""
    from sagesched.emulator import start_pods

    from sagesched.router.server import RouterServer
    from sagesched.router.settings import Backend, RouterSettings

    pods = await start_pods(setup.pods, setup.pod_config())
    clock = StallFreeClock(setup.time_scale)
    admitted: dict = {}

    def observe(body: dict, req) -> None:
        if isinstance(body.get("user"), str):
            admitted.setdefault(body["user"], []).append(req)

    for pod in pods:
        pod.clock = clock
        pod.on_request_admitted = observe
    policy, preemption = router_policy(label)
    settings = RouterSettings(
        host="127.0.0.1", port=0, grpc_port=None, policy=policy, preemption=preemption,
        backends=[Backend(url=p.base_url, profile=setup.profile, scheduling=setup.scheduling) for p in pods],
        scrape_interval_s=max(0.02, 0.2 * setup.time_scale), snapshot_max_age_s=60.0, queue_timeout_s=3600,
        max_queue_per_model=100_000,
    )
    server = await RouterServer(settings).start()
    try:
        server.router.predictor.estimator.fit(MODEL, history[0], history[1])
        stalled0, wall0, cpu0, wait0 = clock.stalled, clock.wall_elapsed(), time.process_time(), _cpu_wait()
        engine, wall = await _replay(server.url, label, work, clock, admitted, setup.hide_lengths)
        wait1 = _cpu_wait()
        host = HostLoad(clock.wall_elapsed() - wall0, clock.stalled - stalled0, time.process_time() - cpu0,
                        None if wait0 is None or wait1 is None else wait1 - wait0)
        preemptions = sum(p.engine.counters.preemptions for p in pods)
    finally:
        await server.stop()
        await asyncio.gather(*(p.stop() for p in pods))
    return PolicyRun(engine, wall, preemptions, host, server.router.scheduler.preemptions,
                     sum(p.engine.kv.hit_tokens for p in pods))


async def _main(args: argparse.Namespace) -> int:
    from sagesched.bench.live import first_error, trace_slice

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
    runs: list[PolicyRun] = []
    with tempfile.TemporaryDirectory() as tmp:
        setup = LiveSetup(args.pods, _demo_profile(Path(tmp)), args.time_scale, args.seed, hide_lengths=True)
        profile = setup.profile
        for policy in policies:
            run = await run_policy(policy, setup, (h_prompts, h_outputs), (arrivals, prompts, outputs))
            runs.append(run)
            print(f"  {policy:<14} {len(run.engine.ok)} ok, {run.preemptions} engine preemptions; host: "
                  f"{run.host.describe()}", flush=True)
            if len(run.engine.ok) < len(run.engine.outcomes):
                print(f"    first error: {first_error(run.engine)}")
        simulated = _simulate(args, policies, profile, (arrivals, prompts, outputs)) if args.sim else []
    code, lines, verdict = judge(runs, simulated, args.max_stall)
    print("\n" + "\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "latencies": "emulated s, on the clock the pods share, which stops while the host stalls the process",
            "time_scale": args.time_scale, "max_stall": args.max_stall, **verdict, "exit_status": code,
            "runs": [{"policy": r.label, "ttlt": r.engine.stats("ttlt"), "ttft": r.engine.stats("ttft"),
                      "rps": r.engine.throughput_rps, "tps": r.engine.throughput_tps, "ok": len(r.engine.ok),
                      "requests": len(r.engine.outcomes), "preemptions": r.preemptions,
                      "wall_ttlt": r.wall.stats("ttlt"), "host": vars(r.host)} for r in runs],
            "simulator": simulated}, indent=2, default=float))
    return code


def judge(runs: list[PolicyRun], simulated: list[dict], max_stall: float) -> tuple[int, list[str], dict]:
    """The report under the progress lines, the exit status, and the verdict for --json."""
    from sagesched.bench.live import format_table

    lines = [format_table([r.engine for r in runs], unit="emulated s, on the pods' clock")]
    lines.append("client wall clock / time scale, for reference: mean TTLT "
                 + ", ".join(f"{r.label} {r.wall.stats('ttlt')['mean']:.2f}" for r in runs))
    failing = [r for r in runs if not r.host.kept_up(max_stall)]
    kept_up = not failing
    if kept_up:
        lines.append(f"host kept up: at most {max((r.host.stalled_share for r in runs), default=0):.0%} of a replay's "
                     f"wall time was stalled and taken out of the emulated clock (limit {max_stall:.0%}); the process "
                     f"was busy at most {max((r.host.busy_share for r in runs), default=0):.0%} of it "
                     f"(limit {SATURATED:.0%})")
    else:
        worst = max(failing, key=lambda r: (r.host.busy_share >= SATURATED, r.host.stalled_share))
        h = worst.host
        cpu, waited = h.cpu / max(h.wall, 1e-9), (h.waited or 0.0) / max(h.wall, 1e-9)
        if h.busy_share >= SATURATED:
            lines.append(f"HOST COULD NOT KEEP UP: the {worst.label} replay kept this process busy {h.busy_share:.0%} "
                         f"of its wall time (running {cpu:.0%}, waiting for a CPU {waited:.0%}; limit "
                         f"{SATURATED:.0%}): its event loop was never idle, so the router's work ran late and counted "
                         f"as emulated time. The figures above are not to be trusted: rerun on an idle machine, or "
                         f"slower (--time-scale 2).")
        else:
            lines.append(f"HOST COULD NOT KEEP UP: the {worst.label} replay was stalled for {h.stalled_share:.0%} of "
                         f"its wall time (limit {max_stall:.0%}; this process ran {cpu:.0%} of it and waited for a "
                         f"CPU {waited:.0%}). The stalls were taken out of the emulated clock, but the router's own "
                         f"timers (metric scrapes, aging) kept wall time, so read the figures above with care: rerun "
                         f"on an idle machine, or slower (--time-scale 2).")
    verdict: dict = {"host_kept_up": kept_up}
    code = 0 if all(len(r.engine.ok) == len(r.engine.outcomes) for r in runs) else EXIT_FAILED
    if simulated:
        lines.append(f"\nsimulator, same slice, pods and profile (emulated s):\n{'policy':<14}{'TTLT mean':>10}"
                     f"{'p50':>8}{'p99':>8}{'TTFT mean':>10}")
        for row in simulated:
            lines.append(f"{row['policy']:<14}{row['ttlt_mean']:>10.2f}{row['ttlt_p50']:>8.2f}{row['ttlt_p99']:>8.2f}"
                         f"{row['ttft_mean']:>10.3f}")
        live = [r.label for r in sorted(runs, key=lambda r: r.engine.stats("ttlt")["mean"])]
        sim = [str(row["policy"]) for row in sorted(simulated, key=lambda r: r["ttlt_mean"])]
        same = live == sim
        verdict.update(live_order=live, simulator_order=sim, same_order=same)
        lines.append(f"order by mean TTLT: live {' < '.join(live)}; simulator {' < '.join(sim)} "
                     f"({'same' if same else 'DIFFERENT'})")
        if not same:
            lines.append(f"the live order differs from the simulator's"
                         f"{' (the host could not keep up: see above)' if not kept_up else ''}: exit status "
                         f"{EXIT_ORDER_DIFFERS}")
            code = max(code, EXIT_ORDER_DIFFERS)
    base = {r.label: r.engine.stats("ttlt")["mean"] for r in runs}
    if "sagesched" in base and len(base) > 1:
        others = ", ".join(f"{k} {base[k] / base['sagesched']:.2f}x" for k in base if k != "sagesched")
        lines.append(f"mean TTLT relative to sagesched: {others}")
    return code, lines, verdict


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


def register(subparsers: argparse._SubParsersAction) -> None:
    d = subparsers.add_parser("demo", help="emulated pods + router + Azure trace replay: policy comparison",
                              description="Start N emulated vLLM pods and a router in this process, replay a "
                                          "slice of an Azure production trace through the router with the "
                                          "official openai client, once per policy, compare latencies, and "
                                          "check the order against the simulator on the same slice.")
    d.add_argument("--pods", type=int, default=4, help="emulated pods (default 4)")
    d.add_argument("--requests", type=int, default=300, help="trace requests per policy (default 300)")
    d.add_argument("--rate", type=float, default=30.0,
                   help="mean arrivals per emulated second, trace burstiness kept (default 30; 0 = the trace rate)")
    d.add_argument("--time-scale", type=float, default=1.0,
                   help="wall seconds per emulated second (default 1: real time; below it, one process may run "
                        "short of CPU and its latencies stretch)")
    d.add_argument("--policies", default="sagesched,round-robin,fcfs", help="comma-separated policies to compare")
    d.add_argument("--seed", type=int, default=0,
                   help="random seed of the emulated pods and the simulator check (default %(default)s)")
    d.add_argument("--max-output", type=int, default=None, help="cap output lengths (tokens) to keep it short")
    d.add_argument("--max-prompt", type=int, default=None, help="cap prompt lengths (tokens)")
    d.add_argument("--json", default=None, help="also write the results to this JSON file")
    d.add_argument("--trace", default="code", choices=("conv", "code"),
                   help="Azure trace to replay (default code: prefill-heavy, large stable policy differences)")
    d.add_argument("--sim", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the simulator on the same slice, pods and profile, and compare policy order")
    d.add_argument("--max-stall", type=float, default=0.5,
                   help="share of a replay's wall time the host may stall the demo's process (taken out of the "
                        "emulated clock) before the demo reports that the host could not keep up (default 0.5)")
    d.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sagesched.router.cli import install_uvloop

    install_uvloop()
    return main(args)
