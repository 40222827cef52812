"""Shared by the emulator tests: a fast pod, the official client on it, and a /metrics scrape."""
from __future__ import annotations

import aiohttp
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from sagesched.emulator import EmulatedPod, PodConfig

MODEL = "llama-3-8b"
FAST = PodConfig(time_scale=0.001, output_median=12, output_sigma=0.5)


@pytest.fixture
async def pod():
    async with EmulatedPod(FAST) as pod:
        yield pod


def client(pod: EmulatedPod) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=pod.base_url + "/v1", api_key="unused", max_retries=0)


async def scrape(pod: EmulatedPod) -> dict[str, list]:
    async with aiohttp.ClientSession() as session, session.get(pod.base_url + "/metrics") as resp:
        text = await resp.text()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}
