"""`sagesched router` on SIGTERM: readiness fails at once, streams in flight finish, then it exits."""
from __future__ import annotations

import signal
import subprocess
import sys

import aiohttp

from sagesched.http_serve import free_port
from tests.conftest import eventually, wait_for_port
from tests.reliability.conftest import MODEL, PodProcess


async def test_sigterm_fails_readiness_and_lets_the_stream_in_flight_finish():
    pod = PodProcess(time_scale=1.0).start()  # real time: 300 tokens take seconds
    port = free_port()
    router = subprocess.Popen([sys.executable, "-m", "sagesched", "router", "--backend", pod.url, "--host",
                               "127.0.0.1", "--port", str(port), "--grpc-port", "-1", "--shutdown-grace", "60"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, timeout=30)
        url = f"http://127.0.0.1:{port}"
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 300, "stream": True, "ignore_eos": True}
        async with aiohttp.ClientSession() as session:
            await eventually(lambda: _status(session, f"{url}/ready", 200), what="router ready")
            async with session.post(f"{url}/v1/completions", json=body) as resp:
                first = await resp.content.readuntil(b"\n\n")
                router.send_signal(signal.SIGTERM)
                await eventually(lambda: _status(session, f"{url}/ready", 503), interval=0.02,
                                 what="readiness failing while draining")
                rest = await resp.content.read()
        events = [e for e in (first + rest).split(b"\n\n") if e.startswith(b"data: {")]
        assert len(events) == 300 and b'"finish_reason":"length"' in events[-1].replace(b" ", b"")
        assert (first + rest).rstrip().endswith(b"data: [DONE]")
        assert router.wait(timeout=30) == 0, router.stderr.read() if router.stderr else ""
    finally:
        if router.poll() is None:
            router.kill()
        pod.kill()


async def _status(session: aiohttp.ClientSession, url: str, expected: int) -> bool:
    async with session.get(url) as resp:
        return resp.status == expected
