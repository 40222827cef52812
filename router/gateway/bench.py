"""`sagesched bench extproc`: what the Endpoint Picker adds to a request in gateway mode.

Envoy is played by a grpc.aio client in the same process, sending each request as Envoy's ext_proc
filter does (headers, body, then response headers and a real streamed answer replayed from a pod).
Figures per request rate: the decision time in the servicer (last request-body message in →
endpoint headers out, queueing included), every other message's processing time, and the same
decision as the client sees it (gRPC and loop scheduling included).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np

from sagesched.http_serve import free_port

MODEL = "instant"


def register_bench(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("extproc", help="gateway mode: ext_proc picker decision and per-message latency",
                         description="Drive the router's ext_proc Endpoint Picker as Envoy does (a grpc.aio "
                                     "client in this process) against instant pods, and report per request "
                                     "rate the decision time, every other message's processing time, and "
                                     "the decision as the client sees it.")
    p.add_argument("--pods", type=int, default=4, help="instant pods behind the picker (default %(default)s)")
    p.add_argument("--rates", default="250,500,1000", help="request rates to measure (req/s)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per rate")
    p.add_argument("--policy", default="sagesched", help="the router's scheduling policy (default %(default)s)")
    p.set_defaults(func=run_extproc)


def _pct(x: list[float], q: float) -> float:
    return float(np.percentile(np.array(x) * 1e3, q)) if x else float("nan")


async def _main(args: argparse.Namespace) -> int:
    import aiohttp
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

    from sagesched.emulator import PodConfig, running_pods
    from sagesched.router.server import RouterServer
    from sagesched.router.settings import Backend, RouterSettings

    def http_headers(pairs: dict[str, str], eos: bool = False) -> ext_proc.HttpHeaders:
        return ext_proc.HttpHeaders(end_of_stream=eos, headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]))

    body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": 16, "stream": True,
                       "ignore_eos": True}).encode()
    async with running_pods(args.pods, PodConfig(model=MODEL, time_scale=0.0001)) as pods:
        async with aiohttp.ClientSession() as session:  # one real answer, replayed for every request
            async with session.post(f"{pods[0].base_url}/v1/completions", data=body,
                                    headers={"content-type": "application/json"}) as resp:
                answer = await resp.read()
        settings = RouterSettings(host="127.0.0.1", port=0, grpc_port=None, ext_proc_port=free_port(),
                                  policy=args.policy, scrape_interval_s=0.1,
                                  backends=[Backend(url=p.base_url) for p in pods])
        server = await RouterServer(settings).start()
        picker = server._ext_proc.picker
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.ext_proc_port}")
        stub = ext_proc_grpc.ExternalProcessorStub(channel)
        messages = (
            ext_proc.ProcessingRequest(request_headers=http_headers(
                {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"})),
            ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=body, end_of_stream=True)),
            ext_proc.ProcessingRequest(response_headers=http_headers(
                {":status": "200", "content-type": "text/event-stream"})),
            ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=answer, end_of_stream=True)),
        )
        print(f"ext_proc picker, {args.pods} emulated pods, policy {args.policy}; times in ms")
        print(f"{'rate':>6} {'done':>6} {'decision P50':>13} {'P99':>7} {'msg P50':>8} {'P99':>7} "
              f"{'client P50':>11} {'P99':>7}")
        try:
            for rate in [float(r) for r in args.rates.split(",")]:
                picker.timings = []
                client: list[float] = []

                failures: list[str] = []

                async def one() -> None:
                    call = stub.Process()
                    await call.write(messages[0])
                    t0 = time.perf_counter()
                    await call.write(messages[1])
                    picked = await call.read()
                    client.append(time.perf_counter() - t0)
                    if picked.HasField("immediate_response"):  # refused (queue full): nothing more to send
                        failures.append(picked.immediate_response.body.decode())
                        return
                    await call.read()
                    for m in messages[2:]:
                        await call.write(m)
                        await call.read()
                    await call.done_writing()
                    await call.read()

                rng = np.random.default_rng(0)
                tasks = []
                start = time.perf_counter()
                at = 0.0
                while at < args.duration:
                    at += rng.exponential(1.0 / rate)
                    delay = start + at - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(one()))
                for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                    if isinstance(outcome, grpc.aio.AioRpcError):  # a stream the client side lost
                        failures.append(f"{outcome.code().name}: {outcome.details()}")
                if failures:
                    print(f"{len(failures)} refused, e.g. {failures[0]}")
                decisions = [s for phase, s in picker.timings if phase == "decision"]
                others = [s for phase, s in picker.timings if phase != "decision"]
                print(f"{rate:6.0f} {len(decisions):6d} {_pct(decisions, 50):13.3f} {_pct(decisions, 99):7.3f} "
                      f"{_pct(others, 50):8.3f} {_pct(others, 99):7.3f} {_pct(client, 50):11.3f} "
                      f"{_pct(client, 99):7.3f}")
        finally:
            await channel.close()
            await server.stop()
    return 0



def run_extproc(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))
