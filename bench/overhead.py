"""`sagesched bench overhead`: what one router process costs, in front of pods that answer at once.

Three processes, as in production: the instant pods (`python -m sagesched.bench.instant_pod`), the
router (`sagesched router --config ...`, uvloop, exactly as users run it) and the load generator
(`python -m sagesched.bench.loadgen`, a lean raw-socket HTTP/1.1 client). Putting them in one
process, on one event loop, charged the client's and the pods' work to the router.

Figures per request rate, open loop (Poisson send times computed before the run, so a slow router
cannot slow the arrivals down):
- decision time: a request entering the scheduler → its dispatch to a pod, read from the router's
  own histogram (`sagesched_decision_seconds`, before/after difference, interpolated in buckets);
- added latency: the same load straight to the pods, then through the router; the difference of
  the percentiles;
- router CPU per request (from /proc), which is what limits one process's rate.
`--streams N` then holds N slow streams open through the router at once and reports errors, the
router's count of in-flight requests and its resident memory.

The load generator and the pods share the machine's cores with the router; the report prints the
core count, and the load generator's send lag says whether it kept its schedule.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sagesched.bench import loadgen
from sagesched.bench.loadgen import MODEL, LoadResult, cpu_seconds, drive, get, router_config, wait_ready
from sagesched.http_serve import free_port


# --- the orchestrator --------------------------------------------------------------------------
@dataclass
class _Stack:
    router_url: str
    router_pid: int
    pod_urls: list[str]


@contextlib.contextmanager
def _stack(args: argparse.Namespace, interval: float, workdir: Path) -> Iterator[_Stack]:
    """Instant pods and a router, each in its own process; stopped on leaving."""
    procs: list[subprocess.Popen] = []
    try:
        pods = subprocess.Popen([sys.executable, "-m", "sagesched.bench.instant_pod", "--pods", str(args.pods),
                                 "--model", MODEL, "--tokens", str(args.tokens), "--interval", str(interval)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(pods)
        assert pods.stdout is not None
        pod_urls = json.loads(pods.stdout.readline())
        # The router's own limits are its defaults: what the held streams show is what users get.
        config = router_config(workdir, pod_urls, args.policy, "bench overhead")
        port = free_port()
        router = subprocess.Popen([sys.executable, "-m", "sagesched.cli", "router", "--config", str(config),
                                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"])
        procs.append(router)
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/ready", router, "the router")
        yield _Stack(url, router.pid, pod_urls)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def _metrics(router_url: str, timeout: float = 5.0) -> str:
    """The router's Prometheus text, where its decision histogram and in-flight gauge are read."""
    return get(f"{router_url}/metrics", timeout).decode()


def _histogram(text: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(upper bounds, cumulative counts) of histogram `name` summed over its labels."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(le)] = buckets.get(float(le), 0.0) + float(line.rsplit(" ", 1)[1])
    bounds = np.array(sorted(buckets))
    return bounds, np.array([buckets[b] for b in bounds])


def _quantile(bounds: np.ndarray, counts: np.ndarray, q: float) -> float:
    """Prometheus' histogram_quantile: linear within the bucket the rank falls in."""
    if counts.size == 0 or counts[-1] <= 0:
        return float("nan")
    rank = q * counts[-1]
    i = int(np.searchsorted(counts, rank))
    if i >= len(bounds) - 1 and np.isinf(bounds[min(i, len(bounds) - 1)]):
        return float(bounds[-2])
    lo, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], counts[i - 1])
    inside = counts[i] - below
    return float(lo + (bounds[i] - lo) * ((rank - below) / inside if inside > 0 else 1.0))


def _rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pct(x: list[float], q: float) -> float:
    return float(np.percentile(x, q)) if x else float("nan")


def _rates(args: argparse.Namespace, stack: _Stack) -> None:
    from sagesched.router.metrics import DECISION

    print(f"{'rate/s':>7} | {'direct p50':>10}{'p99':>8} | {'router p50':>10}{'p99':>8} | {'added p50':>9}"
          f"{'p99':>8} ms | {'decision p50':>12}{'p99':>8} ms | {'cpu/req':>7} us | {'lag p99':>7} ms | err")
    for i, rate in enumerate(float(r) for r in args.rates.split(",")):
        count = int(rate * args.duration)
        direct = drive(stack.pod_urls, rate, count, args.tokens, i)
        before = _histogram(_metrics(stack.router_url), DECISION)[1]
        cpu0 = cpu_seconds(stack.router_pid)
        routed = drive([stack.router_url], rate, count, args.tokens, i)
        cpu = (cpu_seconds(stack.router_pid) - cpu0) / count * 1e6
        bounds, after = _histogram(_metrics(stack.router_url), DECISION)
        counts = after - (before if before.size else 0)
        ms = 1e3
        d50, d99 = _pct(direct.latencies, 50) * ms, _pct(direct.latencies, 99) * ms
        r50, r99 = _pct(routed.latencies, 50) * ms, _pct(routed.latencies, 99) * ms
        print(f"{rate:>7.0f} | {d50:>10.2f}{d99:>8.2f} | {r50:>10.2f}{r99:>8.2f} | {r50 - d50:>9.2f}{r99 - d99:>8.2f}"
              f"    | {_quantile(bounds, counts, 0.5) * ms:>12.3f}{_quantile(bounds, counts, 0.99) * ms:>8.3f}"
              f"    | {cpu:>7.0f}    | {max(direct.lag_p99, routed.lag_p99) * ms:>7.2f}    | "
              f"{direct.errors + routed.errors}", flush=True)
        for result in (direct, routed):
            if result.first_error:
                print(f"  first error: {result.first_error}")


def _streams(args: argparse.Namespace, stack: _Stack) -> None:
    """Open `args.streams` slow streams at `args.stream_rate` per second; while they are all open,
    read the router's in-flight count and memory; then let them finish."""
    from sagesched.router.metrics import INFLIGHT

    rss0 = _rss_mib(stack.router_pid)
    peak_inflight, peak_rss = 0.0, rss0
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "load.json"
        client = subprocess.Popen(loadgen.command([stack.router_url], args.stream_rate, args.streams,
                                                  args.stream_tokens, 0, report))
        while client.poll() is None:
            time.sleep(0.5)
            with contextlib.suppress(OSError):
                text = _metrics(stack.router_url, 10)
                held = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith(INFLIGHT + "{"))
                peak_inflight = max(peak_inflight, held)
            peak_rss = max(peak_rss, _rss_mib(stack.router_pid))
        result = LoadResult.read(report)
    print(f"concurrent streams: {args.streams} opened at {args.stream_rate:.0f}/s, each {args.stream_tokens} tokens "
          f"{args.stream_interval:.1f}s apart; peak in flight at the router {peak_inflight:.0f} (client "
          f"{result.peak_inflight}), completed {len(result.latencies)}, errors {result.errors}; router RSS "
          f"{rss0:.0f} MiB idle, {peak_rss:.0f} MiB peak")
    if result.first_error:
        print(f"  first error: {result.first_error}")


def main(args: argparse.Namespace) -> int:
    # No raised fd limit here: the router inherits this process's, and must cope with it by itself.
    print(f"router overhead: {args.pods} instant pods, policy {args.policy}, {args.tokens} streamed tokens per "
          f"answer, {args.duration:.0f}s per rate; pods, router and load generator in 3 processes sharing "
          f"{os.cpu_count()} cores (fd limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})")
    with tempfile.TemporaryDirectory() as tmp:
        if args.rates:
            with _stack(args, 0.0, Path(tmp)) as stack:
                _rates(args, stack)
        if args.streams:
            with _stack(args, args.stream_interval, Path(tmp)) as stack:
                _streams(args, stack)
    return 0


if __name__ == "__main__":  # the load generator's former name, which scripts under bench/results/ run
    sys.exit(loadgen.main())
