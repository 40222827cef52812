"""Accounting of a response that Envoy streams past the picker, by the router's own accounting.

Standalone mode reads the pod's answer itself (`router.proxy.Upstream`); in gateway mode the same
bytes arrive as ext_proc response-body messages. This meter cuts them into the same units (SSE
events, or the whole body of a non-streaming answer) and hands them to `Upstream.accounted` /
`Upstream.account_unary`, so tokens, first-token time, usage and finish reason are counted exactly
as in standalone mode, and events the client did not ask for (the usage chunk the router requested
on its behalf) are held back the same way.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sagesched.router.proxy import Upstream, split_events
from sagesched.router.request import LiveRequest


@dataclass
class ResponseMeter:
    req: LiveRequest
    now: Callable[[], float]
    on_token: Callable[[], None]
    streaming: bool = True
    _buffer: bytes = b""

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """Consume response bytes; the bytes to forward to the client now."""
        self._buffer += chunk
        if not self.streaming:
            if end_of_stream:
                Upstream.account_unary(self.req, self._buffer)
            return chunk
        events, self._buffer = split_events(self._buffer)
        if end_of_stream and self._buffer.strip():
            events.append(self._buffer)
            self._buffer = b""
        # The stream's last events: the release that follows tells the scheduler everything a
        # progress report would (a short answer often arrives whole, [DONE] included).
        ending = end_of_stream or (bool(events) and events[-1].startswith(_DONE))
        return b"".join(Upstream.accounted(self.req, events, None, self.now, _nothing if ending else self.on_token))


_DONE = b"data: [DONE]"


def _nothing() -> None:
    pass
