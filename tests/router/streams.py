"""Streams as a client reads them, and slow one-sequence emulated pods, for tests that need requests
to overlap on a pod (live preemption, live configuration swaps)."""
from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest

from sagesched.emulator import PodConfig, start_pods
from sagesched.engine import load_profile
from sagesched.router.settings import Backend

from tests.router.conftest import MODEL

LONG = 1200
SHORT = 20
SHORTS = 8  # more than the pod's one sequence and the router's engine buffer of 4: some queue at the router
STARTED = 150  # the long stream has streamed this much when the shorts arrive (past the first refresh bucket)


@pytest.fixture
async def slow_pods(tmp_path: Path):
    """Pods of one sequence each, slow enough (time scale 0.05) that a long stream is still running
    when the shorts arrive, with priority scheduling (the router's order reaches the engine)."""
    started = []

    async def start(count: int) -> list:
        profile = load_profile().with_overrides(name="one-seq", max_num_seqs=1)
        path = tmp_path / "one-seq.json"
        path.write_text(profile.to_json())
        pods = await start_pods(count, PodConfig(model=MODEL, profile=str(path), time_scale=0.05,
                                                 scheduling="priority"))
        started.extend(pods)
        return pods

    yield start
    for pod in started:
        await pod.stop()


def body(max_tokens: int, chat: bool = True, **extra) -> dict:
    prompt = {"messages": [{"role": "user", "content": "tell me a story"}]} if chat else {"prompt": "Once upon"}
    return {"model": MODEL, **prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, **extra}


class Stream:
    """One raw SSE stream as a client receives it."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.ids: set[str] = set()
        self.finish: list[str] = []
        self.usage: dict | None = None
        self.tokens = asyncio.Event()
        self.status = 0

    def take(self, data: dict) -> None:
        self.ids.add(data["id"])
        self.usage = data.get("usage") or self.usage
        for choice in data["choices"]:
            self.text.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
            if choice.get("finish_reason"):
                self.finish.append(choice["finish_reason"])
        if len("".join(self.text).split()) >= STARTED:
            self.tokens.set()


async def stream(session: aiohttp.ClientSession, url: str, body: dict, out: Stream | None = None,
                  headers: dict | None = None) -> Stream:
    out = out or Stream()
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    try:
        async with session.post(url + path, json=body, headers=headers or {}) as resp:
            out.status = resp.status
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    out.take(json.loads(line[len(b"data: "):]))
    finally:
        out.tokens.set()
    return out


async def long_then_shorts(url: str, long_body: dict, headers: dict | None = None) -> tuple[Stream, list[Stream]]:
    """The long stream, and once it has streamed STARTED tokens, SHORTS short ones; all finished."""
    async with aiohttp.ClientSession() as session:
        long = Stream()
        task = asyncio.create_task(stream(session, url, long_body, long, headers))
        await long.tokens.wait()
        shorts = await asyncio.gather(*(stream(session, url, body(SHORT)) for _ in range(SHORTS)))
        return await task, list(shorts)


async def metric(url: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for sample_labels, value in re.findall(rf"^{re.escape(name)}(?:{{([^}}]*)}})? (\S+)$", text, re.M):
        if all(f'{k}="{v}"' in sample_labels for k, v in labels.items()):
            total += float(value)
    return total


async def start_router(make_router, pods: list, **overrides):
    backends = [Backend(url=p.base_url, scheduling="priority") for p in pods]
    server = await make_router([], backends=backends, **overrides)
    return server, f"http://127.0.0.1:{server.port}"
