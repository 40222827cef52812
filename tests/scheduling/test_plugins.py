"""Scheduling plugins: a scorer is one new module plus its registry line, used by name through the
configuration; the defaults keep each policy's composition; every plugin's time is counted."""
from __future__ import annotations

import importlib
import sys
import textwrap
from dataclasses import replace

import pytest

from sagesched.distribution import LengthDistribution as D
from sagesched.engine.profile import load_profile
from sagesched.scheduling import PodView, SchedRequest, Scheduler
from sagesched.scheduling.config import SchedulerConfig, crd_schema
from sagesched.scheduling.picker import SCORERS

PROFILE = load_profile()

TOY_SCORER = '''
from sagesched.scheduling.picker import SCORERS, Scorer


@SCORERS.register
class LastPod(Scorer):
    """Prefers pods late in the list, as far as `bias` says."""

    name = "last-pod"

    def __init__(self, bias: float = 1.0) -> None:
        self.bias = bias

    def score(self, req, pods, ctx):
        return [self.bias * i for i in range(len(pods))]
'''


@pytest.fixture
def toy_scorer(tmp_path, monkeypatch):
    """A scorer written as a user would: its own module, registered on import (and only for this test)."""
    (tmp_path / "toy_scorer.py").write_text(textwrap.dedent(TOY_SCORER))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(SCORERS, "register", lambda cls: monkeypatch.setitem(SCORERS, cls.name, cls) or cls)
    importlib.import_module("toy_scorer")
    yield "last-pod"
    sys.modules.pop("toy_scorer", None)


def _pods(n: int) -> list[PodView]:
    return [PodView(f"pod-{k}", ("m",), PROFILE) for k in range(n)]


def _on(sched: Scheduler, pods: list[PodView]) -> list[PodView]:
    """The same pods as seen by `sched` (views read their scheduler's ledger)."""
    return [replace(p, ledger=sched.ledger.pod(p.name)) for p in pods]


def _first_choice(config: SchedulerConfig, pods: list[PodView]) -> str:
    sched = config.build()
    sched.submit(SchedRequest("r", "m", 100, 0.0, D.point(50)), 0.0)
    ((_, pod),) = sched.dispatch(_on(sched, pods), 0.0)
    return pod.name


def test_a_new_scorer_is_used_by_name_with_its_parameters_through_the_configuration(toy_scorer) -> None:
    spec = {"name": "fcfs", "pick": {"scorers": [{"name": "free-kv"}, {"name": toy_scorer, "weight": 2,
                                                                        "params": {"bias": 1}}]}}
    pods = _pods(3)
    assert _first_choice(SchedulerConfig.from_spec(spec), pods) == "pod-2"
    assert _first_choice(SchedulerConfig(name="fcfs"), pods) == "pod-0"  # the policy's own: free KV, ties in turn
    with pytest.raises(ValueError, match="takes no parameters"):
        SchedulerConfig.from_spec({"name": "fcfs", "pick": {"scorers": [{"name": toy_scorer, "params": {"b": 1}}]}})


def test_unknown_plugins_are_configuration_errors_and_the_crd_offers_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="unknown scorer"):
        SchedulerConfig.from_spec({"name": "fcfs", "pick": {"scorers": [{"name": "nope"}]}})
    scorers = crd_schema()["properties"]["pick"]["properties"]["scorers"]["items"]["properties"]
    assert scorers["name"]["enum"] == sorted(SCORERS)


def test_llmds_weights_as_a_configured_pick_choose_as_llmd_does() -> None:
    configured = SchedulerConfig.from_spec({"name": "fcfs", "pick": {"scorers": [
        {"name": "queue", "weight": 2}, {"name": "kv", "weight": 2}, {"name": "prefix", "weight": 3}]}})
    choices = []
    for config in (configured, SchedulerConfig(name="llmd")):
        pods = _pods(4)
        pods[0].kv_usage, pods[1].num_waiting, pods[2].kv_usage = 0.5, 3, 0.2
        choices.append(_first_choice(config, pods))
    assert choices == ["pod-3", "pod-3"]


def test_every_plugin_pass_is_timed_by_kind_and_name() -> None:
    sched = SchedulerConfig(name="llmd").build()
    sched.submit(SchedRequest("r", "m", 100, 0.0, D.point(50)), 0.0)
    sched.dispatch(_on(sched, _pods(2)), 0.0)
    assert set(sched.plugin_times.totals) == {("filter", "eligible"), ("scorer", "queue"), ("scorer", "kv"),
                                              ("scorer", "prefix"), ("picker", "max-score")}
    gated = SchedulerConfig(name="fcfs").build()
    gated.submit(SchedRequest("r", "m", 100, 0.0, D.point(50)), 0.0)
    gated.dispatch(_on(gated, _pods(2)), 0.0)
    assert {("gate", "count"), ("gate", "prefill"), ("scorer", "free-kv")} <= set(gated.plugin_times.totals)
    assert all(passes == 1 and seconds >= 0 for passes, seconds in gated.plugin_times.totals.values())
