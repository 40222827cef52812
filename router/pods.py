"""The pods a router can send to, and what it knows about each.

Two sources feed one `PodSet`: static backends (`--backend URL`, the embedded default), whose
`/metrics` the router scrapes itself, and a `PodSnapshotStore` (Redis) that the operator fills. The
set turns its entries into the scheduling core's `PodView`s; a pod whose newest snapshot is older
than `snapshot_max_age_s`, or that the store no longer lists, is stale and takes nothing new. A pod the
store stopped listing is kept (stale) until its snapshot is `unlisted_pod_max_age_s` old: an operator
restart outlasts the snapshots' TTL, and dropping every pod then would turn queued requests into 404s.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from sagesched.engine.profile import StepTimeProfile, load_profile
from sagesched.engines import parse_metrics
from sagesched.router.metrics import RouterMetrics
from sagesched.router.settings import Backend, RouterSettings
from sagesched.scheduling.ledger import Ledger, LedgerMark, PodLedger
from sagesched.scheduling.types import PodView, SchedRequest
from sagesched.state.pod_store import PodSnapshotStore, raise_if_cancelled
from sagesched.state.snapshot import PodSnapshot

log = logging.getLogger(__name__)

# The longest an ejected pod waits for its readmission probe, however often it was ejected.
MAX_EJECT_COOLDOWN_S = 60.0


@dataclass(eq=False)
class PodEntry:
    name: str
    base_url: str
    models: tuple[str, ...]
    engine: str = "vllm"
    scheduling: str = "fcfs"
    profile: StepTimeProfile = field(default_factory=load_profile)
    snapshot: PodSnapshot | None = None
    reachable: bool = False
    model_cards: list[dict[str, Any]] = field(default_factory=list)
    static: bool = True
    listed: bool = True  # the store lists it now (store pods); an unlisted pod takes nothing new
    # The scheduler's ledger page for this pod (attached by the PodSet): our requests there. A view
    # corrects the snapshot by what the page did since `mark`, its counters when the snapshot was
    # taken: a scrape is up to an interval old, and a pod that just finished a request must not
    # look full until the next one.
    ledger: PodLedger = field(default_factory=PodLedger)
    mark: LedgerMark = field(default_factory=LedgerMark)
    # Other router replicas' requests in flight here (shared through the store, router/sync.py): the
    # pod holds at least ours and theirs, whatever its last scrape said.
    others: int = 0
    # Consecutive failed requests (connect errors, 5xx); at `eject_after_failures` the pod is
    # ejected: it takes nothing new until a health probe (static pods) or a fresh ready snapshot
    # (store pods) readmits it.
    failures: int = 0
    ejected: bool = False
    # Ejections since the pod last served a request well, and when (monotonic) it may be probed for
    # readmission: each ejection doubles the wait, so a pod whose /health lies cannot flap.
    ejections: int = 0
    probe_after: float = 0.0
    api_key: str | None = field(default=None, repr=False)
    _sized: tuple[tuple[int, int], StepTimeProfile] | None = field(default=None, repr=False)

    @property
    def auth_headers(self) -> dict[str, str]:
        """Credentials for the pod's OpenAI server (vLLM/SGLang `--api-key`), if it has one."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def priority_mode(self) -> bool:
        return self.scheduling == "priority"

    @property
    def inflight(self) -> list[SchedRequest]:
        """Our requests on this pod (the ledger's page)."""
        return self.ledger.requests

    def took_snapshot(self) -> None:
        """A fresh snapshot counts everything the ledger did until now."""
        self.mark = self.ledger.mark()

    def answering(self, within_s: float) -> bool:
        """We read its metrics within the last `within_s` seconds. Only pods this router scrapes
        itself can tell: an operator's snapshot also ages while Redis is down."""
        return not self.static or (self.snapshot is not None and self.snapshot.age(time.time()) < within_s)

    def engine_profile(self) -> StepTimeProfile:
        """The step-time profile with the KV cache the engine reports (block_size × num_gpu_blocks,
        as its adapter in `sagesched.engines` reads them) in place of the profile's: admission and
        cost must size a 4,096-token CPU server as what it is, not as the profile's GPU. A pod that
        reports no capacity keeps its profile's (chosen per pod, or `--profile`)."""
        snap = self.snapshot
        if snap is None or not snap.block_size or not snap.num_gpu_blocks:
            return self.profile
        key = (snap.block_size, snap.num_gpu_blocks)
        if self._sized is None or self._sized[0] != key:
            self._sized = key, self.profile.with_overrides(block_size=key[0], num_gpu_blocks=key[1])
        return self._sized[1]

    def view(self, now_unix: float, max_age: float) -> PodView:
        """The snapshot corrected by what we did since (the ledger's page against its mark): the
        total by our dispatches and departures, the waiting part by which of ours have started
        streaming (a request dispatched after the scrape and already decoding must not hold the
        pod's admission until the next scrape). Ours whose tokens cannot be watched (non-streaming)
        wait until a snapshot counts them: left waiting, they would shut the waiting gate of every
        pod after `engine_buffer` of them."""
        snap, page, mark = self.snapshot, self.ledger, self.mark
        stale = snap is None or not self.listed or snap.is_stale(now_unix, max_age)
        total = max(0, (snap.num_running + snap.num_waiting if snap else 0) + page.net_since(mark),
                    len(page.requests) + self.others)
        others_waiting = max(0, (snap.num_waiting if snap else 0) - mark.unstarted)
        waiting = min(total, others_waiting + page.unstarted + page.unwatched_since(mark))
        running = total - waiting
        return PodView(
            name=self.name,
            models=self.models,
            profile=self.engine_profile(),
            kv_usage=snap.kv_cache_usage if snap else 0.0,
            num_running=running,
            num_waiting=waiting,
            healthy=self.reachable and not self.ejected and (snap.ready if snap else False),
            stale=stale,
            ledger=page,
        )


def _parse_metrics(text: str, entry: PodEntry) -> PodSnapshot:
    """Engine /metrics text → snapshot, through the pod's engine adapter (`sagesched.engines`)."""
    return parse_metrics(text, entry.engine).to_snapshot(
        name=entry.name, address=entry.base_url.split("://", 1)[-1], models=list(entry.models))


class PodSet:
    """Every pod this router knows, by name, with scrapers/pollers that keep them current.

    `on_change` is called after every metrics update so the dispatcher can run again (a pod that
    reported free KV may take a queued request now).
    """

    def __init__(self, settings: RouterSettings, metrics: RouterMetrics, ledger: Ledger,
                 store: PodSnapshotStore | None = None) -> None:
        self.settings = settings
        self.ledger = ledger  # the scheduler's: each entry reads its page
        self.metrics = metrics
        self.store = store
        self.pods: dict[str, PodEntry] = {}
        self.on_change: Callable[[], None] = lambda: None
        self._tasks: list[asyncio.Task] = []
        self._session: aiohttp.ClientSession | None = None
        self._ready = asyncio.Event()
        self._profiles: dict[str, StepTimeProfile] = {}
        # When the store was last read successfully, while it is unreachable (None when it is fine):
        # store pods' ages are judged at that instant, so a Redis outage does not make every pod
        # stale — the router keeps serving from its last view, for up to `store_outage_grace_s`.
        self._store_down_since: float | None = None
        self._store_last_read = 0.0
        for backend in settings.backends:
            self._add(self._entry_for(backend))

    def _add(self, entry: PodEntry) -> PodEntry:
        entry.ledger = self.ledger.pod(entry.name)
        entry.mark = entry.ledger.mark()
        self.pods[entry.name] = entry
        self.metrics.pod_added(entry.name)
        return entry

    def _profile(self, name: str) -> StepTimeProfile:
        if name not in self._profiles:
            self._profiles[name] = load_profile(name)
        return self._profiles[name]

    def _entry_for(self, b: Backend) -> PodEntry:
        return PodEntry(name=b.name, base_url=b.url, models=tuple(b.models), engine=b.engine,
                        scheduling=b.scheduling, profile=self._profile(b.profile),
                        api_key=b.api_key or self.settings.upstream_api_key)

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(1.0, self.settings.scrape_interval_s * 4))
        self._session = aiohttp.ClientSession(timeout=timeout)
        for entry in list(self.pods.values()):
            self._tasks.append(asyncio.create_task(self._scrape_loop(entry), name=f"scrape-{entry.name}"))
        if self.store is not None:
            self._tasks.append(asyncio.create_task(self._store_loop(), name="pod-store"))
        if not self._tasks:
            self._ready.set()

    async def wait_ready(self, timeout: float) -> bool:
        """True once every static pod answered one scrape (or the store was read once)."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()

    # --- static backends -----------------------------------------------------------------------
    async def _scrape_once(self, entry: PodEntry) -> None:
        assert self._session is not None
        if entry.ejected and time.monotonic() >= entry.probe_after:
            async with self._session.get(f"{entry.base_url}/health", headers=entry.auth_headers) as resp:
                resp.raise_for_status()
            self.readmit(entry)
        if not entry.model_cards:
            async with self._session.get(f"{entry.base_url}/v1/models", headers=entry.auth_headers) as resp:
                resp.raise_for_status()
                cards = (await resp.json()).get("data", [])
            entry.model_cards = cards
            if not entry.models:
                entry.models = tuple(c["id"] for c in cards)
        async with self._session.get(f"{entry.base_url}/metrics", headers=entry.auth_headers) as resp:
            resp.raise_for_status()
            text = await resp.text()
        snap = _parse_metrics(text, entry)
        snap.scraped_at = time.time()
        entry.snapshot = snap
        entry.took_snapshot()
        entry.reachable = True

    async def _scrape_loop(self, entry: PodEntry) -> None:
        while True:
            try:
                await self._scrape_once(entry)
            except asyncio.CancelledError:
                raise
            except aiohttp.ConnectionTimeoutError as exc:  # no connection at all: gone
                self._unreachable(entry, exc)
            except TimeoutError:
                # Slow, not gone: its snapshot ages until it counts as stale and takes nothing new,
                # while requests wait in the queue for it (or another pod) instead of failing.
                log.debug("pod %s: metrics scrape timed out", entry.name)
            except Exception as exc:  # a pod that fails to answer goes unhealthy, not the router
                self._unreachable(entry, exc)
            self._check_ready()
            self.on_change()
            await asyncio.sleep(self.settings.scrape_interval_s)

    @staticmethod
    def _unreachable(entry: PodEntry, exc: Exception) -> None:
        if entry.reachable:
            log.warning("pod %s unreachable: %s", entry.name, exc)
        entry.reachable = False

    def _check_ready(self) -> None:
        if not self._ready.is_set() and all(p.reachable or not p.static for p in self.pods.values()):
            self._ready.set()

    # --- operator-published snapshots ----------------------------------------------------------
    async def _store_loop(self) -> None:
        while True:
            try:
                snapshots = await self.store.list(policy=self.settings.store_policy)
                if self._store_down_since is not None:
                    log.info("pod store reachable again after %.1fs", time.time() - self._store_down_since)
                self._store_down_since = None
                self._store_last_read = time.time()
                self._apply_snapshots(snapshots)
                if not any(p.static for p in self.pods.values()):
                    self._ready.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._store_down_since is None:
                    self._store_down_since = time.time()
                    log.warning("pod store read failed, serving the last pod view: %s", exc.__class__.__name__)
            self.on_change()
            raise_if_cancelled()
            await asyncio.sleep(self.settings.scrape_interval_s)

    def _apply_snapshots(self, snapshots: list[PodSnapshot]) -> None:
        seen = set()
        for snap in snapshots:
            seen.add(snap.name)
            entry = self.pods.get(snap.name)
            if entry is None:
                entry = self._add(PodEntry(
                    name=snap.name, base_url=f"http://{snap.address}", models=tuple(snap.models),
                    engine=snap.engine, profile=self._profile(self.settings.default_profile), static=False,
                    api_key=self.settings.upstream_api_key))
            elif entry.static:
                continue  # a statically configured pod is scraped by us; ours is fresher
            if entry.snapshot is None or snap.scraped_at != entry.snapshot.scraped_at:
                entry.took_snapshot()
                if entry.ejected and snap.ready and time.monotonic() >= entry.probe_after:
                    self.readmit(entry)
            entry.snapshot = snap
            entry.models = tuple(snap.models)
            entry.scheduling = snap.scheduling
            entry.reachable = snap.ready
            entry.listed = True
        for entry in [e for e in self.pods.values() if not e.static and e.name not in seen]:
            self._unlisted(entry)

    def _unlisted(self, entry: PodEntry) -> None:
        """The store no longer lists `entry`: removed by the operator, or its snapshot expired while
        no operator published. Either way it takes nothing new; it is forgotten once its snapshot is
        too old to wait for (unless we still stream from it)."""
        entry.listed = False
        if entry.inflight or entry.snapshot.age(time.time()) <= self.settings.unlisted_pod_max_age_s:
            return
        del self.pods[entry.name]
        try:  # a frozen age would read as a fresh pod
            self.metrics.pod_snapshot_age.remove(entry.name)
        except KeyError:
            pass

    # --- views ---------------------------------------------------------------------------------
    def views(self) -> list[PodView]:
        now = time.time()
        max_age = self.settings.snapshot_max_age_s
        store_now = now
        if self._store_down_since is not None and now - self._store_down_since < self.settings.store_outage_grace_s:
            store_now = self._store_last_read
        out = []
        for entry in self.pods.values():
            if entry.snapshot is not None:
                self.metrics.pod_snapshot_age.labels(entry.name).set(entry.snapshot.age(now))
            out.append(entry.view(now if entry.static else store_now, max_age))
        return out

    # --- request outcomes ----------------------------------------------------------------------
    def record_success(self, entry: PodEntry) -> None:
        entry.failures = 0
        entry.ejections = 0

    def record_failure(self, entry: PodEntry, unreachable: bool) -> None:
        """A request failed at `entry`. `unreachable` (the connection itself failed) also marks it
        unreachable at once, so a retry goes elsewhere; the scrape loop sees it back when it is."""
        entry.failures += 1
        if unreachable and entry.static:
            entry.reachable = False
        if not entry.ejected and entry.failures >= self.settings.eject_after_failures:
            entry.ejected = True
            entry.ejections += 1
            wait = min(MAX_EJECT_COOLDOWN_S, self.settings.eject_cooldown_s * 2 ** (entry.ejections - 1))
            entry.probe_after = time.monotonic() + wait
            self.metrics.pod_ejections.labels(entry.name).inc()
            log.warning("pod %s ejected after %d consecutive failures; probed again in %.1fs",
                        entry.name, entry.failures, wait)

    def readmit(self, entry: PodEntry) -> None:
        log.info("pod %s healthy again: readmitted", entry.name)
        entry.ejected = False
        entry.failures = 0

    def serves(self, model: str) -> bool:
        return any(model in e.models for e in self.pods.values())

    def model_names(self) -> list[str]:
        return sorted({m for e in self.pods.values() for m in e.models})

    def model_cards(self) -> list[dict[str, Any]]:
        """OpenAI model objects, one per model, taken from the first pod that described it."""
        cards: dict[str, dict[str, Any]] = {}
        for entry in self.pods.values():
            for card in entry.model_cards:
                cards.setdefault(card.get("id", ""), card)
            for model in entry.models:
                cards.setdefault(model, {"id": model, "object": "model", "created": 0, "owned_by": "sagesched"})
        return [cards[k] for k in sorted(cards)]
