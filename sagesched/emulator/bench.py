"""`sagesched bench emulator`: how many emulated tokens per wall second one emulator process
delivers. The pods run in a child process (`sagesched emulate-pod --pods N`) at a tiny time scale so
the host, not the engine model, is the limit; streaming clients in this process count SSE token
chunks, so the figure is tokens that really reached clients."""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class Tally:
    requests: int = 0
    tokens: int = 0
    errors: int = 0


def register_bench(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "emulator", help="tokens/s one pod-emulator process sustains",
        description="Start `sagesched emulate-pod --pods N` in a child process at a tiny time scale and count "
                    "the streamed tokens that reach concurrent clients in this one: emulated tokens per wall "
                    "second one emulator process delivers.")
    parser.add_argument("--pods", type=int, default=4, help="emulated pods in the child process (default %(default)s)")
    parser.add_argument("--clients", type=int, default=128, help="concurrent streaming clients")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (at most 60)")
    parser.add_argument("--time-scale", type=float, default=0.001,
                        help="wall seconds per emulated second: small, so the host is the limit (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per request (default %(default)s)")
    parser.add_argument("--port", type=int, default=18400, help="port of the first pod (default %(default)s)")
    parser.set_defaults(func=run)


async def _client(session, urls: list[str], index: int, stop_at: float, max_tokens: int, tally: Tally) -> None:
    body = {"model": "llama-3-8b", "prompt": "benchmark " * 50, "max_tokens": max_tokens, "stream": True}
    i = index
    while time.monotonic() < stop_at:
        url = urls[i % len(urls)] + "/v1/completions"
        i += 1
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                tally.errors += 1
                continue
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    tally.tokens += 1
        tally.requests += 1


async def _wait_ready(session, urls: list[str]) -> None:
    for url in urls:
        for _ in range(500):
            try:
                async with session.get(url + "/health") as resp:
                    if resp.status == 200:
                        break
            except OSError:
                await asyncio.sleep(0.02)  # readiness poll of a child process: no event to await
        else:
            raise RuntimeError(f"emulated pod at {url} never became healthy")


async def _load(args: argparse.Namespace, urls: list[str]) -> tuple[Tally, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        await _wait_ready(session, urls)
        tally = Tally()
        start = time.monotonic()
        stop_at = start + min(args.duration, 60.0)
        await asyncio.gather(*(_client(session, urls, i, stop_at, args.max_tokens, tally)
                               for i in range(args.clients)))
        return tally, time.monotonic() - start


def run(args: argparse.Namespace) -> int:
    cmd = [sys.executable, "-P", "-m", "sagesched", "emulate-pod", "--pods", str(args.pods), "--port", str(args.port),
           "--time-scale", str(args.time_scale), "--max-queue", "100000"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        urls = [f"http://127.0.0.1:{args.port + i}" for i in range(args.pods)]
        tally, wall = asyncio.run(_load(args, urls))
    finally:
        server.terminate()
        server.wait(timeout=10)
    result = {"pods": args.pods, "clients": args.clients, "time_scale": args.time_scale, "wall_s": round(wall, 1),
              "requests": tally.requests, "errors": tally.errors, "tokens": tally.tokens,
              "tokens_per_s": round(tally.tokens / wall), "requests_per_s": round(tally.requests / wall, 1)}
    print(json.dumps(result))
    return 0
