"""/metrics for one emulated pod, in vLLM v1's names (or SGLang's), one registry per pod.

The names come from the engines' adapters (`sagesched.engines`), so the emulator exports exactly
what the router and operator parse. Its flavours are the registered engines it can speak: each
needs an exporter below, which no registry entry can supply.

Gauges and counters are read from the engine at scrape time (the engine keeps the totals, so
nothing is counted twice); latency histograms are observed as requests progress, in engine seconds.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sagesched.engines import sglang, vllm
from sagesched.engine import Engine, EngineRequest, FinishReason

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
               0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class _EngineState(Collector):
    """Scrape-time view of the engine's gauges and counters."""

    def __init__(self, engine: Engine, model: str, flavor: str) -> None:
        self.engine = engine
        self.model = model
        self.flavor = flavor

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=["model_name"])
        family.add_metric([self.model], value)
        return family

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["model_name"])
        family.add_metric([self.model], value)
        return family

    def collect(self) -> Iterator[Metric]:
        yield from FLAVORS[self.flavor].state(self)

    def _vllm(self) -> Iterator[Metric]:
        e, c = self.engine, self.engine.counters
        yield self._gauge(vllm.RUNNING, "Number of requests in model execution batches.", e.num_running)
        yield self._gauge(vllm.WAITING, "Number of requests waiting to be processed.", e.num_waiting)
        yield self._gauge(vllm.KV_USAGE, "KV-cache usage. 1 means 100 percent usage.", e.kv_usage)
        info = GaugeMetricFamily(vllm.CACHE_CONFIG, "Information of the LLMEngine CacheConfig",
                                 labels=["block_size", "num_gpu_blocks"])
        info.add_metric([str(e.profile.block_size), str(e.profile.num_gpu_blocks)], 1.0)
        yield info
        yield self._counter(vllm.PROMPT_TOKENS, "Number of prefill tokens processed.", c.prompt_tokens)
        yield self._counter(vllm.GENERATION_TOKENS, "Number of generation tokens processed.",
                            c.generation_tokens)
        yield self._counter(vllm.PREEMPTIONS, "Cumulative number of preemption from the engine.",
                            c.preemptions)
        yield self._counter(vllm.PREFIX_CACHE_QUERIES,
                            "Prefix cache queries, in terms of number of queried tokens.", e.kv.queried_tokens)
        yield self._counter(vllm.PREFIX_CACHE_HITS, "Prefix cache hits, in terms of number of cached tokens.",
                            e.kv.hit_tokens)
        success = CounterMetricFamily(vllm.REQUEST_SUCCESS, "Count of successfully processed requests.",
                                      labels=["model_name", "finished_reason"])
        for reason in (FinishReason.STOP, FinishReason.LENGTH, FinishReason.ABORT):
            success.add_metric([self.model, reason], c.finished[reason])
        yield success

    def _sglang(self) -> Iterator[Metric]:
        e, c = self.engine, self.engine.counters
        used = e.kv.used_blocks * e.kv.block_size
        yield self._gauge(sglang.RUNNING, "The number of running requests.", e.num_running)
        yield self._gauge(sglang.WAITING, "The number of requests in the waiting queue.", e.num_waiting)
        yield self._gauge(sglang.TOKEN_USAGE, "The token usage.", e.kv_usage)
        yield self._gauge(sglang.USED_TOKENS, "The number of used tokens.", used)
        yield self._gauge(sglang.MAX_TOTAL_TOKENS, "Maximum total number of tokens in the KV cache pool.",
                          e.profile.kv_capacity_tokens)
        yield self._counter(sglang.PROMPT_TOKENS, "Number of prefill tokens processed.", c.prompt_tokens)
        yield self._counter(sglang.GENERATION_TOKENS, "Number of generation tokens processed.",
                            c.generation_tokens)
        # SGLang's rate covers its recent prefill batches; the emulator's, everything since start
        queried = e.kv.queried_tokens
        yield self._gauge(sglang.CACHE_HIT_RATE, "The prefix cache hit rate.",
                          e.kv.hit_tokens / queried if queried else 0.0)


@dataclass(frozen=True)
class _Flavor:
    """One engine's exposition: its gauges and counters, and its latency histograms' names."""

    state: Callable[[_EngineState], Iterator[Metric]]
    ttft: str
    e2e: str
    itl: str | None = None  # SGLang exports no inter-token or queue-time histogram
    queue_time: str | None = None


FLAVORS = {
    vllm.ADAPTER.name: _Flavor(_EngineState._vllm, vllm.TTFT, vllm.E2E, vllm.ITL, vllm.QUEUE_TIME),
    sglang.ADAPTER.name: _Flavor(_EngineState._sglang, sglang.TTFT, sglang.E2E),
}


class PodMetrics:
    """The registry of one pod plus the hooks the pod calls as requests progress."""

    def __init__(self, engine: Engine, model: str, flavor: str = "vllm") -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown metrics flavor {flavor!r}; expected one of {tuple(FLAVORS)}")
        self.registry = CollectorRegistry()
        self.registry.register(_EngineState(engine, model, flavor))
        names = FLAVORS[flavor]
        self._ttft = self._histogram(names.ttft, "Histogram of time to first token in seconds.", LATENCY_BUCKETS, model)
        self._e2e = self._histogram(names.e2e, "Histogram of end to end request latency in seconds.",
                                    LATENCY_BUCKETS, model)
        self._itl = self._queue = None
        if names.itl:
            self._itl = self._histogram(names.itl, "Histogram of inter-token latency in seconds.",
                                        ITL_BUCKETS, model)
        if names.queue_time:
            self._queue = self._histogram(names.queue_time, "Histogram of time spent in WAITING phase for request.",
                                          LATENCY_BUCKETS, model)

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...], model: str):
        return Histogram(name, doc, ["model_name"], buckets=buckets, registry=self.registry).labels(model)

    def on_first_token(self, req: EngineRequest) -> None:
        self._ttft.observe(req.ttft)
        if self._queue is not None:
            self._queue.observe(req.queue_time)

    def on_token_gap(self, seconds: float) -> None:
        if self._itl is not None:
            self._itl.observe(seconds)

    def on_finish(self, req: EngineRequest) -> None:
        self._e2e.observe(req.e2e)
