"""Prometheus metrics of the predictor: names and help texts defined once, here."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "sagesched_predictor_"
LATENCY_BUCKETS = (5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class PredictorMetrics:
    """Implements core.PredictorObserver. A registry per instance keeps tests independent."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.latency = Histogram(PREFIX + "predict_latency_seconds",
                                 "Time to predict one batch inside the service.", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(PREFIX + "batch_size", "Requests per prediction batch.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.predictions = Counter(PREFIX + "predictions_total", "Requests predicted.", registry=r)
        self.reports = Counter(PREFIX + "reports_total", "Completions learned from.", registry=r)
        self.interval_checks = Counter(PREFIX + "interval_checks_total",
                                       "Reported completions whose prediction was remembered.", registry=r)
        self.interval_hits = Counter(PREFIX + "interval_hits_total",
                                     "Completions whose length fell inside the predicted central interval.",
                                     ["level"], registry=r)
        self.coverage = Gauge(PREFIX + "interval_coverage_ratio",
                              "Share of completions inside the predicted central interval (target = level).",
                              ["level"], registry=r)
        self.history_size = Gauge(PREFIX + "history_size", "Completions held in history, all models.", registry=r)
        self.model_updates = Counter(PREFIX + "model_updates_total", "Online network updates installed.", registry=r)
        self._checks = 0
        self._hits = {"0.5": 0, "0.9": 0}

    def on_predict(self, batch_size: int, seconds: float) -> None:
        self.latency.observe(seconds)
        self.batch_size.observe(batch_size)
        self.predictions.inc(batch_size)

    def on_report(self, accepted: int, coverage: list[tuple[bool, bool]], history_size: int) -> None:
        self.reports.inc(accepted)
        self.history_size.set(history_size)
        if not coverage:
            return
        self._checks += len(coverage)
        self.interval_checks.inc(len(coverage))
        for level, k in (("0.5", 0), ("0.9", 1)):
            hits = sum(c[k] for c in coverage)
            self._hits[level] += hits
            self.interval_hits.labels(level).inc(hits)
            self.coverage.labels(level).set(self._hits[level] / self._checks)

    def on_model_update(self) -> None:
        self.model_updates.inc()
