"""The router's Prometheus metrics: names and help texts defined once, here.

Each `RouterMetrics` owns its own registry, so several routers can live in one process (tests, the
demo) without colliding; `/metrics` exposes exactly that registry.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sagesched.scheduling.plugins import PluginClock


class _KnownChildren:
    """`labels()` answered from the children asked for before: prometheus_client checks, converts and
    locks on every call (about 3 µs), and a request asks up to 19 times on its way through the router
    (bench/results/gateway). `remove` and `clear` forget them with the series."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._known: dict[tuple, object] = {}

    def labels(self, *values, **by_name):
        if by_name:
            return super().labels(*values, **by_name)
        child = self._known.get(values)
        if child is None:
            child = self._known[values] = super().labels(*values)
        return child

    def remove(self, *values) -> None:
        series = tuple(map(str, values))
        self._known = {k: v for k, v in self._known.items() if tuple(map(str, k)) != series}
        super().remove(*values)

    def clear(self) -> None:
        self._known.clear()
        super().clear()


class Counter(_KnownChildren, prometheus_client.Counter):
    pass


class Gauge(_KnownChildren, prometheus_client.Gauge):
    pass


class Histogram(_KnownChildren, prometheus_client.Histogram):
    pass


QUEUE_DEPTH = "sagesched_queue_depth"
TENANT_QUEUE_DEPTH = "sagesched_tenant_queue_depth"
QUEUE_WAIT = "sagesched_queue_wait_seconds"
DISPATCHES = "sagesched_dispatches_total"
TTFT = "sagesched_ttft_seconds"
TTLT = "sagesched_ttlt_seconds"
PREDICTED_OUTPUT_TOKENS = "sagesched_predicted_output_tokens"
ACTUAL_OUTPUT_TOKENS = "sagesched_actual_output_tokens"
PREDICTOR_LATENCY = "sagesched_predictor_latency_seconds"
PREDICTOR_FALLBACKS = "sagesched_predictor_fallbacks_total"
POD_SNAPSHOT_AGE = "sagesched_pod_snapshot_age_seconds"
ERRORS = "sagesched_errors_total"
REQUESTS = "sagesched_requests_total"
DECISION_LATENCY = "sagesched_dispatch_decision_seconds"
DECISION = "sagesched_decision_seconds"
INFLIGHT = "sagesched_inflight_requests"
POD_EJECTIONS = "sagesched_pod_ejections_total"
HISTORY_DROPPED = "sagesched_history_dropped_total"
PREEMPTIONS = "sagesched_preemptions_total"
RESUMES = "sagesched_resumes_total"
RECOMPUTED_TOKENS = "sagesched_recomputed_tokens_total"
UNPREEMPTIBLE = "sagesched_unpreemptible_requests_total"
POLICY_INFO = "sagesched_policy_info"
PLUGIN_SECONDS = "sagesched_plugin_seconds"

HELP = {
    QUEUE_DEPTH: "Requests waiting in the router's admission queue.",
    TENANT_QUEUE_DEPTH: "Requests waiting in the router's admission queue, by tenant (those the fairness "
                        "configuration weighs by name; every other as other).",
    QUEUE_WAIT: "Time from arrival until the policy dispatched the request to a pod.",
    DISPATCHES: "Requests dispatched to each pod.",
    TTFT: "Time to first token as the client sees it through the router.",
    TTLT: "Time to last token (end-to-end latency) as the client sees it through the router.",
    PREDICTED_OUTPUT_TOKENS: "Mean of the predicted output-length distribution at admission.",
    ACTUAL_OUTPUT_TOKENS: "Output tokens the engine reported generating.",
    PREDICTOR_LATENCY: "Time the router waited for an output-length prediction.",
    PREDICTOR_FALLBACKS: "Predictions served by the history estimator because the predictor failed or was late.",
    POD_SNAPSHOT_AGE: "Age of the newest metrics snapshot of each pod.",
    ERRORS: ("Errors by kind (bad_request, unknown_model, not_found, queue_full, queue_timeout, no_pods, upstream, "
             "upstream_connection, upstream_timeout, pod_refused, resume_refused, client_timeout, shutdown, internal, cancelled)."),
    REQUESTS: "Requests answered, by model and HTTP status code.",
    DECISION_LATENCY: "Duration of one scheduler dispatch pass.",
    DECISION: "Time from a request entering the scheduler until its dispatch to a pod (waiting for a free pod "
              "included): the router's scheduling cost as a request sees it.",
    INFLIGHT: "Requests this router has in flight on each pod.",
    POD_EJECTIONS: "Times a pod was taken out of rotation after consecutive failed requests.",
    HISTORY_DROPPED: "Completion records not written to the history store (store unreachable or backlog full).",
    PREEMPTIONS: "Running streams stopped on a pod to resume later as continuations (reason: index = a waiting "
                 "request's refreshed index beat theirs; pod_failed = the pod died or went silent mid-stream).",
    RESUMES: "Preempted streams resumed as continuations, by pod and whether it is the pod they left (same_pod: "
             "its prefix cache may still hold their KV).",
    RECOMPUTED_TOKENS: "Prompt and generated tokens resumed continuations sent for prefill again (the engine's "
                       "prefix-cache hits say how much of it was not recomputed).",
    UNPREEMPTIBLE: "Requests never preempted because a continuation could not reproduce them (reason: unary, "
                   "client_opt_out, best_of, logprobs, tools, structured_output, token_prompt, echo, engine).",
    POLICY_INFO: "The scheduler configuration this router serves (always 1): its SageSchedPolicy (namespace/name; "
                 "empty when configured by flags), the policy, and the spec generation (0: flags).",
    PLUGIN_SECONDS: "Time the scheduler's plugins took, by kind (filter, gate, scorer, picker) and name, one "
                    "observation per pass over the pods (counts restart when a configuration is swapped in).",
}

# Latency buckets from sub-millisecond router work up to multi-minute generations.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
DECISION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)
# Enqueue-to-dispatch: fine around the 0.2 ms target, then up to queueing behind busy pods.
ENQUEUE_DISPATCH_BUCKETS = (1e-5, 2e-5, 3e-5, 5e-5, 7.5e-5, 1e-4, 1.5e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 5e-3,
                            1e-2, 0.1, 1, 10, 60)
PREDICTOR_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1)
TOKEN_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class RouterMetrics:
    """All router metrics, registered in one private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_depth = Gauge(QUEUE_DEPTH, HELP[QUEUE_DEPTH], ["model", "policy"], registry=r)
        self.tenant_queue_depth = Gauge(TENANT_QUEUE_DEPTH, HELP[TENANT_QUEUE_DEPTH], ["model", "tenant"], registry=r)
        self.queue_wait = Histogram(QUEUE_WAIT, HELP[QUEUE_WAIT], ["model", "policy"],
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.dispatches = Counter(DISPATCHES.removesuffix("_total"), HELP[DISPATCHES], ["pod", "policy"], registry=r)
        self.ttft = Histogram(TTFT, HELP[TTFT], ["model", "policy"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttlt = Histogram(TTLT, HELP[TTLT], ["model", "policy"], buckets=LATENCY_BUCKETS, registry=r)
        self.predicted_tokens = Histogram(PREDICTED_OUTPUT_TOKENS, HELP[PREDICTED_OUTPUT_TOKENS], ["model"],
                                          buckets=TOKEN_BUCKETS, registry=r)
        self.actual_tokens = Histogram(ACTUAL_OUTPUT_TOKENS, HELP[ACTUAL_OUTPUT_TOKENS], ["model"],
                                       buckets=TOKEN_BUCKETS, registry=r)
        self.predictor_latency = Histogram(PREDICTOR_LATENCY, HELP[PREDICTOR_LATENCY],
                                           buckets=PREDICTOR_BUCKETS, registry=r)
        self.predictor_fallbacks = Counter(PREDICTOR_FALLBACKS.removesuffix("_total"), HELP[PREDICTOR_FALLBACKS],
                                           ["reason"], registry=r)
        self.pod_snapshot_age = Gauge(POD_SNAPSHOT_AGE, HELP[POD_SNAPSHOT_AGE], ["pod"], registry=r)
        self.errors = Counter(ERRORS.removesuffix("_total"), HELP[ERRORS], ["kind"], registry=r)
        self.requests = Counter(REQUESTS.removesuffix("_total"), HELP[REQUESTS], ["model", "code"], registry=r)
        self.decision_latency = Histogram(DECISION_LATENCY, HELP[DECISION_LATENCY], ["policy"],
                                          buckets=DECISION_BUCKETS, registry=r)
        self.decision = Histogram(DECISION, HELP[DECISION], ["policy"], buckets=ENQUEUE_DISPATCH_BUCKETS, registry=r)
        self.inflight = Gauge(INFLIGHT, HELP[INFLIGHT], ["pod"], registry=r)
        self.pod_ejections = Counter(POD_EJECTIONS.removesuffix("_total"), HELP[POD_EJECTIONS], ["pod"], registry=r)
        self.history_dropped = Counter(HISTORY_DROPPED.removesuffix("_total"), HELP[HISTORY_DROPPED], registry=r)
        self.preemptions = Counter(PREEMPTIONS.removesuffix("_total"), HELP[PREEMPTIONS], ["pod", "reason"], registry=r)
        self.resumes = Counter(RESUMES.removesuffix("_total"), HELP[RESUMES], ["pod", "same_pod"], registry=r)
        self.recomputed_tokens = Counter(RECOMPUTED_TOKENS.removesuffix("_total"), HELP[RECOMPUTED_TOKENS],
                                         registry=r)
        self.unpreemptible = Counter(UNPREEMPTIBLE.removesuffix("_total"), HELP[UNPREEMPTIBLE], ["reason"],
                                     registry=r)
        self.policy_info = Gauge(POLICY_INFO, HELP[POLICY_INFO], ["policy_name", "policy", "generation"], registry=r)

    def serving_policy(self, policy_name: str, policy: str, generation: int) -> None:
        """One series: the configuration served now replaces the previous one."""
        self.policy_info.clear()
        self.policy_info.labels(policy_name, policy, str(generation)).set(1)

    def pod_added(self, pod: str) -> None:
        """Per-pod counters start at 0 when the pod is known, not at its first event: a rate over a
        series that appears at its first increment misses that increment."""
        for reason in ("index", "pod_failed"):
            self.preemptions.labels(pod, reason)
        for same in ("true", "false"):
            self.resumes.labels(pod, same)

    def watch_plugins(self, clock: Callable[[], PluginClock]) -> None:
        """Export the plugin times of the scheduler `clock` returns, read when scraped: the dispatch
        path only adds to the scheduler's totals."""
        self.registry.register(_PluginTimes(clock))

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _PluginTimes:
    """A collector over a `PluginClock`, as a summary (count and sum of seconds)."""

    def __init__(self, clock: Callable[[], PluginClock]) -> None:
        self.clock = clock

    def describe(self) -> list[SummaryMetricFamily]:
        return [SummaryMetricFamily(PLUGIN_SECONDS, HELP[PLUGIN_SECONDS], labels=("kind", "name"))]

    def collect(self) -> Iterator[SummaryMetricFamily]:
        family = SummaryMetricFamily(PLUGIN_SECONDS, HELP[PLUGIN_SECONDS], labels=("kind", "name"))
        for (kind, name), (passes, seconds) in sorted(self.clock().totals.items()):
            family.add_metric((kind, name), passes, seconds)
        yield family
