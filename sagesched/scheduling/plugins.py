"""Scheduling as registered plugins of a few kinds, after the Gateway API Inference Extension's
scheduling framework and llm-d's scheduler: queue order (the policies, policies/), admission gates
(admission.py), filters, weighted scorers (scorers/) and a picker (picker.py).

Each plugin is a class registered by name in its kind's `Registry`. Its typed parameters are its
constructor's keyword arguments with their defaults: the configuration checks names and converts
values against them, so a new plugin is one file and one registry line, with no schema of its own.
`PluginClock` adds up each plugin's time over whole passes (never per pod); the router exports it as
sagesched_plugin_seconds.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, type[T]], Generic[T]):
    """Plugin classes of one kind by their `name`; a dict, so `name in POLICIES` and friends read naturally."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, cls: type[T]) -> type[T]:
        self[cls.name] = cls  # type: ignore[attr-defined]
        return cls

    def params(self, name: str) -> dict[str, Any]:
        """The keyword parameters the plugin's constructor takes, with their defaults."""
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        params = list(inspect.signature(self._known(name).__init__).parameters.values())[1:]
        return {p.name: p.default for p in params if p.kind in kinds}

    def check(self, name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` converted to the types of the defaults (4.0 levels → 4); a ValueError names what is wrong."""
        taken = self.params(name)
        unknown = sorted(set(params) - set(taken))
        if unknown:
            raise ValueError(f"{self.kind} {name!r} takes no parameters {unknown}; it takes {sorted(taken) or 'none'}")
        return {k: v if taken[k] is None else type(taken[k])(v) for k, v in params.items()}

    def make(self, name: str, params: Mapping[str, Any] | None = None) -> T:
        return self._known(name)(**self.check(name, params or {}))

    def _known(self, name: str) -> type[T]:
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}")
        return self[name]


class PluginClock:
    """Per (kind, name): passes timed and their seconds. One per Scheduler; read when scraped."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], list[float]] = {}

    def add(self, kind: str, name: str, seconds: float) -> None:
        total = self.totals.get((kind, name))
        if total is None:
            total = self.totals[kind, name] = [0, 0.0]
        total[0] += 1
        total[1] += seconds


class Plugin:
    """What every plugin has: the name it is registered and configured by."""

    name: ClassVar[str] = ""
