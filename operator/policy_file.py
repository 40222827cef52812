"""`sagesched operator --policy-file FILE`: one SageSchedPolicy reconciled from a YAML file, with no
Kubernetes.

The same rounds as the in-cluster daemon (`handlers.reconcile_round`): the file's
`spec.staticEndpoints` are scraped and their snapshots, with the policy's scheduler configuration,
go to the store, where routers scoped to `<namespace>/<name>` read them. The file is read again
whenever it changes; a changed spec is a new generation (one more than the generation in the store,
so it keeps rising across operator restarts). What the status would say is logged instead.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from sagesched.operator.handlers import (OperatorContext, PolicyState, applied_condition, reconcile_round,
                                         record_conditions, retarget, serve_metrics, summarize)
from sagesched.operator.scraper import make_session, static_targets
from sagesched.operator.settings import OperatorSettings
from sagesched.operator.spec import InvalidSpec, parse_spec
from sagesched.state.pod_store import open_store, policy_key

log = logging.getLogger(__name__)

RELOAD_CHECK_S = 0.5  # how often an invalid or unchanged file is looked at again


class PolicyFile:
    """The file's SageSchedPolicy, its spec generation, and when it was last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp: int | None = None
        self.doc: dict[str, Any] = {}

    @property
    def key(self) -> tuple[str, str]:
        meta = self.doc.get("metadata") or {}
        return meta.get("namespace") or "default", meta.get("name") or self.path.stem

    def changed(self) -> bool:
        """Re-read the file if it was written since; True when it was."""
        stamp = self.path.stat().st_mtime_ns
        if stamp == self.stamp:
            return False
        self.stamp, self.doc = stamp, yaml.safe_load(self.path.read_text()) or {}
        return True


async def _generation(ctx: OperatorContext, key: tuple[str, str], spec: Any) -> int:
    """The published generation if it holds this configuration, else the next one."""
    published = await ctx.store.get_policy(policy_key(*key))
    if published is None:
        return 1
    return published[0] if published[1] == spec.policy.to_spec() else published[0] + 1


async def run_policy_file(path: str | Path, settings: OperatorSettings, stop: asyncio.Event | None = None) -> None:
    """Reconcile the file's policy until `stop` is set (or forever)."""
    stop = stop or asyncio.Event()
    ctx = OperatorContext(settings=settings, store=open_store(settings.redis_url, prefix=settings.redis_prefix),
                          session=make_session())
    serve_metrics(settings)
    source, state = PolicyFile(Path(path)), PolicyState()
    spec, generation, applied = None, 0, None
    try:
        while not stop.is_set():
            if source.changed():
                try:
                    spec = parse_spec(source.doc.get("spec") or {})
                except InvalidSpec as exc:
                    log.error("%s: InvalidSpec %s: %s", path, exc.reason, exc.message)
                    spec = None
                else:
                    generation = await _generation(ctx, source.key, spec)
                    log.info("%s: policy %s/%s generation %d: %s", path, *source.key, generation, spec.policy_name)
            if spec is None:
                await _wait(stop, RELOAD_CHECK_S)
                continue
            targets = static_targets(spec, source.key[0])
            await retarget(ctx, state, lambda reason, msg: log.info("%s: %s", reason, msg),
                            policy_key(*source.key), targets, announce=True)
            await reconcile_round(ctx, state, spec, source.key, generation, log)
            applied = _log_applied(applied, applied_condition(state.applied, generation))
            if state.scraped:
                record_conditions(*source.key, [*summarize(state, time.time())[1], applied])
            await _wait(stop, spec.scrape_interval)
    finally:
        await ctx.session.close()
        await ctx.store.close()


def _log_applied(before: dict | None, condition: dict) -> dict:
    """The Applied condition, logged when it changes (the file has no status to write it to)."""
    if before is None or (before["status"], before["reason"]) != (condition["status"], condition["reason"]):
        log.info("Applied=%s %s: %s", condition["status"], condition["reason"], condition["message"])
    return condition


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
