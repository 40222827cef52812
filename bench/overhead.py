"""`sagesched bench overhead`: what one router process costs, in front of pods that answer at once.

Three processes, as in production: the instant pods (`python -m sagesched.bench.instant_pod`), the
router (`sagesched router --config ...`, uvloop, exactly as users run it) and the load generator
(`python -m sagesched.bench.overhead`, a lean raw-socket HTTP/1.1 client). Putting them in one
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
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sagesched.http_serve import free_port

MODEL = "instant"
# Slots per instant pod: an instant pod has no batch limit, and the benchmark must measure the
# router, not the admission gate of an emulated H100 (256 sequences).
POD_SEQS = 4096


# --- the load generator (its own process) ------------------------------------------------------
class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time. A response is complete at
    its Content-Length, or (chunked streams) at the last-chunk marker; nothing else is parsed."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head = -1
        self.length = -1
        self.status = 0
        self.done: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports subclass no asyncio class

    def send(self, request: bytes) -> asyncio.Future:
        assert self.transport is not None
        self.buf.clear()
        self.head, self.length = -1, -1
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.done

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.head < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = end + 4
            head = bytes(self.buf[:end]).lower()
            self.status = int(head[9:12])
            at = head.find(b"content-length:")
            if at >= 0:
                self.length = int(head[at + 15:].split(b"\r\n", 1)[0])
        if self.length >= 0:
            complete = len(self.buf) >= self.head + self.length
        else:
            complete = self.buf.endswith(b"\r\n0\r\n\r\n")
        if complete and self.done is not None and not self.done.done():
            self.done.set_result(self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {exc}"))


@dataclass
class LoadResult:
    latencies: list[float]  # seconds, completed 200s
    errors: int
    first_error: str
    peak_inflight: int
    lag_p99: float  # seconds the generator sent behind its schedule (its own health)


async def _load(targets: list[tuple[str, int]], sends: np.ndarray, request: bytes) -> LoadResult:
    """Send one request at each of `sends` (seconds from the start), round robin over `targets`."""
    loop = asyncio.get_running_loop()
    idle: list[list[_Connection]] = [[] for _ in targets]
    latencies: list[float] = []
    lags: list[float] = []
    errors, first_error, inflight, peak = 0, "", 0, 0

    async def one(i: int) -> None:
        nonlocal errors, first_error, inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        conn = None
        try:
            pool = idle[i % len(targets)]
            if pool:
                conn = pool.pop()
            else:
                _, conn = await loop.create_connection(_Connection, *targets[i % len(targets)])
            t0 = time.perf_counter()
            status = await conn.send(request)
            elapsed = time.perf_counter() - t0
            if status == 200:
                latencies.append(elapsed)
            else:
                errors += 1
                first_error = first_error or f"HTTP {status}: {bytes(conn.buf[-300:])!r}"
            pool.append(conn)
        except OSError as exc:
            errors += 1
            first_error = first_error or f"{exc.__class__.__name__}: {exc}"
        finally:
            inflight -= 1

    tasks = []
    start = time.perf_counter() + 0.05
    for i, at in enumerate(sends):
        due = start + float(at)
        delay = due - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        lags.append(max(0.0, time.perf_counter() - due))
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    for pool in idle:
        for conn in pool:
            assert conn.transport is not None
            conn.transport.close()
    return LoadResult(latencies, errors, first_error, peak, float(np.percentile(lags, 99)) if lags else 0.0)


def _request(host: str, tokens: int) -> bytes:
    body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": tokens, "stream": True}).encode()
    return (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def loadgen_main(argv: list[str] | None = None) -> int:
    """The load generator process: writes its `LoadResult` as JSON to `--out`. Not to stdout: after
    a uvloop run a write to a pipe stops at the pipe's 64 KiB buffer, and thousands of latencies
    are more than that."""
    p = argparse.ArgumentParser(prog="python -m sagesched.bench.overhead")
    p.add_argument("--url", action="append", required=True, help="http://host:port (repeatable: round robin)")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="file to write the JSON report to")
    args = p.parse_args(argv)
    _raise_fd_limit()
    targets = [(u.split("//")[1].split(":")[0], int(u.rsplit(":", 1)[1])) for u in args.url]
    sends = np.cumsum(np.random.default_rng(args.seed).exponential(1.0 / args.rate, args.count))
    sends -= sends[0]
    _install_uvloop()
    result = asyncio.run(_load(targets, sends, _request(targets[0][0], args.tokens)))
    args.out.write_text(json.dumps(result.__dict__))
    return 0


# --- the orchestrator --------------------------------------------------------------------------
def _raise_fd_limit() -> None:
    """Thousands of held streams need a descriptor each in the load generator (the router raises
    its own limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()



def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


@dataclass
class _Stack:
    router_url: str
    router_pid: int
    pod_urls: list[str]


@contextlib.contextmanager
def _stack(args: argparse.Namespace, interval: float, workdir: Path) -> Iterator[_Stack]:
    """Instant pods and a router, each in its own process; stopped on leaving."""
    from sagesched.engine.profile import load_profile

    procs: list[subprocess.Popen] = []
    try:
        pods = subprocess.Popen([sys.executable, "-m", "sagesched.bench.instant_pod", "--pods", str(args.pods),
                                 "--model", MODEL, "--tokens", str(args.tokens), "--interval", str(interval)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(pods)
        assert pods.stdout is not None
        pod_urls = json.loads(pods.stdout.readline())
        profile = workdir / "instant-pod.json"
        profile.write_text(load_profile().with_overrides(
            name="instant-pod", max_num_seqs=POD_SEQS, num_gpu_blocks=10_000_000,
            provenance="bench overhead: a pod with no batch or memory limit").to_json())
        config = workdir / "router.yaml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "backends": [{"url": u, "models": [MODEL], "profile": str(profile)} for u in pod_urls],
            "policy": args.policy, "grpc_port": None, "snapshot_max_age_s": 3600, "scrape_interval_s": 0.5,
        }))  # the router's own limits are its defaults: what the held streams show is what users get
        port = free_port()
        router = subprocess.Popen([sys.executable, "-m", "sagesched.cli", "router", "--config", str(config),
                                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"])
        procs.append(router)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(f"{url}/ready", 1.0)
                break
            except OSError:
                if time.monotonic() > deadline or router.poll() is not None:
                    raise RuntimeError("the router did not become ready") from None
                time.sleep(0.1)
        yield _Stack(url, router.pid, pod_urls)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def _drive(urls: list[str], rate: float, count: int, tokens: int, seed: int) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "load.json"
        cmd = [sys.executable, "-m", "sagesched.bench.overhead", "--rate", str(rate), "--count", str(count),
               "--tokens", str(tokens), "--seed", str(seed), "--out", str(report)]
        for u in urls:
            cmd += ["--url", u]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"load generator failed: {done.stderr[-2000:]}")
        return LoadResult(**json.loads(report.read_text()))


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


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        direct = _drive(stack.pod_urls, rate, count, args.tokens, i)
        before = _histogram(_get(f"{stack.router_url}/metrics"), DECISION)[1]
        cpu0 = _cpu_seconds(stack.router_pid)
        routed = _drive([stack.router_url], rate, count, args.tokens, i)
        cpu = (_cpu_seconds(stack.router_pid) - cpu0) / count * 1e6
        bounds, after = _histogram(_get(f"{stack.router_url}/metrics"), DECISION)
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
        client = subprocess.Popen([sys.executable, "-m", "sagesched.bench.overhead", "--rate", str(args.stream_rate),
                                   "--count", str(args.streams), "--tokens", str(args.stream_tokens),
                                   "--url", stack.router_url, "--out", str(report)])
        while client.poll() is None:
            time.sleep(0.5)
            with contextlib.suppress(OSError):
                text = _get(f"{stack.router_url}/metrics", 10)
                held = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith(INFLIGHT + "{"))
                peak_inflight = max(peak_inflight, held)
            peak_rss = max(peak_rss, _rss_mib(stack.router_pid))
        result = LoadResult(**json.loads(report.read_text()))
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


if __name__ == "__main__":
    sys.exit(loadgen_main())
