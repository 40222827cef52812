"""The benchmarks' open-loop load generator, run in its own process (`python -m sagesched.bench.loadgen`),
and the small helpers the benchmarks' orchestrators share for the processes they start.

In a process of its own so that its work is not charged to what is measured: a lean raw-socket
HTTP/1.1 client on uvloop, keep-alive connections, Poisson send times fixed before the run (a slow
server cannot slow the arrivals down), round robin over one or several targets. It writes its
`LoadResult` as JSON to a file: after a uvloop run a write to a pipe stops at the pipe's 64 KiB
buffer, and thousands of latencies are more than that.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MODEL = "instant"  # the model every instant pod serves (`bench/instant_pod.py`)
POD_SEQS = 4096  # slots per instant pod in the router's profile of it (see `router_config`)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time. A response is complete at
    its Content-Length or, chunked (how Envoy relays a stream), at the last-chunk marker; nothing
    else is parsed."""

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
        complete = (len(self.buf) >= self.head + self.length if self.length >= 0
                    else self.buf.endswith(b"\r\n0\r\n\r\n"))
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
    peak_inflight: int  # requests the generator had open at once
    lag_p99: float  # seconds the generator sent behind its schedule (its own health)
    cpu_s: float  # the generator's CPU over its send loop: what the load itself cost

    @classmethod
    def read(cls, path: Path) -> LoadResult:
        return cls(**json.loads(path.read_text()))


def completion_request(host: str, tokens: int) -> bytes:
    """A streamed `/v1/completions` request, as raw HTTP/1.1."""
    body = {"model": MODEL, "prompt": "hello", "max_tokens": tokens, "stream": True}
    return _post(host, "/v1/completions", body)


def chat_request(host: str, tokens: int) -> bytes:
    """A streamed `/v1/chat/completions` request, as raw HTTP/1.1."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": tokens, "stream": True}
    return _post(host, "/v1/chat/completions", body)


def _post(host: str, path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def run_load(targets: list[tuple[str, int]], sends: np.ndarray, request: bytes) -> LoadResult:
    """Send `request` at each of `sends` (seconds from the start), round robin over `targets`."""
    loop = asyncio.get_running_loop()
    idle: list[list[_Connection]] = [[] for _ in targets]
    latencies: list[float] = []
    lags: list[float] = []
    errors, first_error, inflight, peak = 0, "", 0, 0

    async def one(i: int) -> None:
        nonlocal errors, first_error, inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        try:
            pool = idle[i % len(targets)]
            conn = pool.pop() if pool else (await loop.create_connection(_Connection, *targets[i % len(targets)]))[1]
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

    cpu0 = time.process_time()
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
    cpu = time.process_time() - cpu0
    for pool in idle:
        for conn in pool:
            assert conn.transport is not None
            conn.transport.close()
    return LoadResult(latencies, errors, first_error, peak, float(np.percentile(lags, 99)) if lags else 0.0, cpu)


def command(urls: list[str], rate: float, count: int, tokens: int, seed: int, out: Path,
            chat: bool = False) -> list[str]:
    """The load generator's command line: `count` requests at `rate` per second to `urls`."""
    return [sys.executable, "-m", "sagesched.bench.loadgen", *(a for u in urls for a in ("--url", u)),
            "--rate", str(rate), "--count", str(count), "--tokens", str(tokens), "--seed", str(seed),
            "--out", str(out), *(["--chat"] if chat else [])]


def drive(urls: list[str], rate: float, count: int, tokens: int, seed: int, chat: bool = False) -> LoadResult:
    """Run the load generator to its end and read its report."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "load.json"
        done = subprocess.run(command(urls, rate, count, tokens, seed, report, chat), capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"load generator failed: {done.stderr[-2000:]}")
        return LoadResult.read(report)


def main(argv: list[str] | None = None) -> int:
    """The load generator process: writes its `LoadResult` as JSON to `--out`."""
    from sagesched.router.proxy import raise_fd_limit

    p = argparse.ArgumentParser(prog="python -m sagesched.bench.loadgen")
    p.add_argument("--url", action="append", required=True, help="http://host:port (repeatable: round robin)")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="chat completions (default: completions)")
    p.add_argument("--out", type=Path, required=True, help="file to write the JSON report to")
    args = p.parse_args(argv)
    raise_fd_limit(1 << 20)  # thousands of held streams need a descriptor each
    targets = [(u.split("//")[1].split(":")[0], int(u.rsplit(":", 1)[1])) for u in args.url]
    sends = np.cumsum(np.random.default_rng(args.seed).exponential(1.0 / args.rate, args.count))
    sends -= sends[0]
    request = (chat_request if args.chat else completion_request)(targets[0][0], args.tokens)
    install_uvloop()
    result = asyncio.run(run_load(targets, sends, request))
    args.out.write_text(json.dumps(asdict(result)))
    return 0


# --- helpers for the orchestrators -------------------------------------------------------------
def install_uvloop() -> None:
    """uvloop where it is installed, as `sagesched router` runs: the benchmarks' processes measure
    the loop users get."""
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


def get(url: str, timeout: float = 5.0) -> bytes:
    """A plain GET: the body, or OSError."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    """Poll `url` until it answers; fail early when `proc` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            get(url, 1.0)
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not become ready") from None
            time.sleep(0.1)


def router_config(workdir: Path, pod_urls: list[str], policy: str, bench: str, **settings: object) -> Path:
    """A router configuration (for `sagesched router --config`) in front of instant pods, written to
    `workdir` with the pods' profile: one with no batch or memory limit, so that a benchmark measures
    the router, not the admission gate of an emulated H100 (256 sequences). `settings` go on top."""
    from sagesched.engine.profile import load_profile

    profile = workdir / "instant-pod.json"
    profile.write_text(load_profile().with_overrides(
        name="instant-pod", max_num_seqs=POD_SEQS, num_gpu_blocks=10_000_000,
        provenance=f"{bench}: a pod with no batch or memory limit").to_json())
    config = workdir / "router.yaml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "backends": [{"url": u, "models": [MODEL], "profile": str(profile)} for u in pod_urls],
        "policy": policy, "grpc_port": None, "snapshot_max_age_s": 3600, "scrape_interval_s": 0.5, **settings,
    }))
    return config


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
