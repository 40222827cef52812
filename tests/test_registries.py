"""Every engine and policy name the CRD and the CLIs offer is a registered one, and every registered
one is offered: a new engine or policy needs its module and registry entry, nothing copied by hand."""
from __future__ import annotations

import argparse

from sagesched.cli import build_parser
from sagesched.emulator.metrics import FLAVORS
from sagesched.engines import AUTO, ENGINES
from sagesched.operator import spec
from sagesched.router.continuation import CONTINUING_ENGINES
from sagesched.scheduling.policies import POLICIES
from sagesched.scheduling.priority import LOWER_FIRST
from tests.operator.schema import crd_schema

SPEC = crd_schema()["properties"]["spec"]["properties"]


def _option(command: str, flag: str) -> argparse.Action:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return next(a for a in sub._actions if flag in a.option_strings)


def test_the_crds_engine_enum_is_the_registry_plus_auto():
    assert SPEC["engine"]["enum"] == [*ENGINES, AUTO]
    assert spec.ENGINES == (*ENGINES, AUTO)


def test_the_crds_policy_enum_is_the_policy_registry():
    assert SPEC["policy"]["properties"]["name"]["enum"] == sorted(POLICIES)


def test_the_router_cli_offers_exactly_the_registered_policies_and_engines():
    policy = _option("router", "--policy")
    assert list(policy.choices) == sorted(POLICIES)
    assert all(name in policy.help for name in POLICIES)
    assert list(_option("router", "--backend-engine").choices) == list(ENGINES)


def test_the_emulator_speaks_only_registered_engines_and_offers_what_it_speaks():
    assert set(FLAVORS) <= set(ENGINES) and {"vllm", "sglang"} <= set(FLAVORS)
    assert list(_option("emulate-pod", "--metrics-flavor").choices) == list(FLAVORS)


def test_engine_conventions_come_from_the_adapters():
    assert LOWER_FIRST == {"vllm": True, "sglang": False}
    assert CONTINUING_ENGINES == {"vllm"}

