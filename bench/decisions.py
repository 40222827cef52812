"""`sagesched bench decisions`: what one scheduling decision costs as the cluster grows.

The paper's scalability study, ours: the scheduler's CPU time per request at 1 → 64 → 512 pods, with
the load proportional to the pods and a standing queue (the paper: ≈100 ms per request at 64 nodes,
up to 1,000 queued). No engines run: every pod is kept full (max_num_seqs of our requests, each
already streaming), so each step is what a saturated router does for one request — one running
request finishes, a new one arrives and waits behind the queue, and a dispatch releases the queue's
head into the freed slot (`decision`); then the released request streams its tokens, each reported
as it comes (`progress`, per token). CPU time (process time) is measured, in interleaved repeats,
and reported as medians with their range: wall clock on a shared machine measures the neighbours.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from sagesched.distribution import LengthDistribution
from sagesched.engine.profile import load_profile
from sagesched.scheduling import Admission, PodView, SchedRequest, Scheduler
from sagesched.scheduling.preemption import NO_PREEMPTION, Preemption

PROFILE = "h100-llama3-8b"
TOKENS_PER_REQUEST = 200  # progress reports per released request (one per streamed token)


@dataclass
class Cost:
    decision_us: float  # finish + submit + dispatch, per request
    progress_us: float  # one on_progress report


class SaturatedCluster:
    """`pods` full pods and `queued` waiting requests in front of one Scheduler."""

    def __init__(self, policy: str, pods: int, queued: int, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        profile = load_profile(PROFILE).with_overrides(max_num_seqs=32)
        preemptive = Preemption(min_gain=1e9)  # decided on (candidate found, refreshed), never carried out
        self.sched = Scheduler(policy, Admission(engine_buffer=1, prefill_tokens=0),
                               preemption=preemptive if policy == "sagesched" else NO_PREEMPTION)
        self.pods = [self.sched.view(f"pod-{k}", ("m",), profile) for k in range(pods)]
        self.by_name = {p.name: p for p in self.pods}
        self.dists = [LengthDistribution.from_samples([int(self.rng.lognormvariate(5, 1)) + 1 for _ in range(50)])
                      for _ in range(16)]
        self.now, self.next_id = 0.0, 0
        self.running: list[SchedRequest] = []
        # central queues: until the count gate holds on every pod; others have no gate: to max_num_seqs
        cap = pods * (profile.max_num_seqs + (1 if self.sched.policy.central_queue else 0))
        while len(self.running) < cap:
            self._arrive()
            released = self.sched.dispatch(self.pods, self.now)
            for req, pod in released:
                self._start(req, pod)
            if not released:
                break
        for _ in range(queued if self.sched.policy.central_queue else 0):  # others queue in the engines
            self._arrive()

    def _arrive(self) -> None:
        self.now += 0.001
        req = SchedRequest(str(self.next_id), "m", self.rng.randint(20, 2000), self.now, self.rng.choice(self.dists))
        self.next_id += 1
        self.sched.submit(req, self.now)

    def _start(self, req: SchedRequest, pod: PodView) -> None:
        """The engine took it in and streamed a token, as its next metrics report would say."""
        pod.num_running, pod.sent_mark = pod.num_running + 1, pod.ledger.sent
        self.sched.on_progress(req.request_id, 1)
        self.running.append(req)

    def step(self) -> SchedRequest:
        """One finish, one arrival, one dispatch; returns the released request."""
        done = self.running.pop(self.rng.randrange(len(self.running)))
        self.sched.on_finish(done.request_id, self.now)
        pod = self.by_name[done.pod]
        pod.num_running -= 1
        self._arrive()
        (req, to), = self.sched.dispatch(self.pods, self.now)
        self._start(req, to)
        return req

    def stream(self, req: SchedRequest) -> None:
        for generated in range(2, TOKENS_PER_REQUEST + 2):
            self.sched.on_progress(req.request_id, generated)


def measure(cluster: SaturatedCluster, requests: int) -> Cost:
    t0 = time.process_time()
    released = [cluster.step() for _ in range(requests)]
    t1 = time.process_time()
    for req in released:
        cluster.stream(req)
    t2 = time.process_time()
    return Cost((t1 - t0) / requests * 1e6, (t2 - t1) / (requests * TOKENS_PER_REQUEST) * 1e6)


def run_study(policies: list[str], pod_counts: list[int], queued: int, requests: int, repeats: int) -> list[dict]:
    clusters = {(p, n): SaturatedCluster(p, n, queued) for p in policies for n in pod_counts}
    samples: dict[tuple[str, int], list[Cost]] = {key: [] for key in clusters}
    for _ in range(repeats):  # interleaved: each configuration once per round
        for key, cluster in clusters.items():
            samples[key].append(measure(cluster, requests))
    rows = []
    for (policy, pods), costs in samples.items():
        d = [c.decision_us for c in costs]
        g = [c.progress_us for c in costs]
        rows.append({"policy": policy, "pods": pods, "queued": queued, "repeats": repeats,
                     "decision_us_median": round(statistics.median(d), 1), "decision_us_min": round(min(d), 1),
                     "decision_us_max": round(max(d), 1), "progress_us_median": round(statistics.median(g), 2),
                     "progress_us_min": round(min(g), 2), "progress_us_max": round(max(g), 2)})
    return rows


def render(rows: list[dict], command: str) -> str:
    lines = ["# Scheduling decision cost vs cluster size", "", f"Regenerate: `{command}`", "", __doc__.split("\n\n", 1)[1].strip(), "",
             "| policy | pods | queued | decision µs/request (median [range]) | progress µs/token (median [range]) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['policy']} | {r['pods']} | {r['queued']} | {r['decision_us_median']} [{r['decision_us_min']}–"
              f"{r['decision_us_max']}] | {r['progress_us_median']} [{r['progress_us_min']}–{r['progress_us_max']}] |"
              for r in rows]
    return "\n".join(lines) + "\n"


def register_bench(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("decisions", help="scheduler CPU time per request vs cluster size (saturated, queued)",
                         description="Time the scheduler alone on saturated pods with a standing queue: CPU per "
                                     "decision and per progress report, for each policy and pod count.")
    p.add_argument("--policies", default="sagesched,sjf-mean,fcfs,llmd", help="comma-separated (default: %(default)s)")
    p.add_argument("--pods", default="1,8,64,512", help="comma-separated pod counts (default: %(default)s)")
    p.add_argument("--queued", type=int, default=1000, help="standing queue length (default: %(default)s)")
    p.add_argument("--requests", type=int, default=300, help="requests per repeat (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None, help="folder for README.md and results.json (default: print only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = run_study(args.policies.split(","), [int(x) for x in args.pods.split(",")], args.queued, args.requests,
                     args.repeats)
    command = (f"sagesched bench decisions --policies {args.policies} --pods {args.pods} --queued {args.queued} "
               f"--requests {args.requests} --repeats {args.repeats}")
    text = render(rows, command)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "README.md").write_text(text)
        (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0
