"""`sagesched operator`: run the SageSchedPolicy operator (kopf)."""
from __future__ import annotations

import argparse
import os

DESCRIPTION = """\
Watch SageSchedPolicy objects, scrape the /metrics of the pods they select (vLLM and SGLang names)
and publish pod snapshots for every router replica.

Credentials: inside a pod the operator uses its service account (mounted token and CA); elsewhere
it uses your kubeconfig ($KUBECONFIG or ~/.kube/config, current context). --api-server overrides
both with a plain URL (for `kubectl proxy` or tests).

Scope: --namespace NS (repeatable) watches those namespaces only and needs namespaced RBAC;
--all-namespaces watches cluster-wide and needs a ClusterRole.

Replicas: by default replicas elect one active operator through kopf peering (a KopfPeering object
per namespace, or ClusterKopfPeering with --all-namespaces, named by --peering; install
manifests/crds/kopf-peering.yaml). The replica with the highest --priority acts; the others pause.
--standalone skips peering: use it only when exactly one replica runs.

Without Kubernetes: --policy-file FILE reconciles the one SageSchedPolicy in FILE (a YAML manifest
whose spec lists spec.staticEndpoints), publishing to --redis-url like the in-cluster mode and
reading FILE again whenever it changes; no namespace, peering or API server is involved.

Store: --redis-url publishes snapshots to Redis, where routers read them. Without it snapshots go to
an in-process store that no other process can read: useful only for tests and single-process demos.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("operator", help="run the Kubernetes operator (SageSchedPolicy, pod scraping)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], dest="namespaces",
                       help="namespace to watch (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    p.add_argument("--policy-file", default=None, metavar="FILE",
                   help="reconcile the SageSchedPolicy in this YAML file, without Kubernetes")
    p.add_argument("--redis-url", default=os.environ.get("SAGESCHED_REDIS_URL"),
                   help="Redis for pod snapshots (env SAGESCHED_REDIS_URL); none: in-process store")
    p.add_argument("--redis-prefix", default="sagesched", help="key prefix in Redis (default: %(default)s)")
    p.add_argument("--standalone", action="store_true", help="no peering/leader election (single replica)")
    p.add_argument("--peering", default="sagesched", dest="peering_name",
                   help="kopf peering object name (default: %(default)s)")
    p.add_argument("--priority", type=int, default=0, help="peering priority; highest acts (default: 0)")
    p.add_argument("--status-interval", type=float, default=5.0, dest="status_interval_seconds",
                   help="seconds between periodic status writes per policy (default: %(default)s)")
    p.add_argument("--api-server", default=None, help="explicit API server URL (kubectl proxy, tests)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve the operator's own /metrics here")
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level instead of INFO")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from sagesched.operator.handlers import run_operator
    from sagesched.operator.settings import OperatorSettings

    if not args.namespaces and not args.all_namespaces and not args.policy_file:
        raise SystemExit("sagesched operator: give --namespace NS (repeatable), --all-namespaces or --policy-file")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = OperatorSettings(
        namespaces=args.namespaces, all_namespaces=args.all_namespaces, redis_url=args.redis_url,
        redis_prefix=args.redis_prefix, standalone=args.standalone, peering_name=args.peering_name,
        priority=args.priority, status_interval_seconds=args.status_interval_seconds,
        api_server=args.api_server, metrics_port=args.metrics_port, verbose=args.verbose)
    if args.policy_file:
        from sagesched.operator.policy_file import run_policy_file

        asyncio.run(run_policy_file(args.policy_file, settings))
    else:
        asyncio.run(run_operator(settings))
    return 0
