"""The operator's own Prometheus metrics, defined once (prefix `sagesched_operator_`)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

SCRAPE_LATENCY = Histogram(
    "sagesched_operator_scrape_duration_seconds",
    "Time to fetch and parse one pod's /metrics.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
SCRAPE_ERRORS = Counter(
    "sagesched_operator_scrape_errors_total",
    "Failed pod scrapes, by reason (timeout, connect, http_status, parse).",
    ["reason"], registry=REGISTRY,
)
for _reason in ("timeout", "connect", "http_status", "parse"):  # from 0, so rate() sees the first error
    SCRAPE_ERRORS.labels(_reason)
PODS_TRACKED = Gauge(
    "sagesched_operator_pods_tracked",
    "Pods selected by a SageSchedPolicy and being scraped.",
    ["namespace", "policy"], registry=REGISTRY,
)
SNAPSHOTS_PUBLISHED = Counter(
    "sagesched_operator_snapshots_published_total",
    "Pod snapshots written to the snapshot store.",
    registry=REGISTRY,
)
STATUS_UPDATES = Counter(
    "sagesched_operator_status_updates_total",
    "SageSchedPolicy status patches sent to the API server.",
    registry=REGISTRY,
)
POLICY_CONDITION = Gauge(
    "sagesched_operator_policy_condition",
    "1 while a SageSchedPolicy's status condition (Ready, Degraded, InvalidSpec) is True, else 0.",
    ["namespace", "policy", "condition"], registry=REGISTRY,
)
