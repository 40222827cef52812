"""`fcfs`: central queue in arrival order (the queue's tie-break), smart pod picking."""
from __future__ import annotations

from sagesched.scheduling.policies.base import Policy, register_policy


@register_policy
class Fcfs(Policy):
    name = "fcfs"
