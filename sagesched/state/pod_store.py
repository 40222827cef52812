"""Where pod snapshots live between the operator (writer) and router replicas (readers).

Two implementations of one async interface, `PodSnapshotStore`:

* `RedisPodStore` for real deployments (every router replica reads what one operator writes);
* `InProcessPodStore` for `sagesched demo`, single-process use and tests.

Every snapshot is published with a TTL: if its publisher dies, the snapshot and its index entries
vanish on their own, and readers never see pods nobody is watching any more.

Identity: a snapshot belongs to a *policy key* ``"<namespace>/<policy>"`` (the SageSchedPolicy that
selected the pod; one pod may be selected by several policies) and a pod name.

Redis key layout (prefix defaults to ``sagesched``)::

    {p}:pod:{ns}/{policy}/{pod}   STRING  PodSnapshot JSON; PX = ttl
    {p}:policy:{ns}/{policy}      ZSET    member pod name, score = expiry (unix ms); key PX = ttl
    {p}:model:{model}             ZSET    member "{ns}/{policy}/{pod}", score = expiry; key PX = ttl
    {p}:policies                  ZSET    member "{ns}/{policy}", score = expiry; key PX = ttl
    {p}:config:{ns}/{policy}      STRING  {"generation": g, "config": spec.policy}; no TTL (routers keep
                                          applying the last one through an operator gap)
    {p}:applied:{ns}/{policy}     HASH    router id -> {"generation": g, "expires": unix ms}; key PX = ttl
    {p}:inflight:{router}         HASH    pod name -> this router's requests in flight there; key PX = ttl
    {p}:routers                   ZSET    member router id, score = expiry (the in-flight publishers)

Index entries carry their own expiry as the score, because Redis cannot expire single members:
readers ignore members whose score is in the past, and writers trim them (ZREMRANGEBYSCORE).
"""
from __future__ import annotations

import abc
import asyncio
import json
import time
from collections.abc import Iterable

from sagesched.state.snapshot import PodSnapshot

DEFAULT_PREFIX = "sagesched"


def policy_key(namespace: str, policy: str) -> str:
    return f"{namespace}/{policy}"


def snapshot_policy_key(snapshot: PodSnapshot) -> str:
    return policy_key(snapshot.namespace, snapshot.policy)


def raise_if_cancelled() -> None:
    """Raise the current task's pending cancellation, if any. redis-py (8.1) can consume a
    cancellation that lands inside a command and return the command's result: a loop over a store
    that then waits again never stops (seen as `PodSet.stop()` hanging on its store loop, about once
    in 150 start/stop cycles). Loops over a store call this before they wait again."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class PodSnapshotStore(abc.ABC):
    """Async store of live pod snapshots. All reads return only unexpired snapshots."""

    @abc.abstractmethod
    async def publish_many(self, snapshots: Iterable[PodSnapshot], ttl: float) -> None:
        """Write snapshots (replacing earlier ones of the same policy/pod), each expiring in `ttl` s."""

    async def publish(self, snapshot: PodSnapshot, ttl: float) -> None:
        await self.publish_many([snapshot], ttl)

    @abc.abstractmethod
    async def get(self, policy: str, name: str) -> PodSnapshot | None:
        """One pod's snapshot under policy key "<ns>/<policy>", or None if absent or expired."""

    @abc.abstractmethod
    async def list(self, *, policy: str | None = None, model: str | None = None) -> list[PodSnapshot]:
        """Live snapshots of one policy ("<ns>/<policy>"), of one model, of both, or all of them."""

    @abc.abstractmethod
    async def delete(self, policy: str, name: str | None = None) -> None:
        """Forget one pod of a policy, or (name=None) every pod of the policy."""

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    # --- the policy's scheduler configuration and who applies it --------------------------------
    @abc.abstractmethod
    async def publish_policy(self, policy: str, generation: int, config: dict) -> None:
        """The scheduler configuration (`spec.policy`) of `policy` at spec `generation`."""

    @abc.abstractmethod
    async def get_policy(self, policy: str) -> tuple[int, dict] | None:
        """(generation, configuration) last published for `policy`, or None."""

    @abc.abstractmethod
    async def report_applied(self, policy: str, router: str, generation: int, ttl: float) -> None:
        """Router `router` serves `generation` of `policy`; the report lapses after `ttl` s."""

    @abc.abstractmethod
    async def applied(self, policy: str) -> dict[str, int]:
        """The generation each live router of `policy` serves."""

    # --- in-flight counts shared by active-active routers -----------------------------------------
    @abc.abstractmethod
    async def publish_inflight(self, router: str, counts: dict[str, int], ttl: float) -> None:
        """`router`'s requests in flight per pod (replacing its previous report), lapsing after `ttl` s."""

    @abc.abstractmethod
    async def inflight(self, *, exclude: str) -> dict[str, int]:
        """Requests in flight per pod, summed over the live routers other than `exclude`."""


class InProcessPodStore(PodSnapshotStore):
    """The same contract in a dict: for one process (demo, tests, a single router replica)."""

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._items: dict[tuple[str, str], tuple[float, PodSnapshot]] = {}
        self._configs: dict[str, tuple[int, dict]] = {}
        self._applied: dict[str, dict[str, tuple[float, int]]] = {}  # policy -> router -> (expiry, gen)
        self._inflight: dict[str, tuple[float, dict[str, int]]] = {}  # router -> (expiry, counts)

    async def publish_many(self, snapshots: Iterable[PodSnapshot], ttl: float) -> None:
        expiry = self._clock() + ttl
        for snap in snapshots:
            self._items[(snapshot_policy_key(snap), snap.name)] = (expiry, snap)

    def _live(self) -> list[tuple[tuple[str, str], PodSnapshot]]:
        now = self._clock()
        for key in [k for k, (exp, _) in self._items.items() if exp <= now]:
            del self._items[key]
        return [(k, s) for k, (_, s) in self._items.items()]

    async def get(self, policy: str, name: str) -> PodSnapshot | None:
        for key, snap in self._live():
            if key == (policy, name):
                return snap
        return None

    async def list(self, *, policy: str | None = None, model: str | None = None) -> list[PodSnapshot]:
        return sorted(
            (s for (pk, _), s in self._live()
             if (policy is None or pk == policy) and (model is None or model in s.models)),
            key=lambda s: (snapshot_policy_key(s), s.name),
        )

    async def delete(self, policy: str, name: str | None = None) -> None:
        for key in [k for k in self._items if k[0] == policy and (name is None or k[1] == name)]:
            del self._items[key]
        if name is None:
            self._configs.pop(policy, None)
            self._applied.pop(policy, None)

    async def publish_policy(self, policy: str, generation: int, config: dict) -> None:
        self._configs[policy] = (generation, dict(config))

    async def get_policy(self, policy: str) -> tuple[int, dict] | None:
        return self._configs.get(policy)

    async def report_applied(self, policy: str, router: str, generation: int, ttl: float) -> None:
        self._applied.setdefault(policy, {})[router] = (self._clock() + ttl, generation)

    async def applied(self, policy: str) -> dict[str, int]:
        now = self._clock()
        return {r: g for r, (exp, g) in self._applied.get(policy, {}).items() if exp > now}

    async def publish_inflight(self, router: str, counts: dict[str, int], ttl: float) -> None:
        self._inflight[router] = (self._clock() + ttl, dict(counts))

    async def inflight(self, *, exclude: str) -> dict[str, int]:
        now = self._clock()
        return _summed(c for r, (exp, c) in self._inflight.items() if r != exclude and exp > now)


class RedisPodStore(PodSnapshotStore):
    """Snapshots in Redis (layout in the module docstring), via redis.asyncio."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, client=None, timeout_s: float = 2.0) -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        # Bounded socket waits: a Redis that accepts but stalls (a partition drops packets, no reset
        # comes) must fail the router's sync round and the operator's publish, which retry on their
        # next round, instead of hanging them until TCP gives up (hours).
        self._redis = client if client is not None else aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    # Key builders, public so that other readers (dashboards, debugging) can share them.
    def pod_key(self, policy: str, name: str) -> str:
        return f"{self.prefix}:pod:{policy}/{name}"

    def policy_index_key(self, policy: str) -> str:
        return f"{self.prefix}:policy:{policy}"

    def model_index_key(self, model: str) -> str:
        return f"{self.prefix}:model:{model}"

    @property
    def policies_key(self) -> str:
        return f"{self.prefix}:policies"

    async def publish_many(self, snapshots: Iterable[PodSnapshot], ttl: float) -> None:
        ttl_ms = max(1, int(ttl * 1000))
        now_ms = int(time.time() * 1000)
        expiry = now_ms + ttl_ms
        pipe = self._redis.pipeline(transaction=False)
        touched: set[str] = set()
        for snap in snapshots:
            pk = snapshot_policy_key(snap)
            pipe.set(self.pod_key(pk, snap.name), snap.to_json(), px=ttl_ms)
            touched.add(self.policy_index_key(pk))
            pipe.zadd(self.policy_index_key(pk), {snap.name: expiry})
            pipe.zadd(self.policies_key, {pk: expiry})
            touched.add(self.policies_key)
            for model in snap.models:
                pipe.zadd(self.model_index_key(model), {f"{pk}/{snap.name}": expiry})
                touched.add(self.model_index_key(model))
        for key in touched:
            pipe.zremrangebyscore(key, "-inf", now_ms)
            # NX then GT: a new key gets a TTL; an existing one only ever has its TTL extended, so a
            # short-TTL publisher never cuts short another policy's entries in a shared index.
            pipe.pexpire(key, ttl_ms, nx=True)
            pipe.pexpire(key, ttl_ms, gt=True)
        await pipe.execute()

    async def get(self, policy: str, name: str) -> PodSnapshot | None:
        raw = await self._redis.get(self.pod_key(policy, name))
        return PodSnapshot.from_json(raw) if raw is not None else None

    async def _members(self, key: str) -> list[str]:
        now_ms = int(time.time() * 1000)
        return [_text(m) for m in await self._redis.zrangebyscore(key, now_ms, "+inf")]

    async def list(self, *, policy: str | None = None, model: str | None = None) -> list[PodSnapshot]:
        if model is not None:
            keys = [self.pod_key(*m.rsplit("/", 1)) for m in await self._members(self.model_index_key(model))]
            if policy is not None:
                keys = [k for k in keys if k.startswith(self.pod_key(policy, ""))]
        elif policy is not None:
            keys = [self.pod_key(policy, n) for n in await self._members(self.policy_index_key(policy))]
        else:
            keys = []
            for pk in await self._members(self.policies_key):
                keys += [self.pod_key(pk, n) for n in await self._members(self.policy_index_key(pk))]
        if not keys:
            return []
        # An index member can outlive its snapshot by a moment (or a deleted pod); MGET says None.
        raws = await self._redis.mget(keys)
        snaps = [PodSnapshot.from_json(r) for r in raws if r is not None]
        return sorted(snaps, key=lambda s: (snapshot_policy_key(s), s.name))

    async def delete(self, policy: str, name: str | None = None) -> None:
        names = [name] if name is not None else await self._members(self.policy_index_key(policy))
        keys = [self.pod_key(policy, n) for n in names]
        snaps = [s for s in await self._redis.mget(keys) if s] if keys else []
        pipe = self._redis.pipeline(transaction=False)
        for n in names:
            pipe.delete(self.pod_key(policy, n))
            pipe.zrem(self.policy_index_key(policy), n)
        for raw in snaps:
            snap = PodSnapshot.from_json(raw)
            for model in snap.models:
                pipe.zrem(self.model_index_key(model), f"{policy}/{snap.name}")
        if name is None:
            pipe.zrem(self.policies_key, policy)
            pipe.delete(self.policy_index_key(policy), self.config_key(policy), self.applied_key(policy))
        await pipe.execute()

    def config_key(self, policy: str) -> str:
        return f"{self.prefix}:config:{policy}"

    def applied_key(self, policy: str) -> str:
        return f"{self.prefix}:applied:{policy}"

    def inflight_key(self, router: str) -> str:
        return f"{self.prefix}:inflight:{router}"

    async def publish_policy(self, policy: str, generation: int, config: dict) -> None:
        await self._redis.set(self.config_key(policy), json.dumps({"generation": generation, "config": config}))

    async def get_policy(self, policy: str) -> tuple[int, dict] | None:
        raw = await self._redis.get(self.config_key(policy))
        if raw is None:
            return None
        data = json.loads(raw)
        return int(data["generation"]), data["config"]

    async def report_applied(self, policy: str, router: str, generation: int, ttl: float) -> None:
        ttl_ms = max(1, int(ttl * 1000))
        entry = json.dumps({"generation": generation, "expires": int(time.time() * 1000) + ttl_ms})
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(self.applied_key(policy), router, entry)
        pipe.pexpire(self.applied_key(policy), ttl_ms, nx=True)  # as the indexes: only ever extended
        pipe.pexpire(self.applied_key(policy), ttl_ms, gt=True)
        await pipe.execute()

    async def applied(self, policy: str) -> dict[str, int]:
        now_ms = int(time.time() * 1000)
        entries = {_text(r): json.loads(v) for r, v in (await self._redis.hgetall(self.applied_key(policy))).items()}
        return {r: int(e["generation"]) for r, e in entries.items() if e["expires"] > now_ms}

    async def publish_inflight(self, router: str, counts: dict[str, int], ttl: float) -> None:
        ttl_ms = max(1, int(ttl * 1000))
        now_ms = int(time.time() * 1000)
        key = self.inflight_key(router)
        pipe = self._redis.pipeline(transaction=True)  # readers never see a half-replaced report
        pipe.delete(key)
        if counts:
            pipe.hset(key, mapping=counts)
            pipe.pexpire(key, ttl_ms)
        pipe.zadd(self.routers_key, {router: now_ms + ttl_ms})
        pipe.zremrangebyscore(self.routers_key, "-inf", now_ms)
        await pipe.execute()

    @property
    def routers_key(self) -> str:
        return f"{self.prefix}:routers"

    async def inflight(self, *, exclude: str) -> dict[str, int]:
        routers = [r for r in await self._members(self.routers_key) if r != exclude]
        if not routers:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for router in routers:
            pipe.hgetall(self.inflight_key(router))
        reports = await pipe.execute()
        return _summed({_text(k): int(v) for k, v in report.items()} for report in reports)

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _summed(reports: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for report in reports:
        for pod, n in report.items():
            total[pod] = total.get(pod, 0) + n
    return total


def open_store(redis_url: str | None, **kwargs) -> PodSnapshotStore:
    """`RedisPodStore` for a URL, else the in-process store."""
    return RedisPodStore(redis_url, **kwargs) if redis_url else InProcessPodStore()
