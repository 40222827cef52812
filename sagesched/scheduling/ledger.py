"""The in-flight ledger: the requests one router (or the simulator) has sent to pods and not yet seen
leave, kept once, by the scheduler.

The scheduler writes it: a dispatch adds an entry, progress moves it, a finish, failure, cancel or
preemption removes it. Everything else reads it: pod views (`PodView.ledger`, the page of their pod,
which the caller attaches), so admission gates and scorers see our requests; the router's pod entries,
which correct a metrics snapshot by what the ledger did since it was taken (`LedgerMark`); the
dispatcher and the metrics. A configuration swap hands the ledger to the new scheduler, so running
requests keep their place in the accounting whichever scheduler sent them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sagesched.scheduling.cost import CostPolynomial
    from sagesched.scheduling.types import SchedRequest


@dataclass
class PodLoad:
    """A pod's in-flight requests (ours), summed: expected remaining KV growth (tokens), its
    variance, and prompts not yet in the cache."""

    growth_mean: float = 0.0
    growth_var: float = 0.0
    pending_prompt: float = 0.0

    def uncached(self, share: float) -> PodLoad:
        """This load on a pod that caches `share` of the prompt: only the rest waits for prefill."""
        return replace(self, pending_prompt=self.pending_prompt * (1.0 - share)) if share > 0.0 else self

    def add(self, other: PodLoad, sign: float = 1.0) -> None:
        self.growth_mean += sign * other.growth_mean
        self.growth_var += sign * other.growth_var
        self.pending_prompt += sign * other.pending_prompt


@dataclass
class InFlight:
    """One dispatched request: where it runs and what the scheduler computed for it there."""

    req: SchedRequest
    pod: str
    poly: CostPolynomial  # frozen at dispatch: refreshed ranks use the cost it was dispatched on
    contribution: PodLoad
    span: tuple[int, int]  # attained counts sharing the ladder step `contribution` was computed at
    start: int  # tokens generated before this dispatch (a resumed request's earlier run)
    quiet: int = 0  # from `req.generated` up to below this, a progress report changes nothing else
    charged: int = field(init=False)  # tokens of output its tenant has been charged for (fairness)

    def __post_init__(self) -> None:
        self.charged = self.start

    @property
    def unstarted(self) -> bool:
        """A stream that has not sent its first token (non-streaming answers cannot be watched)."""
        return self.req.generated <= 0 and self.req.watched


@dataclass(frozen=True)
class LedgerMark:
    """A page's counters at one instant (when a pod's metrics were read)."""

    sent: int = 0
    left: int = 0
    unstarted: int = 0


@dataclass(eq=False)
class PodLedger:
    """One pod's page: our requests there, their summed load, and counters that only grow (so a
    reader can tell what changed since its own mark without the ledger keeping its marks)."""

    requests: list[SchedRequest] = field(default_factory=list)
    unstarted: int = 0  # of `requests`, streams with no token yet
    load: PodLoad = field(default_factory=PodLoad)
    sent: int = 0  # dispatches here, ever
    left: int = 0  # requests that left (finished, failed, cancelled, preempted), ever
    # requests whose tokens cannot be watched (non-streaming), each with its `sent` number
    unwatched: dict[str, int] = field(default_factory=dict)

    def mark(self) -> LedgerMark:
        return LedgerMark(self.sent, self.left, self.unstarted)

    def net_since(self, mark: LedgerMark) -> int:
        """Dispatches minus departures since `mark`."""
        return (self.sent - mark.sent) - (self.left - mark.left)

    def unwatched_since(self, mark: LedgerMark) -> int:
        """Non-streaming requests sent after `mark` and still here: no report has counted them yet."""
        return sum(1 for sent in self.unwatched.values() if sent > mark.sent)


class Ledger:
    """Every in-flight request by id, and a page per pod."""

    def __init__(self) -> None:
        self.entries: dict[str, InFlight] = {}
        self.pods: dict[str, PodLedger] = {}

    def pod(self, name: str) -> PodLedger:
        page = self.pods.get(name)
        if page is None:
            page = self.pods[name] = PodLedger()
        return page

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.entries

    def add(self, entry: InFlight) -> None:
        req, page = entry.req, self.pod(entry.pod)
        self.entries[req.request_id] = entry
        page.requests.append(req)
        page.load.add(entry.contribution)
        page.sent += 1
        if entry.unstarted:
            page.unstarted += 1
        if not req.watched:
            page.unwatched[req.request_id] = page.sent

    def remove(self, request_id: str) -> InFlight | None:
        entry = self.entries.pop(request_id, None)
        if entry is None:
            return None
        page = self.pods[entry.pod]
        page.load.add(entry.contribution, -1.0)
        page.requests.remove(entry.req)
        page.left += 1
        page.unwatched.pop(request_id, None)
        if entry.unstarted:
            page.unstarted -= 1
        if not page.requests:
            page.load = PodLoad()  # resync: no float drift survives an idle pod
        return entry

    def started(self, entry: InFlight) -> None:
        """Its first token arrived (call before moving `generated` past 0)."""
        self.pods[entry.pod].unstarted -= 1

    def recontribute(self, entry: InFlight, contribution: PodLoad) -> None:
        load = self.pods[entry.pod].load
        load.add(entry.contribution, -1.0)
        entry.contribution = contribution
        load.add(contribution)

    def requests(self, pod: str | None = None) -> list[SchedRequest]:
        if pod is None:
            return [e.req for e in self.entries.values()]
        page = self.pods.get(pod)
        return list(page.requests) if page else []
