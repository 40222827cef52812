"""Metric names that inference engines export on /metrics, defined once.

The pod emulator exports the vLLM names; the operator (and a router scraping static backends)
parses both vLLM's and SGLang's. Names follow the engines' own releases: vLLM v1 renamed
`gpu_cache_usage_perc` to `kv_cache_usage_perc`, so readers accept both.
"""
from __future__ import annotations

VLLM_LABEL_MODEL = "model_name"
SGLANG_LABEL_MODEL = "model_name"

# vLLM v1 (gauges unless noted)
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_KV_USAGE = "vllm:kv_cache_usage_perc"  # fraction 0..1, despite the name
VLLM_KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"  # vLLM < 0.10 / v0 engine
VLLM_CACHE_CONFIG = "vllm:cache_config_info"  # info gauge; labels block_size, num_gpu_blocks, ...
VLLM_PROMPT_TOKENS = "vllm:prompt_tokens"  # counter (exposed as *_total)
VLLM_GENERATION_TOKENS = "vllm:generation_tokens"  # counter
VLLM_PREEMPTIONS = "vllm:num_preemptions"  # counter
VLLM_PREFIX_CACHE_QUERIES = "vllm:prefix_cache_queries"  # counter, in tokens looked up
VLLM_PREFIX_CACHE_HITS = "vllm:prefix_cache_hits"  # counter, in tokens found cached
VLLM_REQUEST_SUCCESS = "vllm:request_success"  # counter, label finished_reason
VLLM_TTFT = "vllm:time_to_first_token_seconds"  # histogram
VLLM_ITL = "vllm:inter_token_latency_seconds"  # histogram
VLLM_E2E = "vllm:e2e_request_latency_seconds"  # histogram
VLLM_QUEUE_TIME = "vllm:request_queue_time_seconds"  # histogram

# SGLang
SGLANG_RUNNING = "sglang:num_running_reqs"
SGLANG_WAITING = "sglang:num_queue_reqs"
SGLANG_TOKEN_USAGE = "sglang:token_usage"  # fraction of KV token slots in use
SGLANG_USED_TOKENS = "sglang:num_used_tokens"
SGLANG_MAX_TOTAL_TOKENS = "sglang:max_total_num_tokens"
SGLANG_PROMPT_TOKENS = "sglang:prompt_tokens"  # counter
SGLANG_GENERATION_TOKENS = "sglang:generation_tokens"  # counter
SGLANG_CACHE_HIT_RATE = "sglang:cache_hit_rate"  # fraction of prefill tokens found in the prefix cache
SGLANG_TTFT = "sglang:time_to_first_token_seconds"  # histogram
SGLANG_E2E = "sglang:e2e_request_latency_seconds"  # histogram
