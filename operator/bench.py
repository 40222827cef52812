"""`sagesched bench scrape`: CPU cost of the operator's scraper.

N pods' /metrics are served by tiny aiohttp servers in a child process (vLLM exposition text with
`sagesched.engines.vllm` names; the emulator serves the same format), so the CPU measured here is the
scraper's alone: time.process_time() of this process over a wall-clock window.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time


def register_bench(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("scrape", help="CPU cost of scraping N pods' /metrics at a fixed interval",
                              description="Serve N pods' vLLM /metrics from a child process and measure the CPU "
                                          "time the operator's scraper spends in this process over a wall-clock "
                                          "window.")
    p.add_argument("--pods", type=int, default=100, help="pods to scrape (default %(default)s)")
    p.add_argument("--interval", type=float, default=0.2, help="scrape interval, seconds")
    p.add_argument("--duration", type=float, default=20.0, help="measured window, seconds")
    p.add_argument("--redis-url", default=None, help="publish to Redis (default: in-process store)")
    p.set_defaults(func=_run)


def _metrics_text(i: int) -> str:
    from sagesched.engines import vllm

    lab = f'engine="0",model_name="m{i % 4}"'
    lines = [f"# TYPE {vllm.RUNNING} gauge", f"{vllm.RUNNING}{{{lab}}} {i % 7}.0",
             f"{vllm.WAITING}{{{lab}}} {i % 3}.0", f"{vllm.KV_USAGE}{{{lab}}} 0.{i % 10}",
             f'{vllm.CACHE_CONFIG}{{block_size="16",num_gpu_blocks="2048",cache_dtype="auto"}} 1.0',
             f"{vllm.PROMPT_TOKENS}_total{{{lab}}} {i * 100}.0",
             f"{vllm.GENERATION_TOKENS}_total{{{lab}}} {i * 300}.0",
             f"{vllm.PREEMPTIONS}_total{{{lab}}} 0.0"]
    # A real vLLM page is mostly histograms the scraper skips; include a realistic amount (~14 KB).
    for hist in (vllm.TTFT, vllm.ITL, vllm.E2E, vllm.QUEUE_TIME):
        lines.append(f"# TYPE {hist} histogram")
        for le in (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   7.5, 10.0, 20.0, 40.0, 80.0, "+Inf"):
            lines.append(f'{hist}_bucket{{{lab},le="{le}"}} {i}.0')
        lines += [f"{hist}_sum{{{lab}}} 1.0", f"{hist}_count{{{lab}}} {i}.0"]
    return "\n".join(lines) + "\n"


async def _serve(n: int) -> None:
    from aiohttp import web

    from sagesched.http_serve import serve_app

    ports, runners = [], []  # the runners stay referenced while the servers run
    for i in range(n):
        text = _metrics_text(i)
        app = web.Application()
        app.router.add_get("/metrics", lambda _r, t=text: web.Response(text=t, content_type="text/plain"))
        runner, port = await serve_app(app, "127.0.0.1", 0)
        runners.append(runner)
        ports.append(port)
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


async def _scrape(ports: list[int], args: argparse.Namespace) -> dict:
    from sagesched.operator.scraper import Target, make_session, scrape_all, snapshots_from
    from sagesched.state.pod_store import open_store

    store = open_store(args.redis_url)
    targets = [Target(f"pod-{i}", "bench", f"127.0.0.1:{p}", f"http://127.0.0.1:{p}/metrics")
               for i, p in enumerate(ports)]
    loop = asyncio.get_running_loop()
    async with make_session() as session:
        async def round_() -> list:
            results = await scrape_all(session, targets, engine="vllm", timeout=1.0)
            await store.publish_many(snapshots_from(results, policy="bench"), ttl=5.0)
            return results

        await round_()  # warm the connection pool
        rounds = errors = 0
        latencies: list[float] = []
        wall0, cpu0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - wall0 < args.duration:
            started = loop.time()
            results = await round_()
            rounds += 1
            errors += sum(r.error is not None for r in results)
            latencies.append(loop.time() - started)
            await asyncio.sleep(max(0.0, args.interval - (loop.time() - started)))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await store.close()
    latencies.sort()
    return {"pods": len(targets), "interval_s": args.interval, "wall_s": round(wall, 2),
            "rounds": rounds, "scrapes": rounds * len(targets), "errors": errors,
            "cpu_s": round(cpu, 3), "cpu_percent_of_one_core": round(100 * cpu / wall, 1),
            "cpu_ms_per_pod_scrape": round(1000 * cpu / max(1, rounds * len(targets)), 3),
            "round_ms_p50": round(1000 * latencies[len(latencies) // 2], 1),
            "round_ms_p99": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
            "store": "redis" if args.redis_url else "in-process"}


def _run(args: argparse.Namespace) -> int:
    server = subprocess.Popen([sys.executable, "-m", "sagesched.operator.bench", "serve", str(args.pods)],
                              stdout=subprocess.PIPE, text=True)
    try:
        ports = json.loads(server.stdout.readline())
        result = asyncio.run(_scrape(ports, args))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    asyncio.run(_serve(int(sys.argv[2])))
