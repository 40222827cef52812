"""The picker's own Python work per request, without gRPC: `_Exchange.handle` called directly with the
messages Envoy sends for one short streamed chat request (headers, body, empty end of body, response
headers, the whole answer, empty end of answer), against a real router and 4 instant pods in this
process, one request at a time.

Prints the CPU time per exchange (thread time, median of 250-request blocks: on a shared machine
wall-clock time measures the neighbours) and the decision's wall time (the body's end → the
endpoint's answer built). `--profile` prints cProfile's top functions instead of timing.
Run it from the root of the tree to measure (`python bench/results/gateway/python_path.py`): that
tree's `sagesched` is the one imported.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.getcwd())

from envoy.config.core.v3 import base_pb2  # noqa: E402
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc  # noqa: E402

from sagesched.bench.instant_pod import InstantPod  # noqa: E402
from sagesched.engine.profile import load_profile  # noqa: E402
from sagesched.http_serve import free_port  # noqa: E402
from sagesched.router.gateway.servicer import _Exchange  # noqa: E402
from sagesched.router.server import RouterServer  # noqa: E402
from sagesched.router.settings import RouterSettings  # noqa: E402


def headers(pairs: dict[str, str]) -> ext_proc.HttpHeaders:
    return ext_proc.HttpHeaders(headers=base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]))


async def main(args: argparse.Namespace) -> None:
    pods = [await InstantPod(model="instant", tokens=8).start() for _ in range(4)]
    tmp = Path(tempfile.mkdtemp())
    profile = tmp / "instant-pod.json"
    profile.write_text(load_profile().with_overrides(name="instant-pod", max_num_seqs=4096, num_gpu_blocks=10_000_000,
                                                     provenance="python_path.py").to_json())
    config = tmp / "router.yaml"
    config.write_text(json.dumps({
        "backends": [{"url": p.url, "models": ["instant"], "profile": str(profile)} for p in pods],
        "policy": args.policy, "grpc_port": None, "snapshot_max_age_s": 3600, "scrape_interval_s": 0.5,
        "host": "127.0.0.1", "port": 0, "ext_proc_port": free_port()}))
    server = await RouterServer(RouterSettings.from_yaml(str(config))).start(wait_for_pods=30)
    picker = server._ext_proc.picker
    body = json.dumps({"model": "instant", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
                       "stream": True}).encode()
    answer = b"".join(pods[0]._events(True, 8, True))
    messages = [
        ext_proc.ProcessingRequest(request_headers=headers({
            ":method": "POST", ":path": "/v1/chat/completions", ":authority": "gateway",
            "content-type": "application/json", "content-length": str(len(body))})),
        ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(body=body)),
        ext_proc.ProcessingRequest(request_body=ext_proc.HttpBody(end_of_stream=True)),
        ext_proc.ProcessingRequest(response_headers=headers({":status": "200", "content-type": "text/event-stream"})),
        ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=answer)),
        ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(end_of_stream=True)),
    ]
    decisions, blocks = [], []
    profiler = cProfile.Profile() if args.profile else None
    cpu0 = time.thread_time()
    for i in range(args.requests):
        if i % 250 == 0:
            blocks.append(time.thread_time() - cpu0)
            cpu0 = time.thread_time()
            if profiler is not None and i == 500:
                profiler.enable()
        exchange = _Exchange(picker.backend, picker.settings)
        for message in messages:
            t0 = time.perf_counter()
            for response in await exchange.handle(message):
                response.SerializeToString()  # what gRPC does with it
            if message is messages[2]:
                decisions.append(time.perf_counter() - t0)
        exchange.close()
    await server.stop()
    for pod in pods:
        await pod.stop()
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(40)
        return
    d = np.array(decisions[500:]) * 1e6
    print(f"CPU per exchange {np.median(blocks[3:]) / 250 * 1e6:.0f} us (median of 250-request blocks); "
          f"decision P50 {np.median(d):.0f} us, P99 {np.percentile(d, 99):.0f} us")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--policy", default="sagesched")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--sort", default="cumulative", help="cProfile sort key (cumulative, tottime)")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args))
