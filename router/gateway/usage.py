"""Counting output tokens in an OpenAI-style response as it streams past.

Streaming responses are Server-Sent Events: each `data:` event with generated text carries one
engine step's tokens (one token per event for vLLM's default stream interval); a final event may
carry exact `usage`. Non-streaming responses carry `usage` in the JSON body. Usage, when present,
wins over the count.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class ResponseMeter:
    streaming: bool = True
    tokens: int = 0
    _buffer: bytearray = field(default_factory=bytearray)
    _usage: dict | None = None

    def feed(self, chunk: bytes) -> bool:
        """Consume response bytes; True when the token count moved."""
        self._buffer.extend(chunk)
        if not self.streaming:
            return False
        before = self.tokens
        while (end := self._buffer.find(b"\n\n")) >= 0:
            event = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._on_event(event)
        return self.tokens != before

    def _on_event(self, event: bytes) -> None:
        for line in event.splitlines():
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            try:
                payload = json.loads(line[5:])
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(payload.get("usage"), dict):
                self._usage = payload["usage"]
            if any(_choice_text(c) for c in payload.get("choices") or ()):
                self.tokens += 1

    def usage(self) -> dict | None:
        """Exact usage when the server reported it, else the streamed count."""
        if not self.streaming and self._buffer:
            try:
                usage = json.loads(bytes(self._buffer)).get("usage")
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                usage = None
            if isinstance(usage, dict):
                self._usage = usage
        if self._usage is not None:
            self.tokens = int(self._usage.get("completion_tokens", self.tokens))
            return self._usage
        return {"completion_tokens": self.tokens} if self.streaming and self.tokens else None


def _choice_text(choice: dict) -> str:
    """Generated text of one streamed choice (chat `delta.content` or completion `text`)."""
    delta = choice.get("delta") or {}
    return delta.get("content") or choice.get("text") or ""
