"""When a pod may take one more request: the admission gates, registered plugins (plugins.py).

Two gates by default. The count gate keeps the engine's own waiting queue shorter than a small
buffer (and the total below max_num_seqs plus that buffer): the engine orders what waits there first-come-first-served,
so everything that can wait should wait in our queue, where the order is informed. The buffer keeps
the engine from idling for a router round trip.

The prefill gate meters prompt tokens into a pod: at most `prefill_tokens` of our requests' prompts
may be waiting for prefill there at once (one request always may). A chunked-prefill engine packs up to
max_num_batched_tokens of prefill into each iteration, and every running decode waits for that
iteration; past a few hundred tokens prefill is compute-bound, so feeding it in smaller portions
costs no prefill throughput while decode iterations stay short; an engine configured with a small
batch-token budget already does that itself, so there the gate is off. The memory gate (optional,
off by default, any policy) admits only
if a high quantile of the KV the pod's requests may still need fits its free KV: the sum of their
remaining growth is approximately normal (many independent requests), so mean + z·std of the sum is
that quantile. Engine preemption recomputes whole prompts; not causing it is cheaper than any order.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

from sagesched.scheduling.ledger import PodLoad
from sagesched.scheduling.plugins import Plugin, Registry
from sagesched.scheduling.types import PodView


PREFILL_KNEES = 4.0
DEFAULT_QUANTILE = 0.9
_NO_LOAD = PodLoad()  # read-only stand-in for a pod we have sent nothing yet

# of these pods, the share of the request's prompt each caches (by name; absent: none)
Affine = Callable[[Sequence[PodView]], Mapping[str, float]]
AFFINE_SHARE = 0.5  # a pod that caches at least this share of the prompt may queue `affinity_buffer` more


class Gate(Plugin):
    """Keeps, in one pass, the pods that may take one more request: a pod's load is our in-flight
    requests' sum there (its ledger page), `new` the request's own. `affine`, when the request has a
    prompt to look up, tells how much of it some pods hold in their prefix cache: a gate may let such
    a pod take what it would refuse otherwise (`fits_cached`)."""

    def admit(self, pods: Sequence[PodView], new: PodLoad, affine: Affine | None = None) -> list[PodView]:
        kept = self.keep(pods, new)
        if not self.considers_cache:  # the cache changes nothing here: no lookup
            return kept
        return reconsider(pods, kept, affine, lambda pod, share: self.fits_cached(pod, new, share))

    def keep(self, pods: Sequence[PodView], new: PodLoad) -> list[PodView]:
        """The pods `fits` lets take the request (a gate may do the same pass faster)."""
        return [p for p in pods if self.fits(p, p.ledger.load, new)]

    @property
    def considers_cache(self) -> bool:
        """Whether `fits_cached` can take a pod `fits` refused (else the cache is not looked up)."""
        return type(self).fits_cached is not Gate.fits_cached

    def fits(self, pod: PodView, load: PodLoad, new: PodLoad) -> bool:
        raise NotImplementedError

    def fits_cached(self, pod: PodView, new: PodLoad, share: float) -> bool:
        """Whether a pod refused by `fits` may take the request after all, caching `share` of its prompt."""
        return False


def reconsider(pods: Sequence[PodView], kept: list[PodView], affine: Affine | None,
               fits_cached: Callable[[PodView, float], bool]) -> list[PodView]:
    """`kept`, plus the refused pods that cache part of the prompt and take it on that account, in
    the pods' order (pick ties go round-robin by position). The cache is looked up only for pods
    refused: most passes refuse none or have no prompt to look up."""
    if affine is None or len(kept) == len(pods):
        return kept
    taken = set(map(id, kept))
    refused = [p for p in pods if id(p) not in taken]
    shares = affine(refused)
    more = {id(p) for p in refused if shares.get(p.name, 0.0) > 0.0 and fits_cached(p, shares[p.name])}
    return [p for p in pods if id(p) in taken or id(p) in more] if more else kept


GATES: Registry[Gate] = Registry("gate")


@GATES.register
class CountGate(Gate):
    """The engine's waiting queue shorter than `engine_buffer`, the total below max_num_seqs plus it.

    A pod that holds the request's prompt in its prefix cache may queue `affinity_buffer` more: there
    the engine skips most of the prefill, which is worth a short wait in its queue, where elsewhere
    the prompt is computed again (and a conversation's later turns lose their cache too). Measured
    on ShareGPT conversations replayed turn by turn (bench/results/prefix-affinity, 8 pods, means of
    3 seeds), sagesched with 1 more place (with the prefill gate counting only uncached prompt):
    hit rate 0.22 -> 0.25 and mean TTLT 10.73 -> 10.57 s at load 1.0 (llm-d: 0.27, 10.45 s);
    8.74 -> 8.68 s at 0.8 (llm-d 8.65 s); 14.87 -> 14.79 s at 1.2 (llm-d 14.08 s). 2 or 3 more
    places were no better (1.0 and 1.2, three seeds)."""

    name = "count"

    def __init__(self, engine_buffer: int = 4, affinity_buffer: int = 1) -> None:
        self.engine_buffer = engine_buffer
        self.affinity_buffer = affinity_buffer

    def keep(self, pods: Sequence[PodView], new: PodLoad) -> list[PodView]:
        buffer = self.engine_buffer  # the loads are not looked up: this runs for every pod
        return [p for p in pods if self._room(p, buffer)]

    @property
    def considers_cache(self) -> bool:
        return self.affinity_buffer > 0

    @staticmethod
    def _room(pod: PodView, buffer: int) -> bool:
        return pod.waiting < buffer and pod.outstanding < pod.profile.max_num_seqs + buffer

    def fits(self, pod: PodView, load: PodLoad, new: PodLoad) -> bool:
        return self._room(pod, self.engine_buffer)

    def fits_cached(self, pod: PodView, new: PodLoad, share: float) -> bool:
        return share >= AFFINE_SHARE and self._room(pod, self.engine_buffer + self.affinity_buffer)


@GATES.register
class PrefillGate(Gate):
    """At most `prefill_tokens` of our prompts waiting for prefill on a pod (one request always may);
    None: auto from the pod's profile, 0: off."""

    name = "prefill"

    def __init__(self, prefill_tokens: int | None = None) -> None:
        self.prefill_tokens = prefill_tokens

    def budget(self, pod: PodView) -> int:
        """Auto: PREFILL_KNEES x the knee, but only on an engine whose own batch-token budget is at
        least twice that — a smaller budget already meters prefill, and gating it again only
        serialises prompts (measured: 3-6x worse mean TTLT at budgets 512/1024)."""
        if self.prefill_tokens is not None:
            return self.prefill_tokens
        knee = pod.profile.base_s / pod.profile.per_token_s  # below it, the weights' read dominates
        gate = int(round(PREFILL_KNEES * knee))
        return gate if pod.profile.max_num_batched_tokens >= 2 * gate else 0

    def fits(self, pod: PodView, load: PodLoad, new: PodLoad) -> bool:
        if load.pending_prompt <= 0:  # checked first: the budget takes arithmetic, asked of every pod
            return True
        budget = self.budget(pod)
        return budget <= 0 or load.pending_prompt + new.pending_prompt <= budget

    def fits_cached(self, pod: PodView, new: PodLoad, share: float) -> bool:
        """The cached part of the prompt needs no prefill there."""
        return self.fits(pod, pod.ledger.load, new.uncached(share))


@GATES.register
class MemoryGate(Gate):
    """A `quantile` of the KV the pod's requests may still need fits its free KV. An empty pod always
    admits, so a request bigger than any forecast runs."""

    name = "memory"

    def __init__(self, quantile: float = DEFAULT_QUANTILE) -> None:
        self.z = NormalDist().inv_cdf(quantile)

    def fits(self, pod: PodView, load: PodLoad, new: PodLoad) -> bool:
        if not pod.inflight:
            return True
        need = (
            load.pending_prompt + new.pending_prompt + load.growth_mean + new.growth_mean
            + self.z * (load.growth_var + new.growth_var) ** 0.5
        )
        free = pod.profile.kv_capacity_tokens * (1.0 - pod.kv_usage)
        return need <= free


@dataclass(frozen=True)
class Admission:
    """The gates' configuration and their composition, applied in order: count, prefill (unless 0),
    memory (when `memory_aware`)."""

    memory_aware: bool = False  # off by default: admit on the engine's own block check, preemption corrects
    quantile: float = DEFAULT_QUANTILE
    engine_buffer: int = 4
    # Prompt tokens a pod may have waiting for prefill; None = auto (PREFILL_KNEES x the pod's knee,
    # where prefill turns compute-bound), 0 = no prefill gate.
    prefill_tokens: int | None = None
    # more requests not yet streaming at a pod that caches the request's prompt (CountGate)
    affinity_buffer: int = 1
    gates: tuple[Gate, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        gates = [CountGate(self.engine_buffer, self.affinity_buffer), PrefillGate(self.prefill_tokens)]
        if self.prefill_tokens == 0:
            gates.pop()
        if self.memory_aware:
            gates.append(MemoryGate(self.quantile))
        object.__setattr__(self, "gates", tuple(gates))

    def has_room(self, pod: PodView) -> bool:
        """The count gate alone: whether the engine's own queue has room."""
        return self.gates[0].fits(pod, _NO_LOAD, _NO_LOAD)

    def fits(self, pod: PodView, load: PodLoad, new: PodLoad) -> bool:
        """The gates after the count gate."""
        return all(g.fits(pod, load, new) for g in self.gates[1:])

    def prefill_budget(self, pod: PodView) -> int:
        return PrefillGate(self.prefill_tokens).budget(pod)

    @property
    def z(self) -> float:
        """The memory gate's quantile in standard deviations."""
        return NormalDist().inv_cdf(self.quantile)


NO_ADMISSION = Admission(memory_aware=False, prefill_tokens=0)
