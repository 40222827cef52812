"""An engine's /metrics text as samples, and the typed, engine-neutral `PodMetrics` they parse into.

Shared by the operator (which scrapes every selected pod) and the router (which may scrape static
backends itself); which series to read and what they mean is each engine's adapter's business
(`sagesched.engines`). The scanner is a small line scanner rather than a full Prometheus exposition
parser: a scrape of 100 pods every 200 ms must stay cheap, and only a dozen series matter, so label
sets are parsed only for lines whose metric name is wanted.
"""
from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, fields

from sagesched.state.snapshot import EngineLoad, PodSnapshot

Sample = tuple[str, dict[str, str], float]  # (exposed name, labels, value)


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


def iter_samples(text: str, wanted: Collection[str]) -> Iterator[Sample]:
    """Yield the samples of the `wanted` series in exposition text; skips the rest."""
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace >= 0 and (space < 0 or brace < space):
            name = line[:brace]
            if name not in wanted:
                continue
            close = line.rfind("}")
            if close < 0:
                raise MetricsParseError(f"unterminated label set: {line!r}")
            labels = _parse_labels(line[brace + 1:close])
            rest = line[close + 1:].split()
        else:
            name = line[:space] if space >= 0 else line
            if name not in wanted:
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


def int_label(labels: dict[str, str], key: str) -> int | None:
    """A numeric label as an int; None when absent, empty, "None" or not a number."""
    raw = labels.get(key)
    if raw is None or raw in ("", "None"):
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None
