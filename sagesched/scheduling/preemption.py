"""When a waiting request may displace a running one: the hysteresis that keeps preemption useful.

The scheduler asks only when the head of a queue fits on no pod. The candidate is the running
request with the worst (client priority, aged rank as of its last refresh bucket) among those that
have streamed something, have not hit the per-request cap, were not decided on in their current
bucket, and that the policy lets go. Its rank is then brought up to date, and it is displaced only if
it exceeds the head's by more than `min_gain` of the head's rank plus its own recompute cost: close
indices would trade places back and forth, and every swap costs a recompute. Either way that is the one decision of its bucket.
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from sagesched.scheduling.types import SchedRequest

DEFAULT_BUCKET_TOKENS = 100  # bench/results/standard sweep: 50-800 all within seed noise (the paper found 200)


@dataclass(frozen=True)
class Preemption:
    enabled: bool = True
    bucket_tokens: int = DEFAULT_BUCKET_TOKENS
    min_gain: float = 0.5  # the victim's aged rank must exceed the head's by this share of its rank
    max_per_request: int = 2  # then it runs to completion: bounds recompute and starvation
    # a recompute stalls every request batched on the pod: its cost counts once per running request
    recompute_weight: float = 1.0
    # the engines keep an aborted request's KV in a prefix cache until it is needed (vLLM's automatic
    # prefix caching, on by default; SGLang's radix cache): a resume may recompute little of it
    prefix_cache: bool = True

    def __post_init__(self) -> None:
        if self.bucket_tokens < 1 or self.min_gain < 0 or self.max_per_request < 0:
            raise ValueError("preemption: bucket_tokens >= 1, min_gain >= 0, max_per_request >= 0")


NO_PREEMPTION = Preemption(enabled=False)
SWEEP_SLACK = 64  # stale candidate entries tolerated beyond the live count before a sweep
UNBOUNDED = Preemption(min_gain=0.0, max_per_request=1 << 30)  # the oracle's SRPT


class Candidates:
    """Running requests a preemption may displace, worst (client priority, order key) first: a lazy
    max-heap, so picking a victim costs O(log n) however many requests run, not a scan of them all.

    A request is offered (`offer`) whenever its key may have changed — a new refresh bucket, its first
    token, a dispatch that resumes it — and withdrawn by `withdraw` when it leaves its pod. Entries
    are never updated in place: a newer offer or a withdrawal makes the older entry stale, and
    `worst` drops stale ones as it meets them. A request not eligible now (decided on in its current
    bucket, capped, not allowed by the policy) is dropped too; its next bucket offers it again. When
    nothing asks for a victim for long (no contention), stale entries are swept out once they
    outnumber the live ones, so the heap stays within twice the running requests.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, SchedRequest]] = []
        self._latest: dict[str, int] = {}
        self._seq = itertools.count()

    def offer(self, req: SchedRequest, key: float) -> None:
        seq = next(self._seq)
        self._latest[req.request_id] = seq
        heapq.heappush(self._heap, (-req.priority, -key, seq, req))
        if len(self._heap) > 2 * len(self._latest) + SWEEP_SLACK:
            latest = self._latest
            self._heap = [e for e in self._heap if latest.get(e[3].request_id) == e[2]]
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        """Entries held, stale ones included."""
        return len(self._heap)

    def withdraw(self, request_id: str) -> None:
        self._latest.pop(request_id, None)

    def worst(self, where: Callable[[SchedRequest], bool], eligible: Callable[[SchedRequest], bool],
              settings: Preemption) -> SchedRequest | None:
        """The worst live, eligible request for which `where` holds (e.g. on a pod that can take the
        head); entries failing only `where` are kept for later heads."""
        heap, latest, kept, found = self._heap, self._latest, [], None
        while heap:
            entry = heap[0]
            req = entry[3]
            if latest.get(req.request_id) != entry[2]:
                heapq.heappop(heap)  # stale: re-offered since, or gone
            elif not where(req):
                kept.append(heapq.heappop(heap))
            elif req.generated <= 0 or req.preemptions >= settings.max_per_request or not eligible(req):
                heapq.heappop(heap)
                del latest[req.request_id]
            else:
                found = req
                break
        for entry in kept:
            heapq.heappush(heap, entry)
        return found


HOME_WINDOW = 256  # resumes the home rate remembers, about: it follows the cluster's load
HOME_PRIOR = 8.0  # resumes assumed home before any is seen: a few early ones elsewhere are not the rule


class HomeRate:
    """How often a resume that counted on its pod's prefix cache went back to that pod. Dispatch
    sends a resumed request wherever a place opens first: its home only if the home has room then
    (the count gate lets a pod that caches a prompt queue one more). Elsewhere it computes its whole
    prompt again, so a preemption expects the cache only this often. Measured in the simulator on
    the Azure code trace over 8 pods, with the cache counted as certain: 11-14% of resumes went home
    before the count gate took the cache into account, 27-36% after, and the oracle's mean TTLT was
    25% worse than without preemption (the recompute). Starts at 1, as if HOME_PRIOR resumes had
    gone home (one pod: always 1). With a prior of one, 2 of the live router's first 7 resumes going
    elsewhere held the rate at 0.67-0.86 (2 compute-bound pods, `sagesched bench preemption`, seed
    1): it stopped 7 streams where it had stopped 48, and its mean TTLT rose from 9.8 to 11.0 s; with
    eight, 37 stops and 9.4 s."""

    def __init__(self) -> None:
        self._home, self._resumes = HOME_PRIOR, HOME_PRIOR

    @property
    def rate(self) -> float:
        return self._home / self._resumes

    def observe(self, at_home: bool) -> None:
        self._home += at_home
        self._resumes += 1.0
        if self._resumes >= HOME_WINDOW:
            self._home, self._resumes = self._home / 2, self._resumes / 2


def worth_preempting(
    head: SchedRequest, head_aged: float, victim: SchedRequest, victim_aged: float, recompute: float,
    settings: Preemption,
) -> bool:
    """Client priority first; within it, the victim's aged rank must exceed the head's by the
    margin plus what resuming the victim will cost (`recompute`, pod-seconds: its prompt and output
    computed again if its cache is gone) — the paper's decisions count that I/O too."""
    if victim.priority != head.priority:
        return victim.priority > head.priority
    return victim_aged > (1.0 + settings.min_gain) * head_aged + recompute
