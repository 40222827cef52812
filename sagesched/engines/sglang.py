"""SGLang: its metric names and how to read them.

KV capacity is `max_total_num_tokens` (SGLang pages by token: block_size 1). SGLang serves higher
`priority` first by default, and its chat API lacks `add_generation_prompt`, so it takes no
continuations: its requests run to completion.
"""
from __future__ import annotations

from sagesched.engines.base import EngineAdapter
from sagesched.podmetrics import Sample

# gauges unless noted; counters are exposed with a `_total` suffix
RUNNING = "sglang:num_running_reqs"
WAITING = "sglang:num_queue_reqs"
TOKEN_USAGE = "sglang:token_usage"  # fraction of KV token slots in use
USED_TOKENS = "sglang:num_used_tokens"
MAX_TOTAL_TOKENS = "sglang:max_total_num_tokens"
PROMPT_TOKENS = "sglang:prompt_tokens"  # counter
GENERATION_TOKENS = "sglang:generation_tokens"  # counter
CACHE_HIT_RATE = "sglang:cache_hit_rate"  # fraction of prefill tokens found in the prefix cache
TTFT = "sglang:time_to_first_token_seconds"  # histogram
E2E = "sglang:e2e_request_latency_seconds"  # histogram


class Sglang(EngineAdapter):
    name = "sglang"
    title = "SGLang"
    prefix = "sglang:"
    label_model = "model_name"
    totals = {RUNNING: "num_running", WAITING: "num_waiting", PROMPT_TOKENS + "_total": "prompt_tokens_total",
              GENERATION_TOKENS + "_total": "generation_tokens_total"}
    kv_series = frozenset({TOKEN_USAGE, USED_TOKENS, MAX_TOTAL_TOKENS})
    lower_priority_first = False
    takes_continuations = False

    def kv_capacity(self, samples: list[Sample]) -> tuple[int | None, int | None]:
        capacity = _sum(samples, MAX_TOTAL_TOKENS)
        return 1, int(capacity) if capacity > 0 else None

    def kv_usage(self, samples: list[Sample]) -> float:
        usage = [v for n, _, v in samples if n == TOKEN_USAGE]
        if usage:
            return min(1.0, max(usage))
        capacity = _sum(samples, MAX_TOTAL_TOKENS)  # no usage gauge: from the token counts
        return min(1.0, _sum(samples, USED_TOKENS) / capacity) if capacity > 0 else 0.0


def _sum(samples: list[Sample], series: str) -> float:
    return sum(v for n, _, v in samples if n == series)


ADAPTER = Sglang()
