"""The calibrated engine profiles are what their committed raw data says they are.

Each measured profile names its raw CSV in `fit["raw"]`; re-fitting that file on CPU must give the
profile's coefficients back, and the held-out error must stay within the figure the profile
documents (and within the 10% target). If someone edits a coefficient by hand, re-runs the GPU
script without refitting, or changes the fit so that it generalises worse, these fail.

Profiles for the paper's memory-bound cards keep measured step times but size the KV cache for
another card (CARD_GIB): their blocks must follow from the run's measured memory with that total.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sagesched.bench import fit_profile
from sagesched.engine.profile import PROFILE_DIR, available_profiles, load_profile

ROOT = Path(__file__).resolve().parents[2]
CALIBRATION = ROOT / "bench" / "results" / "calibration"
MEASURED = ["h100-llama3-8b", "h100-llama32-1b", "h200-qwen3-32b-96gb", "llama31-8b-48gb"]
# KV sized for a card other than the one measured: its total memory, GiB (the paper's testbeds)
CARD_GIB = {"h200-qwen3-32b-96gb": 96, "llama31-8b-48gb": 48}
TARGET_PCT = 10.0


def _run_facts(profile_name: str) -> dict:
    """The memory facts of the run behind a profile: run.json beside its raw CSV."""
    raw = ROOT / load_profile(profile_name).fit["raw"]
    run = json.loads((raw.parent / "run.json").read_text())
    return run["models"][raw.stem.removeprefix("steps-")]


@pytest.fixture(scope="module", params=MEASURED)
def measured(request: pytest.FixtureRequest) -> tuple[str, dict]:
    profile = load_profile(request.param)
    return request.param, fit_profile.fit_file(ROOT / profile.fit["raw"])


def test_every_shipped_profile_is_named_after_its_file() -> None:
    for name in available_profiles():
        assert load_profile(name).name == name
    assert "h100-llama3-8b-analytical" in available_profiles()


def test_refit_from_raw_data_reproduces_the_profile_coefficients(measured: tuple[str, dict]) -> None:
    name, refit = measured
    profile = load_profile(name)
    for coef, value in refit["coefficients"].items():
        assert math.isclose(getattr(profile, coef), value, rel_tol=1e-6, abs_tol=1e-18), coef
        assert math.isclose(profile.fit["coefficients"][coef], value, rel_tol=1e-6, abs_tol=1e-18), coef


def test_held_out_error_is_within_the_documented_figure_and_target(measured: tuple[str, dict]) -> None:
    name, refit = measured
    documented = load_profile(name).fit
    assert refit["holdout_points"] == documented["holdout_points"] > 0
    assert refit["holdout_median_abs_pct_err"] <= documented["holdout_median_abs_pct_err"] + 0.01
    assert documented["holdout_median_abs_pct_err"] <= TARGET_PCT


def test_default_profile_fits_each_kind_of_step_within_target() -> None:
    """The median hides kinds with few points; for the default profile every kind must fit too."""
    refit = fit_profile.fit_file(ROOT / load_profile("h100-llama3-8b").fit["raw"])
    for kind, err in refit["all_median_abs_pct_err_by_kind"].items():
        assert err <= TARGET_PCT, kind


@pytest.mark.parametrize("name", MEASURED)
def test_kv_blocks_follow_from_the_measured_memory(name: str) -> None:
    facts = _run_facts(name)
    card = CARD_GIB.get(name)
    total = facts["total_bytes"] if card is None else card * 2**30
    budget = (
        facts["gpu_memory_utilization"] * total
        - facts["weight_bytes"]
        - facts["activation_peak_bytes"]
        - facts["non_torch_bytes"]
    )
    blocks = int(budget // (facts["block_size"] * facts["kv_bytes_per_token"]))
    profile = load_profile(name)
    assert profile.num_gpu_blocks == blocks == fit_profile.kv_blocks(facts, None if card is None else total)
    if card is None:
        assert facts["num_gpu_blocks"] == blocks
    assert profile.block_size == facts["block_size"]
    assert profile.kv_capacity_tokens >= profile.max_model_len


def test_memory_bound_profiles_are_what_they_say() -> None:
    """The 48 GB Llama profile reuses the H100's step times exactly; only its KV differs. The
    Qwen3-32B one was measured on its own shape. Both are far smaller in KV than the H100 default."""
    default, llama = load_profile("h100-llama3-8b"), load_profile("llama31-8b-48gb")
    for coef in fit_profile.COEFS:
        assert getattr(llama, coef) == getattr(default, coef), coef
    assert llama.fit == default.fit
    assert llama.num_gpu_blocks < default.num_gpu_blocks
    qwen = load_profile("h200-qwen3-32b-96gb")
    assert _run_facts("h200-qwen3-32b-96gb")["model"]["layers"] == 64
    assert qwen.kv_capacity_tokens < llama.kv_capacity_tokens < default.kv_capacity_tokens
    # a 32B decode step streams ~4x the weights of an 8B one
    assert 2 * default.decode_step_seconds(1, 1024) < qwen.decode_step_seconds(1, 1024)


def test_profile_json_is_what_the_fit_script_writes() -> None:
    """Keys and order match StepTimeProfile.to_json, so a refit does not churn the file."""
    for name in MEASURED:
        text = (PROFILE_DIR / f"{name}.json").read_text()
        assert load_profile(name).to_json() == text
