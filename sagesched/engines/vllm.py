"""vLLM: its metric names (defined once here; the emulator exports them too) and how to read them.

Names follow vLLM's own releases: v1 renamed `gpu_cache_usage_perc` to `kv_cache_usage_perc`, so the
parser accepts both. KV capacity is the `cache_config_info` info gauge's block_size × num_gpu_blocks.
vLLM serves lower `priority` first and takes continuations.
"""
from __future__ import annotations

from sagesched.engines.base import EngineAdapter
from sagesched.podmetrics import Sample, int_label

LABEL_MODEL = "model_name"

# vLLM v1 (gauges unless noted); counters are exposed with a `_total` suffix
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"  # fraction 0..1, despite the name
KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"  # vLLM < 0.10 / v0 engine
CACHE_CONFIG = "vllm:cache_config_info"  # info gauge; labels block_size, num_gpu_blocks, ...
PROMPT_TOKENS = "vllm:prompt_tokens"  # counter
GENERATION_TOKENS = "vllm:generation_tokens"  # counter
PREEMPTIONS = "vllm:num_preemptions"  # counter
PREFIX_CACHE_QUERIES = "vllm:prefix_cache_queries"  # counter, in tokens looked up
PREFIX_CACHE_HITS = "vllm:prefix_cache_hits"  # counter, in tokens found cached
REQUEST_SUCCESS = "vllm:request_success"  # counter, label finished_reason
TTFT = "vllm:time_to_first_token_seconds"  # histogram
ITL = "vllm:inter_token_latency_seconds"  # histogram
E2E = "vllm:e2e_request_latency_seconds"  # histogram
QUEUE_TIME = "vllm:request_queue_time_seconds"  # histogram


class Vllm(EngineAdapter):
    name = "vllm"
    title = "vLLM"
    prefix = "vllm:"
    label_model = LABEL_MODEL
    totals = {RUNNING: "num_running", WAITING: "num_waiting", PROMPT_TOKENS + "_total": "prompt_tokens_total",
              GENERATION_TOKENS + "_total": "generation_tokens_total", PREEMPTIONS + "_total": "preemptions_total"}
    kv_series = frozenset({KV_USAGE, KV_USAGE_OLD, CACHE_CONFIG})
    lower_priority_first = True
    takes_continuations = True

    def kv_capacity(self, samples: list[Sample]) -> tuple[int | None, int | None]:
        block_size = num_gpu_blocks = None
        for name, labels, _ in samples:
            if name == CACHE_CONFIG:
                block_size = int_label(labels, "block_size") or block_size
                num_gpu_blocks = int_label(labels, "num_gpu_blocks") or num_gpu_blocks
        return block_size, num_gpu_blocks

    def kv_usage(self, samples: list[Sample]) -> float:
        # a v1 engine may export both names during the rename; the new one wins
        kv = [v for n, _, v in samples if n == KV_USAGE] or [v for n, _, v in samples if n == KV_USAGE_OLD]
        return min(1.0, max(kv)) if kv else 0.0


ADAPTER = Vllm()
