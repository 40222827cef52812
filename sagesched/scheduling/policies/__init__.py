"""Scheduling policies, one small file each, registered by name (see base.POLICIES)."""
from sagesched.scheduling.policies import (  # noqa: F401  (importing registers them)
    fastserve,
    fcfs,
    least_requests,
    llmd,
    ltr,
    oracle,
    round_robin,
    sagesched,
    sjf_mean,
    ssjf,
    trail,
)
from sagesched.scheduling.policies.base import POLICIES, PickContext, Policy, make_policy, register_policy

__all__ = ["POLICIES", "PickContext", "Policy", "make_policy", "register_policy"]
