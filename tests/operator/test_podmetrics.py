"""Parsing engine /metrics text: vLLM (new and old names) and SGLang."""
from __future__ import annotations

import pytest

from sagesched.engines import parse_metrics, sglang, vllm
from sagesched.podmetrics import MetricsParseError
from tests.operator.conftest import vllm_text

SGLANG_TEXT = f"""\
# HELP {sglang.RUNNING} The number of running requests.
# TYPE {sglang.RUNNING} gauge
{sglang.RUNNING}{{model_name="qwen"}} 4.0
{sglang.WAITING}{{model_name="qwen"}} 2.0
{sglang.TOKEN_USAGE}{{model_name="qwen"}} 0.42
{sglang.USED_TOKENS}{{model_name="qwen"}} 42000.0
{sglang.MAX_TOTAL_TOKENS}{{model_name="qwen"}} 100000.0
{sglang.PROMPT_TOKENS}_total{{model_name="qwen"}} 500.0
{sglang.GENERATION_TOKENS}_total{{model_name="qwen"}} 900.0
"""


def test_vllm_v1_names():
    m = parse_metrics(vllm_text(3, 2, 0.75, model="llama"), "vllm")
    assert (m.engine, m.models, m.num_running, m.num_waiting, m.kv_cache_usage) == ("vllm", ["llama"], 3, 2, 0.75)
    assert (m.block_size, m.num_gpu_blocks, m.kv_capacity_tokens) == (16, 2048, 16 * 2048)
    assert (m.prompt_tokens_total, m.generation_tokens_total, m.preemptions_total) == (1200, 3400, 2)


def test_vllm_old_kv_name_is_read_and_new_name_wins_when_both_exist():
    assert parse_metrics(vllm_text(0, 0, 0.3, old_names=True)).kv_cache_usage == 0.3
    both = vllm_text(0, 0, 0.3, old_names=True) + f'{vllm.KV_USAGE}{{model_name="m"}} 0.6\n'
    assert parse_metrics(both).kv_cache_usage == 0.6


def test_vllm_data_parallel_ranks_are_summed_and_kv_takes_the_fullest():
    text = "\n".join(f'{name}{{engine="{e}",model_name="m"}} {v}' for e in (0, 1) for name, v in
                     ((vllm.RUNNING, 2 + e), (vllm.WAITING, 1), (vllm.KV_USAGE, 0.1 + 0.5 * e)))
    m = parse_metrics(text)
    assert (m.num_running, m.num_waiting, m.kv_cache_usage) == (5, 2, 0.6)


def test_sglang_names_and_auto_detection():
    m = parse_metrics(SGLANG_TEXT)
    assert (m.engine, m.models, m.num_running, m.num_waiting) == ("sglang", ["qwen"], 4, 2)
    assert m.kv_cache_usage == pytest.approx(0.42)
    assert m.kv_capacity_tokens == 100000 and m.block_size == 1
    assert (m.prompt_tokens_total, m.generation_tokens_total) == (500, 900)


def test_label_values_with_escapes_and_spaces():
    text = f'{vllm.RUNNING}{{model_name="a \\"q\\" b,c",engine="0"}} 1\n'
    assert parse_metrics(text).models == ['a "q" b,c']


def test_text_without_engine_series_is_an_error():
    with pytest.raises(MetricsParseError):
        parse_metrics("# nothing\nprocess_cpu_seconds_total 1.0\n")
    with pytest.raises(MetricsParseError):
        parse_metrics(SGLANG_TEXT, "vllm")


def test_snapshot_carries_the_scrape():
    snap = parse_metrics(vllm_text(1, 0, 0.5)).to_snapshot(name="p", address="10.0.0.1:8000", policy="x",
                                                           namespace="ns", scraped_at=12.0)
    assert (snap.name, snap.kv_cache_usage, snap.num_running, snap.scraped_at) == ("p", 0.5, 1, 12.0)


async def test_scraping_the_emulated_vllm_pod_over_http():
    import aiohttp

    from sagesched.emulator.pod import running_pods
    from sagesched.engines import scrape

    async with running_pods(1) as (pod,), aiohttp.ClientSession() as session:
        m = await scrape(session, f"{pod.base_url}/metrics")
    assert m.engine == "vllm" and m.num_running == 0 and m.num_waiting == 0
    assert 0.0 <= m.kv_cache_usage <= 1.0 and m.models
