"""Parse an inference engine's /metrics text into a typed `PodMetrics`.

Shared by the operator (which scrapes every selected pod) and the router (which may scrape static
backends itself). Reads vLLM's names, old and new, and SGLang's; the names live in
`sagesched.engine_metrics`. The parser is a small line scanner rather than a full Prometheus
exposition parser: a scrape of 100 pods every 200 ms must stay cheap, and only a dozen series
matter, so label sets are parsed only for lines whose metric name is wanted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields

from sagesched import engine_metrics as em
from sagesched.state.snapshot import EngineLoad, PodSnapshot

ENGINES = ("vllm", "sglang")

# Counters are exposed with a `_total` suffix; the engines' metric objects are named without it.
_VLLM_WANTED = {
    em.VLLM_RUNNING, em.VLLM_WAITING, em.VLLM_KV_USAGE, em.VLLM_KV_USAGE_OLD, em.VLLM_CACHE_CONFIG,
    em.VLLM_PROMPT_TOKENS + "_total", em.VLLM_GENERATION_TOKENS + "_total",
    em.VLLM_PREEMPTIONS + "_total",
}
_SGLANG_WANTED = {
    em.SGLANG_RUNNING, em.SGLANG_WAITING, em.SGLANG_TOKEN_USAGE, em.SGLANG_USED_TOKENS,
    em.SGLANG_MAX_TOTAL_TOKENS, em.SGLANG_PROMPT_TOKENS + "_total",
    em.SGLANG_GENERATION_TOKENS + "_total",
}
_WANTED = _VLLM_WANTED | _SGLANG_WANTED


class MetricsParseError(ValueError):
    """The text is not Prometheus exposition text from a known engine."""


@dataclass(kw_only=True)
class PodMetrics(EngineLoad):
    """One scrape of one pod. Gauges are summed over the engine's label sets (data-parallel ranks,
    models), except KV usage, which takes the fullest rank."""

    def to_snapshot(self, *, name: str, address: str, namespace: str = "", policy: str = "",
                    ready: bool = True, scraped_at: float | None = None,
                    models: list[str] | None = None) -> PodSnapshot:
        """The snapshot routers read; `models` overrides the scraped model names (e.g. from a CR)."""
        load = {f.name: getattr(self, f.name) for f in fields(EngineLoad)}
        load["models"] = list(models if models else self.models)
        return PodSnapshot(
            **load, name=name, address=address, ready=ready, namespace=namespace, policy=policy,
            scraped_at=time.time() if scraped_at is None else scraped_at,
        )


def _parse_labels(raw: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    i, n = 0, len(raw)
    while i < n:
        eq = raw.find("=", i)
        if eq < 0:
            break
        key = raw[i:eq].strip().lstrip(",").strip()
        j = eq + 1
        if j >= n or raw[j] != '"':
            raise MetricsParseError(f"bad label set: {raw!r}")
        j += 1
        out = []
        while j < n and raw[j] != '"':
            if raw[j] == "\\" and j + 1 < n:
                nxt = raw[j + 1]
                out.append("\n" if nxt == "n" else nxt)
                j += 2
            else:
                out.append(raw[j])
                j += 1
        labels[key] = "".join(out)
        i = j + 1
    return labels


def iter_samples(text: str):
    """Yield (name, labels, value) for the wanted series in exposition text; skips the rest."""
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace >= 0 and (space < 0 or brace < space):
            name = line[:brace]
            if name not in _WANTED:
                continue
            close = line.rfind("}")
            if close < 0:
                raise MetricsParseError(f"unterminated label set: {line!r}")
            labels = _parse_labels(line[brace + 1:close])
            rest = line[close + 1:].split()
        else:
            name = line[:space] if space >= 0 else line
            if name not in _WANTED:
                continue
            labels = {}
            rest = line[space + 1:].split() if space >= 0 else []
        if not rest:
            raise MetricsParseError(f"sample without a value: {line!r}")
        try:
            value = float(rest[0])
        except ValueError as exc:
            raise MetricsParseError(f"bad sample value: {line!r}") from exc
        yield name, labels, value


def _int_label(labels: dict[str, str], key: str) -> int | None:
    raw = labels.get(key)
    if raw is None or raw in ("", "None"):
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


def parse_metrics(text: str, engine: str = "auto") -> PodMetrics:
    """Parse /metrics text. `engine` is "vllm", "sglang" or "auto" (decided by the names present).

    Raises MetricsParseError when no known engine series are present at all.
    """
    samples = list(iter_samples(text))
    if engine == "auto":
        if any(name.startswith("vllm:") for name, _, _ in samples):
            engine = "vllm"
        elif any(name.startswith("sglang:") for name, _, _ in samples):
            engine = "sglang"
        else:
            raise MetricsParseError("no vLLM or SGLang series in the metrics text")
    if engine == "vllm":
        return _from_vllm(samples)
    if engine == "sglang":
        return _from_sglang(samples)
    raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES} or 'auto'")


def _models(samples, label: str) -> list[str]:
    seen: dict[str, None] = {}
    for _, labels, _ in samples:
        model = labels.get(label)
        if model:
            seen[model] = None
    return list(seen)


def _from_vllm(samples) -> PodMetrics:
    m = PodMetrics(engine="vllm", models=_models(samples, em.VLLM_LABEL_MODEL))
    kv_new: list[float] = []
    kv_old: list[float] = []
    known = False
    for name, labels, value in samples:
        if not name.startswith("vllm:"):
            continue
        known = True
        if name == em.VLLM_RUNNING:
            m.num_running += int(value)
        elif name == em.VLLM_WAITING:
            m.num_waiting += int(value)
        elif name == em.VLLM_KV_USAGE:
            kv_new.append(value)
        elif name == em.VLLM_KV_USAGE_OLD:
            kv_old.append(value)
        elif name == em.VLLM_CACHE_CONFIG:
            m.block_size = _int_label(labels, "block_size") or m.block_size
            m.num_gpu_blocks = _int_label(labels, "num_gpu_blocks") or m.num_gpu_blocks
        elif name == em.VLLM_PROMPT_TOKENS + "_total":
            m.prompt_tokens_total += value
        elif name == em.VLLM_GENERATION_TOKENS + "_total":
            m.generation_tokens_total += value
        elif name == em.VLLM_PREEMPTIONS + "_total":
            m.preemptions_total += value
    if not known:
        raise MetricsParseError("no vLLM series in the metrics text")
    kv = kv_new or kv_old  # a v1 engine may export both during the rename; the new name wins
    m.kv_cache_usage = min(1.0, max(kv)) if kv else 0.0
    if m.block_size and m.num_gpu_blocks:
        m.kv_capacity_tokens = m.block_size * m.num_gpu_blocks
    return m


def _from_sglang(samples) -> PodMetrics:
    m = PodMetrics(engine="sglang", models=_models(samples, em.SGLANG_LABEL_MODEL), block_size=1)
    usage: list[float] = []
    used = capacity = 0.0
    known = False
    for name, _labels, value in samples:
        if not name.startswith("sglang:"):
            continue
        known = True
        if name == em.SGLANG_RUNNING:
            m.num_running += int(value)
        elif name == em.SGLANG_WAITING:
            m.num_waiting += int(value)
        elif name == em.SGLANG_TOKEN_USAGE:
            usage.append(value)
        elif name == em.SGLANG_USED_TOKENS:
            used += value
        elif name == em.SGLANG_MAX_TOTAL_TOKENS:
            capacity += value
        elif name == em.SGLANG_PROMPT_TOKENS + "_total":
            m.prompt_tokens_total += value
        elif name == em.SGLANG_GENERATION_TOKENS + "_total":
            m.generation_tokens_total += value
    if not known:
        raise MetricsParseError("no SGLang series in the metrics text")
    if capacity > 0:
        m.kv_capacity_tokens = m.num_gpu_blocks = int(capacity)
    if usage:
        m.kv_cache_usage = min(1.0, max(usage))
    elif capacity > 0:
        m.kv_cache_usage = min(1.0, used / capacity)
    return m


async def scrape(session, url: str, *, engine: str = "auto", timeout: float = 1.0) -> PodMetrics:
    """GET `url` with an aiohttp ClientSession and parse it. Raises aiohttp/asyncio errors,
    MetricsParseError, or aiohttp.ClientResponseError for non-2xx answers."""
    import aiohttp

    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        resp.raise_for_status()
        text = await resp.text()
    return parse_metrics(text, engine)
