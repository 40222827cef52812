"""Scraping a set of pods concurrently and turning the answers into snapshots.

Kept free of kopf so that the benchmark (`sagesched bench scrape`) drives exactly this code.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from sagesched.operator import metrics as m
from sagesched.engines import parse_metrics
from sagesched.podmetrics import MetricsParseError, PodMetrics
from sagesched.state.snapshot import PodSnapshot


@dataclass(frozen=True)
class PodInfo:
    """What the operator knows of a pod from the Kubernetes API."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    ip: str | None
    ready: bool
    terminating: bool

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "PodInfo":
        meta = body.get("metadata") or {}
        status = body.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        return cls(
            namespace=meta.get("namespace") or "", name=meta.get("name") or "",
            labels=dict(meta.get("labels") or {}), ip=status.get("podIP") or None,
            ready=status.get("phase") == "Running" and conditions.get("Ready") == "True",
            terminating=bool(meta.get("deletionTimestamp")),
        )

    @property
    def scrapeable(self) -> bool:
        return self.ip is not None and self.ready and not self.terminating


@dataclass(frozen=True)
class Target:
    name: str
    namespace: str
    address: str  # host:port routers send requests to
    metrics_url: str


@dataclass
class ScrapeResult:
    target: Target
    metrics: PodMetrics | None
    error: str | None  # reason label: timeout | connect | http_status | parse
    scraped_at: float
    latency: float


def target_for(pod: PodInfo, *, serving_port: int, metrics_port: int, metrics_path: str,
               name: str | None = None) -> Target:
    assert pod.ip is not None
    host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip  # IPv6 pod IPs
    return Target(name or pod.name, pod.namespace, f"{host}:{serving_port}",
                  f"http://{host}:{metrics_port}{metrics_path}")


async def scrape_one(session: aiohttp.ClientSession, target: Target, *, engine: str,
                     timeout: float) -> ScrapeResult:
    start = time.perf_counter()
    error: str | None = None
    metrics: PodMetrics | None = None
    try:
        async with session.get(target.metrics_url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                error = "http_status"
            else:
                metrics = parse_metrics(await resp.text(), engine)
    except asyncio.TimeoutError:
        error = "timeout"
    except aiohttp.ClientError:
        error = "connect"
    except (MetricsParseError, UnicodeDecodeError):
        error = "parse"
    latency = time.perf_counter() - start
    m.SCRAPE_LATENCY.observe(latency)
    if error is not None:
        m.SCRAPE_ERRORS.labels(error).inc()
    return ScrapeResult(target, metrics, error, time.time(), latency)


async def scrape_all(session: aiohttp.ClientSession, targets: Iterable[Target], *, engine: str,
                     timeout: float) -> list[ScrapeResult]:
    return list(await asyncio.gather(*(scrape_one(session, t, engine=engine, timeout=timeout)
                                       for t in targets)))


def snapshots_from(results: Iterable[ScrapeResult], *, policy: str, models: Iterable[str] = (),
                   scheduling: str = "fcfs") -> list[PodSnapshot]:
    """Snapshots for the successful scrapes; failed pods get none, so theirs expire by TTL."""
    models = list(models)
    return [replace(r.metrics.to_snapshot(name=r.target.name, address=r.target.address,
                                          namespace=r.target.namespace, policy=policy,
                                          scraped_at=r.scraped_at, models=models), scheduling=scheduling)
            for r in results if r.metrics is not None]


def static_targets(spec: Any, namespace: str) -> dict[str, Target]:
    """The spec's `staticEndpoints` (engines outside Kubernetes), each serving its own /metrics
    unless the spec names a metricsPort."""
    targets = [Target(e.name, namespace, e.address,
                      f"http://{e.host}:{spec.metrics_port or e.address.rsplit(':', 1)[1]}{spec.metrics_path}")
               for e in spec.static_endpoints]
    return {t.name: t for t in targets}


def make_session(limit: int = 256) -> aiohttp.ClientSession:
    """One pooled session per operator: keep-alive connections make 5 Hz scraping cheap."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300),
                                 headers={"Accept": "text/plain"})
