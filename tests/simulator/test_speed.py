"""The simulator's speed benchmark runs, and the shortcuts it measures keep their contracts."""
from __future__ import annotations

import argparse

import pytest

from sagesched.distribution import LengthDistribution
from sagesched.scheduling.policies import POLICIES, make_policy
from sagesched.scheduling.types import SchedRequest
from sagesched.simulator import speed


def test_simspeed_prints_a_rate_for_every_policy(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    speed.register(parser.add_subparsers())
    args = parser.parse_args(["simspeed", "--requests", "60", "--pods", "2", "--policies", "fcfs,llmd"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["fcfs", "llmd"]
    assert all("simulated req/s" in line for line in lines[1:])


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_no_bucket_changes_before_bucket_end(name: str) -> None:
    """The scheduler skips bucket checks below `bucket_end`; that is exact only if none changes there."""
    policy = make_policy(name)
    req = SchedRequest("r", "m", 700, 0.0, LengthDistribution.uniform())
    for generated in (1, 5, 99, 100, 101, 640, 5000):
        end = policy.bucket_end(req, generated, 100)
        assert end > generated
        assert {policy.bucket(req, g, 100) for g in range(generated, end)} == {policy.bucket(req, generated, 100)}


def test_conditioning_gives_the_constructors_bits() -> None:
    dist = LengthDistribution.from_samples([3, 40, 41, 900, 2000], smoothing=0.1)
    fast = dist.given_at_least(77)
    built = LengthDistribution(dist.probs, dist.grid, floor=77)
    assert fast.probs.tobytes() == built.probs.tobytes() and fast.floor == built.floor
    assert all(a.tobytes() == b.tobytes() for a, b in zip(fast.support(), built.support()))
