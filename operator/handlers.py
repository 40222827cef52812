"""The kopf handlers: one per concern.

* validate (create/update/resume): the rules the schema cannot express → InvalidSpec condition;
* scrape_pods (daemon, one per policy): select pods, scrape them, publish snapshots and the policy's
  scheduler configuration, read which generation the routers serve;
* report_status (timer): pods summary and Ready/Degraded conditions, at a bounded rate;
* forget_policy (delete): drop the policy's snapshots from the store;
* pod_index (kopf index) and track_pool (events): what pods and InferencePools exist.

Daemons are kopf's, not ours, so peering covers them: a replica paused by a higher-priority peer
stops its daemons and therefore stops scraping and publishing.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf

from sagesched.operator import metrics as m
from sagesched.operator.scraper import (PodInfo, ScrapeResult, Target, make_session, scrape_all,
                                        snapshots_from, static_targets, target_for)
from sagesched.operator.settings import OperatorSettings
from sagesched.operator.spec import InvalidSpec, PodSource, PolicySpec, parse_spec, pool_source
from sagesched.state.pod_store import PodSnapshotStore, open_store, policy_key

GROUP, VERSION, PLURAL = "sagesched.io", "v1alpha1", "sageschedpolicies"
POLICY = (GROUP, VERSION, PLURAL)
POOLS = "inferencepools.inference.networking.k8s.io"
STATUS_TICK_SECONDS = 1.0  # how often the status timer looks; settings bound how often it writes
INVALID_SPEC_RECHECK_SECONDS = 1.0
CONDITIONS = ("Ready", "Degraded", "InvalidSpec", "Applied")  # the status's condition types, in display order

log = logging.getLogger(__name__)


@dataclass
class PolicyState:
    """In-memory working state of one policy's daemon; durable facts go to the status."""

    known: set[str] = field(default_factory=set)  # pods announced by events (seeded from status)
    targets: dict[str, Target] = field(default_factory=dict)
    results: dict[str, ScrapeResult] = field(default_factory=dict)
    last_ok: dict[str, float] = field(default_factory=dict)
    selected: int = 0  # pods matching the selector, ready or not
    scraped: bool = False  # a first round has finished: only then is there anything to report
    invalid: bool = False
    store_error: str | None = None
    published_generation: int | None = None  # of the scheduler configuration in the store
    applied: dict[str, int] = field(default_factory=dict)  # router id -> generation it serves
    last_status_write: float = float("-inf")
    last_status: dict[str, Any] | None = None


@dataclass
class OperatorContext:
    """Shared by every handler through kopf's memo (kopf shallow-copies memo per object)."""

    settings: OperatorSettings
    store: PodSnapshotStore | None = None
    owns_store: bool = False
    session: Any = None
    pools: dict[tuple[str, str], PodSource] = field(default_factory=dict)
    policies: dict[tuple[str, str], PolicyState] = field(default_factory=dict)


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(existing: list[dict] | None, updates: list[dict], generation: int | None) -> list[dict]:
    """Conditions by type, each stamped with the spec generation it judged; lastTransitionTime
    moves only when a condition's status changes."""
    by_type = {c["type"]: dict(c) for c in existing or [] if "type" in c}
    for upd in updates:
        old = by_type.get(upd["type"])
        new = dict(upd, observedGeneration=generation)
        new["lastTransitionTime"] = (old["lastTransitionTime"] if old and old.get("status") == new["status"]
                                     and old.get("lastTransitionTime") else _now_iso())
        by_type[upd["type"]] = new
    return sorted(by_type.values(), key=lambda c: CONDITIONS.index(c["type"]) if c["type"] in CONDITIONS else 9)


def _cond(type_: str, ok: bool, reason: str, message: str = "") -> dict:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message}


# ---------------------------------------------------------------- operator lifecycle

@kopf.on.login()
def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """An explicit API URL (tests, port-forward) wins; else in-cluster service account, then kubeconfig."""
    ctx: OperatorContext = memo.ctx
    if ctx.settings.api_server:
        return kopf.ConnectionInfo(server=ctx.settings.api_server.rstrip("/"), insecure=True)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext = memo.ctx
    settings.posting.level = logging.INFO
    settings.peering.mandatory = not ctx.settings.standalone
    settings.peering.priority = ctx.settings.priority
    # Namespaced (exact names, namespaced RBAC): no namespace or CRD scanning. With it, kopf lists
    # namespaces, is forbidden, and retries through its error backoffs (54 s) before it starts;
    # the cost is that CRDs installed after the start (InferencePool) are seen on restart only.
    settings.scanning.disabled = not ctx.settings.all_namespaces
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    if ctx.store is None:
        ctx.store = open_store(ctx.settings.redis_url, prefix=ctx.settings.redis_prefix) \
            if ctx.settings.redis_url else open_store(None)
        ctx.owns_store = True
    ctx.session = make_session()
    serve_metrics(ctx.settings)


def serve_metrics(settings: OperatorSettings) -> None:
    """The operator's own /metrics on `metrics_port` (a thread of prometheus_client), if one is set."""
    if settings.metrics_port:
        from prometheus_client import start_http_server
        start_http_server(settings.metrics_port, registry=m.REGISTRY)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext = memo.ctx
    if ctx.session is not None:
        await ctx.session.close()
    if ctx.owns_store and ctx.store is not None:
        await ctx.store.close()


# ---------------------------------------------------------------- the index of pods and pools

@kopf.index("v1", "pods")
def pod_index(namespace: str, body: kopf.Body, **_: Any) -> dict[str, PodInfo]:
    """Pods by namespace. An index, not an event handler: kopf lists all pods before it starts
    daemons, so a restarted operator never mistakes a not-yet-seen pod for a removed one."""
    return {namespace or "": PodInfo.from_body(body)}


@kopf.on.event(POOLS)
def track_pool(event: dict, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext = memo.ctx
    key = (body.metadata.namespace or "", body.metadata.name or "")
    if event.get("type") == "DELETED":
        ctx.pools.pop(key, None)
    else:
        ctx.pools[key] = pool_source(body)


def select_pods(ctx: OperatorContext, pods: Any, namespace: str, spec: PolicySpec) -> tuple[list[PodInfo], tuple[int, ...]]:
    """The selected pods, sorted, and the InferencePool's targetPorts (empty: the spec's ports)."""
    source = PodSource(spec.pod_selector) if spec.pod_selector else ctx.pools.get((namespace, spec.inference_pool or ""))
    if source is None:
        return [], ()
    selected = sorted((p for p in pods.get(namespace, ()) if source.selector.matches(p.labels)), key=lambda p: p.name)
    return selected, source.ports


def targets_for(pods: list[PodInfo], spec: PolicySpec, pool_ports: tuple[int, ...]) -> dict[str, Target]:
    """One endpoint per ready pod and engine port, named by the pod (and the port, when a pod has several)."""
    ports = spec.endpoint_ports(pool_ports)
    targets = [target_for(p, serving_port=serving, metrics_port=metrics, metrics_path=spec.metrics_path,
                          name=p.name if len(ports) == 1 else f"{p.name}:{serving}")
               for p in pods if p.scrapeable for serving, metrics in ports]
    return {t.name: t for t in targets}


# ---------------------------------------------------------------- the policy

@kopf.on.create(*POLICY)
@kopf.on.update(*POLICY, field="spec")
@kopf.on.resume(*POLICY)
def validate(spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, body: kopf.Body, patch: kopf.Patch,
             reason: str, **_: Any) -> None:
    """Rules beyond the schema. An invalid spec never heals by retrying: PermanentError, no retry
    loop; the InvalidSpec condition is written by `report_status`."""
    generation = meta.get("generation")
    try:
        parse_spec(spec)
    except InvalidSpec as exc:
        # kopf drops a failing handler's patch: the status timer writes the InvalidSpec condition.
        kopf.warn(body, reason="InvalidSpec", message=exc.message)
        raise kopf.PermanentError(f"{exc.reason}: {exc.message}")
    patch.status["conditions"] = merge_conditions(status.get("conditions"), [
        _cond("InvalidSpec", False, "Valid")], generation)
    patch.status["observedGeneration"] = generation
    if reason != "resume":  # resuming after a restart is not news
        kopf.info(body, reason="Accepted", message=f"policy {spec.get('policy', {}).get('name')} accepted")


@kopf.daemon(*POLICY, cancellation_timeout=5.0, backoff=1.0)
async def scrape_pods(name: str, namespace: str, body: kopf.Body, status: kopf.Status, memo: kopf.Memo,
                      stopped: kopf.DaemonStopped, logger: kopf.Logger, pod_index: kopf.Index,
                      **_: Any) -> None:
    """Every scrape interval: select pods, announce changes, scrape, publish snapshots."""
    ctx: OperatorContext = memo.ctx
    state = ctx.policies.setdefault((namespace, name), PolicyState())
    # Pods announced before a restart are in the status: seeding from it avoids repeating events.
    state.known = {p.get("name") for p in status.get("pods") or [] if p.get("name")}
    pkey = policy_key(namespace, name)
    loop = asyncio.get_running_loop()
    while not stopped:
        started = loop.time()
        try:
            spec = parse_spec(body.get("spec") or {})  # `body` is live: spec edits show up here
        except InvalidSpec:
            state.invalid = True
            await retarget(ctx, state, _events(body), pkey, {}, announce=False)
            await stopped.wait(INVALID_SPEC_RECHECK_SECONDS)
            continue
        state.invalid = False
        if spec.static_endpoints:
            targets = static_targets(spec, namespace)
            state.selected = len(targets)
        else:
            pods, pool_ports = select_pods(ctx, pod_index, namespace, spec)
            state.selected = len(pods)
            targets = targets_for(pods, spec, pool_ports)
        await retarget(ctx, state, _events(body), pkey, targets, announce=True)
        if ctx.session.closed:  # the operator is shutting down
            break
        await reconcile_round(ctx, state, spec, (namespace, name), body.meta.get("generation") or 1, logger)
        await stopped.wait(max(0.0, spec.scrape_interval - (loop.time() - started)))
    if stopped.reason and stopped.reason & kopf.DaemonStoppingReason.RESOURCE_DELETED:
        await _forget(ctx, namespace, name)


def _events(body: kopf.Body) -> Callable[[str, str], None]:
    """Announcements as Kubernetes events on the policy."""
    return lambda reason, message: kopf.info(body, reason=reason, message=message)


async def reconcile_round(ctx: OperatorContext, state: PolicyState, spec: PolicySpec, key: tuple[str, str],
                          generation: int, logger: Any) -> None:
    """One round over the current targets, in-cluster or from a policy file: publish the scheduler
    configuration when its generation is new, scrape, publish snapshots, read what routers serve."""
    namespace, name = key
    pkey = policy_key(namespace, name)
    try:
        if state.published_generation != generation:
            await ctx.store.publish_policy(pkey, generation, spec.policy.to_spec())
            state.published_generation = generation
        state.applied = await ctx.store.applied(pkey)
    except Exception as exc:  # redis down: _publish below reports it as Degraded
        logger.debug(f"publishing the policy failed: {exc!r}")
    results = await scrape_all(ctx.session, state.targets.values(), engine=spec.engine, timeout=spec.scrape_timeout)
    state.results = {r.target.name: r for r in results}
    state.scraped = True
    for r in results:
        if r.metrics is not None:
            state.last_ok[r.target.name] = r.scraped_at
    snapshots = snapshots_from(results, policy=name, models=spec.models, scheduling=spec.scheduling)
    await _publish(ctx, state, snapshots, spec, logger)
    m.PODS_TRACKED.labels(namespace, name).set(len(state.targets))


async def retarget(ctx: OperatorContext, state: PolicyState, event: Callable[[str, str], None], pkey: str,
                    targets: dict[str, Target], *, announce: bool) -> None:
    added = [n for n in targets if n not in state.known]
    removed = [n for n in state.known if n not in targets]
    for n in added:
        event("PodAdded", f"scraping pod {n} at {targets[n].metrics_url}")
    for n in removed:
        if announce:
            event("PodRemoved", f"pod {n} no longer selected or not ready")
        state.results.pop(n, None)
        state.last_ok.pop(n, None)
    if removed:
        try:
            for n in removed:
                await ctx.store.delete(pkey, n)
        except Exception as exc:  # the store may be down; TTLs remove the snapshots anyway
            state.store_error = f"{type(exc).__name__}: {exc}"
    state.known = set(targets)
    state.targets = targets


async def _publish(ctx: OperatorContext, state: PolicyState, snapshots: list, spec: PolicySpec,
                   logger: kopf.Logger) -> None:
    if not snapshots:
        return
    try:
        await ctx.store.publish_many(snapshots, spec.snapshot_ttl)
    except Exception as exc:  # redis down: keep scraping, report Degraded, retry next interval
        if state.store_error is None:
            logger.warning(f"publishing snapshots failed: {exc!r}")
        state.store_error = f"{type(exc).__name__}: {exc}"
        return
    state.store_error = None
    m.SNAPSHOTS_PUBLISHED.inc(len(snapshots))


async def _forget(ctx: OperatorContext, namespace: str, name: str) -> None:
    ctx.policies.pop((namespace, name), None)
    for gauge, labels in [(m.PODS_TRACKED, (namespace, name)),
                          *((m.POLICY_CONDITION, (namespace, name, c)) for c in CONDITIONS)]:
        try:
            gauge.remove(*labels)
        except KeyError:
            pass
    if ctx.store is not None:
        await ctx.store.delete(policy_key(namespace, name))


@kopf.on.delete(*POLICY)
async def forget_policy(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    try:
        await _forget(memo.ctx, namespace, name)
    except Exception as exc:
        raise kopf.TemporaryError(f"cannot delete snapshots yet: {exc!r}", delay=5)


def summarize(state: PolicyState, now: float) -> tuple[dict, list[dict]]:
    """The status body (minus conditions) and the Ready/Degraded conditions for one policy."""
    pods = []
    for name, target in sorted(state.targets.items()):
        r = state.results.get(name)
        ok = r is not None and r.metrics is not None
        pod: dict[str, Any] = {"name": name, "address": target.address, "ready": ok}
        if ok:
            pod.update(kvCacheUsage=round(r.metrics.kv_cache_usage, 4), running=r.metrics.num_running,
                       waiting=r.metrics.num_waiting)
        elif r is not None:
            pod["error"] = r.error
        if name in state.last_ok:
            pod["lastScrapeAgeSeconds"] = round(max(0.0, now - state.last_ok[name]), 1)
        pods.append(pod)
    ready = sum(1 for p in pods if p["ready"])
    failing = [p["name"] for p in pods if not p["ready"]]
    if not state.targets:
        why = "NoPods" if state.selected == 0 else "NoReadyPods"
        msg = ("the selector matches no pod" if state.selected == 0
               else f"{state.selected} pods match, none ready with an IP")
        conds = [_cond("Ready", False, why, msg), _cond("Degraded", True, why, msg)]
    elif state.store_error:
        conds = [_cond("Ready", ready > 0, "StoreUnavailable", state.store_error),
                 _cond("Degraded", True, "StoreUnavailable", state.store_error)]
    elif failing:
        msg = f"scrapes failing for {', '.join(failing[:5])}" + ("..." if len(failing) > 5 else "")
        conds = [_cond("Ready", ready > 0, "PodsReady" if ready else "ScrapesFailing", f"{ready} pods ready"),
                 _cond("Degraded", True, "ScrapesFailing", msg)]
    else:
        conds = [_cond("Ready", True, "PodsReady", f"{ready} pods ready"),
                 _cond("Degraded", False, "AllPodsScraped")]
    return {"readyPods": ready, "pods": pods}, conds


def applied_condition(applied: dict[str, int], generation: int | None) -> dict:
    """Applied once every live router of the policy serves this spec generation."""
    if not applied:
        return _cond("Applied", False, "NoRouters", "no router scoped to this policy has reported")
    behind = sorted(r for r, g in applied.items() if g != generation)
    if behind:
        return _cond("Applied", False, "Pending", f"{len(behind)} of {len(applied)} routers serve another generation")
    return _cond("Applied", True, "Applied", f"{len(applied)} routers serve generation {generation}")


def _essence(summary: dict, conds: list[dict]) -> tuple:
    """What must reach the status at once; ages and gauges may wait for the next periodic write."""
    return (summary["readyPods"], summary.get("observedGeneration"), tuple(p["name"] for p in summary["pods"]),
            tuple((c["type"], c["status"], c["reason"]) for c in conds))


@kopf.timer(*POLICY, interval=STATUS_TICK_SECONDS)
def report_status(name: str, namespace: str, body: kopf.Body, status: kopf.Status, patch: kopf.Patch,
                  memo: kopf.Memo, **_: Any) -> None:
    ctx: OperatorContext = memo.ctx
    state = ctx.policies.get((namespace, name))
    if state is None:
        return
    now = time.time()
    generation = body.meta.get("generation")
    try:
        parse_spec(body.get("spec") or {})
    except InvalidSpec as exc:
        summary = {"readyPods": 0, "pods": []}
        conds = [_cond("Ready", False, "InvalidSpec", exc.message), _cond("Degraded", False, "InvalidSpec"),
                 _cond("InvalidSpec", True, exc.reason, exc.message)]
    else:
        if state.invalid or not state.scraped:
            return
        summary, conds = summarize(state, now)
        conds.append(applied_condition(state.applied, generation))
    summary["observedGeneration"] = generation
    changed = state.last_status is None or _essence(*state.last_status) != _essence(summary, conds)
    if not changed and now - state.last_status_write < ctx.settings.status_interval_seconds:
        return
    was_degraded = state.last_status is not None and _is_true(state.last_status[1], "Degraded")
    if _is_true(conds, "Degraded") and not was_degraded:
        reason = next(c for c in conds if c["type"] == "Degraded")
        kopf.warn(body, reason="Degraded", message=f"{reason['reason']}: {reason['message']}")
    elif was_degraded and not _is_true(conds, "Degraded"):
        kopf.info(body, reason="Recovered", message="all selected pods are scraped")
    patch.status.update(summary)
    patch.status["conditions"] = merge_conditions(status.get("conditions"), conds, generation)
    record_conditions(namespace, name, conds)
    state.last_status = (summary, conds)
    state.last_status_write = now
    m.STATUS_UPDATES.inc()


def record_conditions(namespace: str, name: str, conds: list[dict]) -> None:
    """The policy's conditions as gauges (1 while true): what the Degraded alert reads."""
    for c in conds:
        m.POLICY_CONDITION.labels(namespace, name, c["type"]).set(c["status"] == "True")


def _is_true(conds: list[dict], type_: str) -> bool:
    return any(c["type"] == type_ and c["status"] == "True" for c in conds)


# ---------------------------------------------------------------- running it

async def run_operator(settings: OperatorSettings, *, store: PodSnapshotStore | None = None,
                       stop_flag: Any = None, ready_flag: Any = None) -> None:
    """Run the operator in the current event loop until `stop_flag` is set (or forever).

    The flags are what kopf accepts: asyncio/threading events or futures. Note that on exit kopf
    cancels every task started in this loop after it began, so give it a loop of its own."""
    ctx = OperatorContext(settings=settings, store=store)
    await kopf.operator(
        registry=kopf.get_default_registry(),
        clusterwide=settings.all_namespaces,
        namespaces=settings.namespaces if not settings.all_namespaces else (),
        standalone=settings.standalone,
        peering_name=settings.peering_name,
        priority=settings.priority,
        memo=kopf.Memo(ctx=ctx),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
