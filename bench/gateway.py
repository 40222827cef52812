"""`sagesched bench gateway`: the Endpoint Picker behind a real Envoy, every part in its own process.

Processes, as in a deployment: the instant pods (`python -m sagesched.bench.instant_pod`), the router
in gateway mode (its ext_proc port on, run by `python -m sagesched.bench.gateway`: the same
`RouterServer` as `sagesched router`, uvloop, plus a loopback endpoint that hands the picker's own
per-message timings to this benchmark), two Envoys rendered by `envoy_config` (one with the picker's
ext_proc filter, one routing straight to the pool with the same config minus the picker), and an
open-loop load generator (`python -m sagesched.bench.loadgen --chat`, a raw-socket HTTP/1.1 client:
Poisson send times fixed before the run, keep-alive connections).

Per rate, `--repeats` interleaved pairs of runs (direct through Envoy, then through Envoy + picker):
- latency of a short streamed chat request (send → last chunk) both ways; "added" is the difference
  of the percentiles, pair by pair;
- the picker's decision time (its last request-body message in → endpoint headers out, queueing
  included) and every other ext_proc message's handling time, from inside the router process;
- CPU per request from /proc/<pid>/stat of the router, of each Envoy, of the pods, and the load
  generator's own (its send loop only), so what the load generator costs is on the table.
Figures are the median over the repeats, with the [min-max] spread of the per-run figures; "other
load" is how many cores other work kept busy meanwhile (the machine is shared). When requests fail,
Envoy's counters that say why (circuit breakers, failed ext_proc streams) are printed under the row.

Where the time goes: `--null-picker` runs the same servicer over a backend that decides nothing (the
floor that gRPC, the event loop and the protocol's messages cost), `--request-path-only` has Envoy
send the picker nothing of the response, and `--profile` records the picker with py-spy.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sagesched.bench.loadgen import MODEL, cpu_seconds, drive, get, install_uvloop, router_config, wait_ready
from sagesched.http_serve import free_port

if TYPE_CHECKING:  # the CLI imports this module to list the command: protobufs load when it runs
    from sagesched.router.gateway.protocol import GatewayRequest
    from sagesched.router.gateway.servicer import EndpointPicker


def register_bench(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("gateway", help="gateway mode end to end: Envoy + ext_proc picker, separate processes",
                         description="Instant pods, the router's ext_proc picker, Envoy and an open-loop load "
                                     "generator, each in its own process. Per request rate: latency through "
                                     "Envoy with and without the picker (added = the difference), the "
                                     "picker's decision time, and CPU per request of every process.")
    p.add_argument("--pods", type=int, default=4, help="instant pods (default %(default)s)")
    p.add_argument("--rates", default="250,500,1000", help="request rates, req/s (default %(default)s)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per run (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved direct/picker pairs per rate (default %(default)s)")
    p.add_argument("--tokens", type=int, default=8, help="streamed tokens per answer (default %(default)s)")
    p.add_argument("--policy", default="sagesched", help="the router's scheduling policy (default %(default)s)")
    p.add_argument("--envoy-concurrency", type=int, default=0,
                   help="Envoy worker threads (default 0: Envoy's own default, one per core)")
    p.add_argument("--null-picker", action="store_true",
                   help="the ext_proc servicer over a backend that decides nothing (always the first pod): "
                        "the floor that gRPC, the event loop and the protocol's messages cost")
    p.add_argument("--request-path-only", action="store_true",
                   help="Envoy sends the picker no response messages (it learns only the stream's end, and "
                        "counts no tokens): what the response path costs; not a supported configuration")
    p.add_argument("--profile", type=Path, default=None,
                   help="py-spy the router during the runs of the last rate; write its profile here (.svg: flame "
                        "graph, .json: speedscope, else collapsed stacks)")
    p.add_argument("--native", action="store_true",
                   help="with --profile: native frames too (py-spy then pauses the router at each sample)")
    p.set_defaults(func=run_gateway)


# --- the router in gateway mode (its own process) ----------------------------------------------
@dataclass
class _NullTicket:
    endpoints: list[str]
    body: bytes


class NullBackend:
    """A `GatewayBackend` that decides nothing: every request goes to one pod, unchanged. The
    picker's servicer over it costs what gRPC, the event loop and the protocol's messages cost: the
    floor under any scheduling (`--null-picker`)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    async def pick(self, request: GatewayRequest, subset: frozenset[str] | None) -> _NullTicket:
        return _NullTicket([self.endpoint], request.body)

    def served(self, ticket: _NullTicket, endpoint: str | None, status: int, content_type: str) -> None:
        pass

    def response_body(self, ticket: _NullTicket, chunk: bytes, end_of_stream: bool) -> bytes:
        return chunk

    def finish(self, ticket: _NullTicket, ok: bool) -> None:
        pass


async def _start_picker(args: argparse.Namespace) -> tuple[EndpointPicker, Callable[[], Awaitable[None]]]:
    """The router (`RouterServer`, as `sagesched router --config` runs it) or, with `--null`, the
    servicer over `NullBackend` with the health service Envoy checks; the picker and how to stop it."""
    import grpc
    from aiohttp import web
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from sagesched.http_serve import serve_app
    from sagesched.router.gateway.protocol import EXT_PROC_SERVICE
    from sagesched.router.gateway.servicer import EndpointPicker
    from sagesched.router.server import RouterServer
    from sagesched.router.settings import RouterSettings

    settings = RouterSettings.from_yaml(args.config)
    if not args.null:
        router = await RouterServer(settings).start(wait_for_pods=30)
        return router._ext_proc.picker, router.stop
    picker = EndpointPicker(NullBackend(settings.backends[0].url.split("//", 1)[1]))
    server = grpc.aio.server()
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(picker, server)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"{settings.host}:{settings.ext_proc_port}")
    await server.start()
    await checks.set(EXT_PROC_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    ready = web.Application()  # what the orchestrator polls, as it polls the router's /ready
    ready.router.add_get("/ready", lambda request: web.Response(text="ok"))
    runner, _ = await serve_app(ready, settings.host, settings.port)

    async def stop() -> None:
        await runner.cleanup()
        await server.stop(grace=1.0)

    return picker, stop


async def _serve_picker(args: argparse.Namespace) -> None:
    """The picker with its per-message timings kept, served on a loopback port (`GET /timings`
    returns and clears them), until SIGTERM."""
    from aiohttp import web

    from sagesched.http_serve import serve_app

    picker, stop_picker = await _start_picker(args)
    picker.timings = []

    async def timings(request: web.Request) -> web.Response:
        taken, picker.timings = picker.timings, []
        return web.json_response(taken)

    app = web.Application()
    app.router.add_get("/timings", timings)
    runner, _ = await serve_app(app, "127.0.0.1", args.timings_port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await stop_picker()


def _router_main(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING)
    install_uvloop()
    asyncio.run(_serve_picker(args))
    return 0


# --- the orchestrator --------------------------------------------------------------------------
@dataclass
class _Stack:
    pods_pid: int
    router_pid: int
    timings_url: str
    direct_url: str  # Envoy straight to the pool
    direct_pid: int
    picker_url: str  # Envoy with the picker
    picker_pid: int
    picker_admin: str  # that Envoy's admin interface


@contextlib.contextmanager
def _stack(args: argparse.Namespace, workdir: Path) -> Iterator[_Stack]:
    """Every process of the benchmark; each one stopped (and waited for) on leaving."""
    import yaml

    from sagesched.router.gateway import envoy_config
    from sagesched.router.gateway.envoy_config import EnvoyGateway

    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], **kwargs) -> subprocess.Popen:
        procs.append(subprocess.Popen(cmd, **kwargs))
        return procs[-1]

    try:
        pods = start([sys.executable, "-m", "sagesched.bench.instant_pod", "--pods", str(args.pods),
                      "--model", MODEL, "--tokens", str(args.tokens)], stdout=subprocess.PIPE, text=True)
        assert pods.stdout is not None
        pod_urls = json.loads(pods.stdout.readline())
        ext_proc_port, http_port, timings_port = free_port(), free_port(), free_port()
        config = router_config(workdir, pod_urls, args.policy, "bench gateway",
                               host="127.0.0.1", port=http_port, ext_proc_port=ext_proc_port)
        router = start([sys.executable, "-m", "sagesched.bench.gateway",
                        "--config", str(config), "--timings-port", str(timings_port),
                        *(["--null"] if args.null_picker else [])])
        wait_ready(f"http://127.0.0.1:{http_port}/ready", router, "the router")
        pool = tuple((u.split("//")[1].split(":")[0], int(u.rsplit(":", 1)[1])) for u in pod_urls)
        gateway = EnvoyGateway(picker_host="127.0.0.1", picker_port=ext_proc_port, pool=pool, pool_dns=False)
        envoys = []
        for picker in (False, True):
            listen, admin = free_port(), free_port()
            path = workdir / f"envoy-{'picker' if picker else 'direct'}.yaml"
            bootstrap = envoy_config.bootstrap(replace(gateway, listen_port=listen), picker=picker, admin_port=admin)
            if picker and args.request_path_only:
                _skip_response_processing(bootstrap)
            path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
            cmd = [envoy_config.find_envoy(), "-c", str(path), "--log-level", "error", "--base-id", str(listen)]
            if args.envoy_concurrency:
                cmd += ["--concurrency", str(args.envoy_concurrency)]
            proc = start(cmd, stdout=subprocess.DEVNULL)
            # Ready: the admin says LIVE and, with the picker, its cluster passed a health check.
            wait_ready(f"http://127.0.0.1:{admin}/ready", proc, "envoy")
            if picker:
                _wait_healthy(f"http://127.0.0.1:{admin}", proc)
            envoys.append((f"http://127.0.0.1:{listen}", proc.pid, f"http://127.0.0.1:{admin}"))
        yield _Stack(pods.pid, router.pid, f"http://127.0.0.1:{timings_port}/timings",
                     envoys[0][0], envoys[0][1], envoys[1][0], envoys[1][1], envoys[1][2])
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _skip_response_processing(config: dict) -> None:
    """Envoy sends the picker nothing of the response: the stream's close is all it learns (the
    request is released as abandoned, with no tokens counted). Measures what the response path costs."""
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (ext_proc,) = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"]
    ext_proc["typed_config"]["processing_mode"].update(
        response_header_mode="SKIP", response_body_mode="NONE", response_trailer_mode="SKIP")


def _wait_healthy(admin: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    from sagesched.router.gateway.envoy_config import PICKER

    deadline = time.monotonic() + timeout
    while b"healthy" not in _cluster_health(admin, PICKER):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("envoy never saw the picker healthy")
        time.sleep(0.1)


def _cluster_health(admin: str, cluster: str) -> bytes:
    text = get(f"{admin}/clusters")
    return b"\n".join(line for line in text.splitlines()
                      if line.startswith(cluster.encode() + b"::") and b"::health_flags::" in line
                      and line.rstrip().endswith(b"healthy"))


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def envoy_failures(admin: str) -> dict[str, int]:
    """Envoy's non-zero counters that say why requests failed: circuit breakers that overflowed,
    ext_proc streams that failed or timed out, requests the pool refused."""
    out = {}
    for line in get(f"{admin}/stats?filter=overflow|ext_proc.*(failed|timeout|error)|rq_5xx|cx_connect_fail"
                     ).decode().splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit() and int(value) > 0:
            out[name] = int(value)
    return out


def _ms(x: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(x) * 1e3, q)) if len(x) else float("nan")


@dataclass
class _Run:
    """One direct/picker pair's figures (ms)."""

    direct: tuple[float, float]
    picker: tuple[float, float]
    decision: tuple[float, float]
    message: tuple[float, float]
    messages: float  # ext_proc messages from Envoy per request
    cpu: dict[str, float]  # per request, ms
    errors: int
    lag_p99: float
    others: float  # cores busy with work outside the benchmark during the picker run


def _pair(stack: _Stack, rate: float, count: int, tokens: int, seed: int) -> tuple[_Run, list[str]]:
    direct_cpu0 = cpu_seconds(stack.direct_pid)
    direct = drive([stack.direct_url], rate, count, tokens, seed, chat=True)
    direct_envoy = cpu_seconds(stack.direct_pid) - direct_cpu0
    get(stack.timings_url)  # start clean
    pids = {"picker": stack.router_pid, "envoy": stack.picker_pid, "pods": stack.pods_pid,
            "envoy direct": stack.direct_pid}
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    machine0, children0, t0 = busy_seconds(), _children_cpu(), time.monotonic()
    routed = drive([stack.picker_url], rate, count, tokens, seed, chat=True)
    used = {k: cpu_seconds(p) - before[k] for k, p in pids.items()}
    # What else kept the machine busy meanwhile (another user's work), in cores: it shares the 2 cores.
    ours = sum(used.values()) + _children_cpu() - children0
    other_load = max(0.0, busy_seconds() - machine0 - ours) / (time.monotonic() - t0)
    timings = json.loads(get(stack.timings_url))
    decisions = [s for phase, s in timings if phase == "decision"]
    others = [s for phase, s in timings if phase != "decision"]
    cpu = {"picker": used["picker"], "envoy": used["envoy"], "envoy direct": direct_envoy,
           "pods": used["pods"], "loadgen": routed.cpu_s}
    run = _Run((_ms(direct.latencies, 50), _ms(direct.latencies, 99)),
               (_ms(routed.latencies, 50), _ms(routed.latencies, 99)),
               (_ms(decisions, 50), _ms(decisions, 99)), (_ms(others, 50), _ms(others, 99)),
               len(timings) / max(1, len(decisions)),
               {k: v / count * 1e3 for k, v in cpu.items()}, direct.errors + routed.errors,
               max(direct.lag_p99, routed.lag_p99) * 1e3, other_load)
    notes = [f"first error {way}: {r.first_error}" for way, r in (("direct", direct), ("with the picker", routed))
             if r.first_error]
    if routed.errors:
        notes.append(f"envoy (with the picker) counters since start: {envoy_failures(stack.picker_admin)}")
    return run, notes


def _spread(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def _report(rate: float, runs: list[_Run]) -> str:
    def col(get, digits: int = 2) -> str:
        return _spread([get(r) for r in runs], digits)

    return " | ".join([
        f"{rate:.0f}",
        col(lambda r: r.direct[0]), col(lambda r: r.direct[1]), col(lambda r: r.picker[0]), col(lambda r: r.picker[1]),
        col(lambda r: r.picker[0] - r.direct[0]), col(lambda r: r.picker[1] - r.direct[1]),
        col(lambda r: r.decision[0], 3), col(lambda r: r.decision[1], 3), col(lambda r: r.message[0], 3), col(lambda r: r.messages, 1),
        col(lambda r: r.cpu["picker"], 3), col(lambda r: r.cpu["envoy"], 3), col(lambda r: r.cpu["envoy direct"], 3),
        col(lambda r: r.cpu["pods"], 3), col(lambda r: r.cpu["loadgen"], 3),
        col(lambda r: r.lag_p99), col(lambda r: r.others), str(sum(r.errors for r in runs)),
    ])


HEADER = ("rate/s | direct P50 | direct P99 | picker P50 | picker P99 | added P50 | added P99 | decision P50 | "
          "decision P99 | other msg P50 | msgs/req | CPU/req picker | envoy | envoy direct | pods | loadgen | lag P99 | other load | err")


def _profiled(args: argparse.Namespace, stack: _Stack) -> subprocess.Popen | None:
    if args.profile is None:
        return None
    if shutil.which("py-spy") is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    return subprocess.Popen(["py-spy", "record", "--pid", str(stack.router_pid), "--rate", "250", "--format",
                             {".svg": "flamegraph", ".json": "speedscope"}.get(args.profile.suffix, "raw"),
                             "--output", str(args.profile), *(["--native"] if args.native else ["--nonblocking"])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(args: argparse.Namespace) -> int:
    rates = [float(r) for r in args.rates.split(",") if r]
    print(f"gateway: {args.pods} instant pods ({args.tokens}-token streams), router (ext_proc picker, policy "
          f"{args.policy}), Envoy ×2 (with / without the picker), load generator: separate processes on "
          f"{os.cpu_count()} cores; {args.duration:.0f}s per run, {args.repeats} interleaved pair(s) per rate")
    print("latency and decision in ms; CPU per request in ms; median [min-max] over the pairs")
    with tempfile.TemporaryDirectory() as tmp, _stack(args, Path(tmp)) as stack:
        print(HEADER, flush=True)
        for i, rate in enumerate(rates):
            count = max(1, int(rate * args.duration))
            spy = _profiled(args, stack) if i == len(rates) - 1 else None
            runs, errors = [], []
            try:
                for k in range(args.repeats):
                    run, first = _pair(stack, rate, count, args.tokens, 1000 * i + k)
                    runs.append(run)
                    errors += first
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(60)
            print(_report(rate, runs), flush=True)
            for e in errors[:3]:
                print(f"  {e}")
    return 0


def run_gateway(args: argparse.Namespace) -> int:
    return main(args)


def _entry(argv: list[str] | None = None) -> int:
    """The benchmark's router process (the picker); the load generator is `sagesched.bench.loadgen`."""
    p = argparse.ArgumentParser(prog="python -m sagesched.bench.gateway",
                                description="the router of `sagesched bench gateway`, with its timings endpoint")
    p.add_argument("--config", required=True)
    p.add_argument("--timings-port", type=int, required=True)
    p.add_argument("--null", action="store_true", help="the servicer over NullBackend, no router")
    return _router_main(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(_entry())
