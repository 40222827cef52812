"""The operator's one typed settings object; CLI flags and env vars map onto it.

Defaults are documented here once. Per-policy knobs (scrape interval, TTLs, ports) come from the
SageSchedPolicy spec instead (see `sagesched.operator.spec`).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OperatorSettings:
    namespaces: list[str] = field(default_factory=list)  # watched namespaces; empty + all_namespaces
    all_namespaces: bool = False  # cluster-wide watching (needs cluster-scoped RBAC)
    redis_url: str | None = None  # None: in-process store (single process / tests only)
    redis_prefix: str = "sagesched"
    standalone: bool = False  # True: no peering, this replica always acts
    peering_name: str = "sagesched"  # kopf (Cluster)KopfPeering object used for leader election
    priority: int = 0  # peering priority; the highest live replica acts, the others pause
    status_interval_seconds: float = 5.0  # at most one status write per policy per this period
    api_server: str | None = None  # explicit API URL (tests, port-forwards); else in-cluster/kubeconfig
    metrics_port: int | None = None  # serve the operator's own /metrics here if set
    verbose: bool = False
