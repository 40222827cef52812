"""The engine registry: every engine SageSched can route to, by name, and parsing /metrics by it.

Whatever lists engines (router settings, the operator's spec check, the CRD's engine enum, the
emulator's metrics flavours, the CLIs) reads `ENGINES`; a test holds the CRD and CLIs to it. Adding
an engine: a module beside vllm.py with its `EngineAdapter`, and its entry below.
"""
from __future__ import annotations

from sagesched.engines import sglang, vllm
from sagesched.engines.base import EngineAdapter
from sagesched.podmetrics import MetricsParseError, PodMetrics, iter_samples

ENGINES: dict[str, EngineAdapter] = {a.name: a for a in (vllm.ADAPTER, sglang.ADAPTER)}
AUTO = "auto"  # operator and scrape setting: decide each pod's engine by the metric names it exports
_WANTED = frozenset().union(*(a.wanted for a in ENGINES.values()))

__all__ = ["AUTO", "ENGINES", "EngineAdapter", "adapter", "parse_metrics", "scrape"]


def adapter(name: str) -> EngineAdapter:
    """The registered engine `name`; ValueError names the known ones."""
    try:
        return ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; expected one of {tuple(ENGINES)}") from None


def parse_metrics(text: str, engine: str = AUTO) -> PodMetrics:
    """Parse /metrics text as `engine`'s, or with "auto" as that of the first registered engine
    whose names are present. Raises MetricsParseError when no known engine series are present."""
    samples = list(iter_samples(text, _WANTED))
    if engine != AUTO:
        return adapter(engine).parse(samples)
    for candidate in ENGINES.values():
        if candidate.owns(samples):
            return candidate.parse(samples)
    raise MetricsParseError(f"no series of any known engine ({', '.join(ENGINES)}) in the metrics text")


async def scrape(session, url: str, *, engine: str = AUTO, timeout: float = 1.0) -> PodMetrics:
    """GET `url` with an aiohttp ClientSession and parse it. Raises aiohttp/asyncio errors,
    MetricsParseError, or aiohttp.ClientResponseError for non-2xx answers."""
    import aiohttp

    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        resp.raise_for_status()
        text = await resp.text()
    return parse_metrics(text, engine)
