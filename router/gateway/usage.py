"""Accounting of a response that Envoy streams past the picker, by the router's own accounting.

Standalone mode reads the pod's answer itself (`router.proxy.Upstream`); in gateway mode the same
bytes arrive as ext_proc response-body messages. This meter cuts them into the same units (SSE
events, or the whole body of a non-streaming answer) and hands each to `Upstream.account` /
`Upstream.account_unary`, so tokens, first-token time, usage and finish reason are counted exactly
as in standalone mode, and events the client did not ask for (the usage chunk the router requested
on its behalf) are held back the same way.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sagesched.router.proxy import Upstream
from sagesched.router.request import LiveRequest


@dataclass
class ResponseMeter:
    req: LiveRequest
    now: Callable[[], float]
    on_token: Callable[[], None]
    streaming: bool = True
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """Consume response bytes; the bytes to forward to the client now."""
        self._buffer.extend(chunk)
        if not self.streaming:
            if end_of_stream:
                Upstream.account_unary(self.req, bytes(self._buffer))
            return chunk
        out = bytearray()
        start = 0
        while (end := self._buffer.find(b"\n\n", start)) >= 0:
            self._forward(bytes(self._buffer[start:end + 2]), out)
            start = end + 2
        del self._buffer[:start]
        if end_of_stream and self._buffer.strip():
            self._forward(bytes(self._buffer), out)
            self._buffer.clear()
        return bytes(out)

    def _forward(self, event: bytes, out: bytearray) -> None:
        if Upstream.account(self.req, event, self.now, self.on_token):
            out.extend(event)
