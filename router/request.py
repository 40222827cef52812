"""The one object a request is while it moves through the router.

Stages fill it in order — parse (`router.parse`) → predict (`router.predict`) → enqueue and dispatch
(`router.dispatch`) → stream (`router.proxy`) → record (`router.pipeline`) — and no stage reaches
back into an earlier one. Times are the event loop's monotonic clock.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sagesched.distribution import LengthDistribution
    from sagesched.scheduling.types import SchedRequest

    from sagesched.router.continuation import Continuation, Progress
    from sagesched.router.pods import PodEntry


class Api(str, Enum):
    CHAT = "chat"
    COMPLETIONS = "completions"

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self is Api.CHAT else "/v1/completions"


@dataclass(eq=False)
class LiveRequest:
    # --- parse ---------------------------------------------------------------------------------
    id: str  # the router's own, unique: the scheduler's key
    api: Api
    model: str
    body: dict[str, Any]  # the client's JSON; unknown fields go to the pod unchanged
    stream: bool
    prompt_text: str
    prompt_tokens: int  # a cheap estimate (characters / 4); the pod's usage report replaces it
    max_tokens: int | None
    priority: int  # client hint, lower is more urgent (vLLM's convention)
    arrival: float
    arrival_unix: float
    client_wants_usage: bool = False  # stream_options.include_usage as the client sent it
    # The client's X-Request-Id (gRPC: request_id), if any: clients reuse ids, so it is never a key;
    # it is echoed back, logged and forwarded to the pod so both sides' logs correlate.
    client_request_id: str | None = None
    # Tracing headers (W3C traceparent, tracestate) passed on to the pod unchanged.
    trace_headers: dict[str, str] = field(default_factory=dict)
    prompt_is_text: bool = True  # False for a completions prompt of token ids
    client_allows_preemption: bool = True  # False: the client sent x-sagesched-preemptible: false
    tenant: str = ""  # who sent it (router.parse.tenant_of): tenant fairness shares the queue by it
    # --- predict -------------------------------------------------------------------------------
    distribution: "LengthDistribution | None" = None
    prediction_source: str = ""
    # --- enqueue / dispatch --------------------------------------------------------------------
    sched: "SchedRequest | None" = None
    dispatched: asyncio.Future | None = field(default=None, repr=False)
    enqueued_at: float = 0.0  # perf_counter when it entered the scheduler: the loop clock is too coarse
    pod: "PodEntry | None" = None
    dispatched_at: float | None = None
    # --- stream --------------------------------------------------------------------------------
    first_token_at: float | None = None
    finished_at: float | None = None
    output_tokens: int = 0  # counted while streaming, replaced by the pod's usage when reported
    usage: dict[str, int] | None = None
    finish_reason: str = ""
    status: int = 200
    # --- live preemption (router.continuation) ---------------------------------------------------
    progress: "Progress | None" = None  # set for preemptible requests: what the client has received
    preempted: bool = False  # the scheduler displaced it: the stream stops at its next event
    continuation: "Continuation | None" = None  # the run in progress resumes an earlier one
    preemptions: int = 0
    failovers: int = 0  # times it resumed elsewhere because its pod failed mid-stream
    failed_pods: set[str] = field(default_factory=set)  # pods that failed it (no health credit for them)

    @property
    def public_id(self) -> str:
        """The id the client knows this request by: its own if it sent one."""
        return self.client_request_id or self.id

    @property
    def queue_wait(self) -> float:
        return (self.dispatched_at or self.arrival) - self.arrival

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.arrival

    @property
    def ttlt(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.arrival
