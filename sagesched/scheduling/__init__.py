"""The scheduling core shared by the live router and the simulator.

Entry points: `Scheduler` (submit / dispatch / on_progress / on_finish / cancel), `SchedRequest`,
`PodView`, `Admission`, the policy registry (`POLICIES`, `make_policy`), `engine_priority`, and the
history-only `HistoryEstimator`.
"""
from sagesched.scheduling.admission import NO_ADMISSION, Admission
from sagesched.scheduling.cost import CostModel, CostPolynomial, expected_cost
from sagesched.scheduling.gittins import gittins_rank
from sagesched.scheduling.history import HistoryEstimator
from sagesched.scheduling.policies import POLICIES, Policy, make_policy
from sagesched.scheduling.priority import engine_priority
from sagesched.scheduling.scheduler import Scheduler
from sagesched.scheduling.types import PodView, SchedRequest

__all__ = [
    "NO_ADMISSION", "Admission", "CostModel", "CostPolynomial", "HistoryEstimator", "POLICIES",
    "PodView", "Policy", "SchedRequest", "Scheduler", "engine_priority", "expected_cost",
    "gittins_rank", "make_policy",
]
