"""One request as the engine model sees it: the lengths it will have, and the progress it makes.

The length a request *will* generate (`output_tokens`) is an input: the emulator draws it, the
simulator reads it from a trace. Everything below "engine-managed" is written only by `Engine`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason:
    """vLLM's `finished_reason` label values."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(eq=False)  # identity semantics: the engine keys dicts by request object
class EngineRequest:
    request_id: str
    prompt_tokens: int
    output_tokens: int
    max_tokens: int | None = None  # None: only the context window caps the output
    priority: int = 0  # lower is served first (vLLM convention)
    arrival: float = 0.0
    # prefix-cache identity: a continuation carries its original's key and finds its blocks
    cache_key: str | None = None
    previously_computed: int = 0  # prompt tokens an earlier run of it had computed (recompute debt)

    # --- engine-managed ---------------------------------------------------------------------------
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose KV is cached; 0 again after a preemption
    generated: int = 0
    num_blocks: int = 0
    num_preemptions: int = 0
    limit: int = 0  # tokens it will generate: min(output_tokens, max_tokens, context room)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finish_time: float | None = None
    finish_reason: str | None = None
    _seq: int = field(default=0, repr=False)  # admission order, breaks priority ties stably

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens: what a (re)computation must have cached to sample next."""
        return self.prompt_tokens + self.generated

    @property
    def is_decoding(self) -> bool:
        """True when its next iteration is a single decode token (prefill, incl. recompute, done)."""
        return self.generated > 0 and self.num_computed_tokens == self.num_tokens - 1

    @property
    def queue_time(self) -> float | None:
        return None if self.first_scheduled_time is None else self.first_scheduled_time - self.arrival

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival

    @property
    def e2e(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival
