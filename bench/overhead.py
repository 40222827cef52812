"""`sagesched bench overhead`: what the router itself costs, in front of pods that answer at once.

Three figures: the scheduler's dispatch-pass time (P50/P99), the latency the router adds over calling
a pod directly (P50/P99 at each request rate; same client, same pods, same streaming answers), and
how many concurrent streams one router holds open (pods send a first token and then wait).
"""
from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import numpy as np

MODEL = "instant"


async def _load(session: aiohttp.ClientSession, urls: list[str], rate: float, duration: float, tokens: int,
                seed: int) -> tuple[np.ndarray, int]:
    """Poisson arrivals for `duration` s, each a streamed completion read to its end; latencies (s)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, int(rate * duration * 1.5) + 1)
    sends = np.cumsum(gaps)
    sends = sends[sends < duration]
    latencies: list[float] = []
    errors = 0
    body = {"model": MODEL, "prompt": "hello", "max_tokens": tokens, "stream": True}

    async def one(i: int, at: float, start: float) -> None:
        nonlocal errors
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        try:
            async with session.post(f"{urls[i % len(urls)]}/v1/completions", json=body) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
                    return
            latencies.append(time.perf_counter() - t0)
        except aiohttp.ClientError:
            errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(one(i, float(at), start) for i, at in enumerate(sends)))
    return np.array(latencies), errors


async def _held_streams(router, pods, session: aiohttp.ClientSession, target: int) -> tuple[int, int]:
    """Open `target` streams through the router while pods hold them; the most held at once."""
    hold = asyncio.Event()
    for pod in pods:
        pod.hold = hold
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 4, "stream": True}
    errors = 0

    async def one() -> None:
        nonlocal errors
        try:
            async with session.post(f"{router.url}/v1/completions", json=body) as resp:
                await resp.read()
                errors += resp.status != 200
        except aiohttp.ClientError:
            errors += 1

    tasks = [asyncio.create_task(one()) for _ in range(target)]
    dispatcher = router.router.dispatcher
    peak, deadline = 0, time.perf_counter() + 60
    while time.perf_counter() < deadline:
        held = len(dispatcher.running) + len(dispatcher.waiting)
        peak = max(peak, held)
        if held >= target or all(t.done() for t in tasks):
            break
        await asyncio.sleep(0.05)
    hold.set()
    await asyncio.gather(*tasks)
    for pod in pods:
        pod.hold = None
    return peak, errors


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else float("nan")


async def _main(args: argparse.Namespace) -> int:
    from sagesched.router.server import RouterServer
    from sagesched.router.settings import Backend, RouterSettings

    from .instant_pod import InstantPod

    pods = [await InstantPod(model=MODEL, tokens=args.tokens).start() for _ in range(args.pods)]
    settings = RouterSettings(host="127.0.0.1", port=0, grpc_port=None, policy=args.policy,
                              backends=[Backend(url=p.url) for p in pods], max_queue_per_model=100_000,
                              snapshot_max_age_s=3600)
    router = await RouterServer(settings).start()
    dispatcher = router.router.dispatcher
    connector = aiohttp.TCPConnector(limit=0)
    rates = [float(r) for r in args.rates.split(",")]
    print(f"router overhead: {args.pods} instant pods, policy {args.policy}, {args.tokens} streamed tokens "
          f"per answer, {args.duration:.0f}s per rate")
    print(f"{'rate/s':>7} | {'direct p50':>10}{'p99':>8} | {'router p50':>10}{'p99':>8} | "
          f"{'added p50':>9}{'p99':>8} ms | {'decision p50':>12}{'p99':>8} us | err")
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            for i, rate in enumerate(rates):
                direct, e1 = await _load(session, [p.url for p in pods], rate, args.duration, args.tokens, i)
                dispatcher.decision_seconds.clear()
                dispatcher.record_decisions = True
                routed, e2 = await _load(session, [router.url], rate, args.duration, args.tokens, i)
                dispatcher.record_decisions = False
                decisions = np.array(dispatcher.decision_seconds) * 1e6
                ms = 1e3
                print(f"{rate:>7.0f} | {_pct(direct, 50) * ms:>10.2f}{_pct(direct, 99) * ms:>8.2f} | "
                      f"{_pct(routed, 50) * ms:>10.2f}{_pct(routed, 99) * ms:>8.2f} | "
                      f"{(_pct(routed, 50) - _pct(direct, 50)) * ms:>9.2f}"
                      f"{(_pct(routed, 99) - _pct(direct, 99)) * ms:>8.2f}    | "
                      f"{_pct(decisions, 50):>12.1f}{_pct(decisions, 99):>8.1f}    | {e1 + e2}", flush=True)
            if args.streams:
                peak, errors = await _held_streams(router, pods, session, args.streams)
                print(f"concurrent streams held by one router: {peak} of {args.streams} attempted "
                      f"({errors} errors)")
    finally:
        await router.stop()
        for pod in pods:
            await pod.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_main(args))
