"""Envoy ext_proc servicer: SageSched as the Endpoint Picker of a Gateway API inference gateway.

Envoy opens one ext_proc stream per HTTP request. The exchange below holds the request while it
waits in SageSched's queue (the same queue, policy and picker as standalone mode, behind
`GatewayBackend`), answers with the chosen endpoint and its fallbacks, then watches the response
stream to keep in-flight accounting and the completion history true. Envoy carries the bytes.

Body modes: FULL_DUPLEX_STREAMED (what the protocol requires; the picker holds the headers until the
body is complete, then sends headers and the body back itself) and BUFFERED (the picker answers
the buffered body with the header mutation). The mode comes from the stream's ProtocolConfiguration
when Envoy sends one, else from the server's setting, which must match Envoy's processing_mode.
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from sagesched.router.gateway import protocol
from sagesched.router.gateway.protocol import GatewayError, GatewayRequest

log = logging.getLogger(__name__)

FULL_DUPLEX = processing_mode_pb2.ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = processing_mode_pb2.ProcessingMode.BUFFERED


class Ticket(Protocol):
    """A picked request as the servicer sees it."""

    endpoints: list[str]  # first choice, then fallbacks
    body: bytes  # the request body to send upstream (the scheduler's additions included)


class GatewayBackend(Protocol):
    """The scheduling side of gateway mode (implemented over the router's request path)."""

    async def pick(self, request: GatewayRequest, subset: frozenset[str] | None) -> Ticket:
        """Wait in the queue until the policy dispatches; return a ticket with `.endpoints`
        (first choice, then fallbacks). Raises GatewayError (400, 404, 429, 503, 504)."""

    def served(self, ticket: Ticket, endpoint: str | None, status: int, content_type: str) -> None:
        """The response started; `endpoint` is the one that actually served."""

    def response_body(self, ticket: Ticket, chunk: bytes, end_of_stream: bool) -> bytes:
        """Account a chunk of the response; the bytes the client should get in its place."""

    def finish(self, ticket: Ticket, ok: bool) -> None:
        """The exchange ended (completed, failed, or the client went away)."""


@dataclass
class GatewaySettings:
    request_body_mode: int = FULL_DUPLEX
    response_body_mode: int = FULL_DUPLEX
    # On an unexpected internal error: True lets the request through unrouted (Envoy's own load
    # balancing decides), False answers 503. Pair it with Envoy's `failure_mode_allow`.
    fail_open: bool = False


@dataclass
class _Exchange:
    """One HTTP request's ext_proc stream."""

    backend: GatewayBackend
    settings: GatewaySettings
    request: GatewayRequest | None = None
    subset: frozenset[str] | None = None
    body: bytearray = field(default_factory=bytearray)
    ticket: Ticket | None = None
    done: bool = False  # the backend has nothing more to learn about this request
    answered: bool = False  # an immediate response went out: Envoy sends nothing more
    request_mode: int = FULL_DUPLEX
    response_mode: int = FULL_DUPLEX

    def __post_init__(self) -> None:
        self.request_mode = self.settings.request_body_mode
        self.response_mode = self.settings.response_body_mode

    async def handle(self, message: ext_proc.ProcessingRequest) -> list[ext_proc.ProcessingResponse]:
        kind = message.WhichOneof("request")
        if message.HasField("protocol_config"):
            self.request_mode = message.protocol_config.request_body_mode or self.request_mode
            self.response_mode = message.protocol_config.response_body_mode or self.response_mode
        handler = _HANDLERS.get(kind)
        if handler is None:
            return []
        return await handler(self, message)

    async def _on_request_headers(self, message: ext_proc.ProcessingRequest) -> list[ext_proc.ProcessingResponse]:
        headers = protocol.header_map(message.request_headers)
        self.request = GatewayRequest(
            method=headers.get(":method", "POST"), path=headers.get(":path", "/"), headers=headers,
            response_rewritable=self.response_mode == FULL_DUPLEX,
        )
        self.subset = protocol.subset_hint(message)
        if message.request_headers.end_of_stream:
            return await self._route(headers_phase=True)
        # BUFFERED: the headers go on now; the body's answer sets the destination, or none.
        return [] if self.request_mode == FULL_DUPLEX else [protocol.headers_continue(protocol.strip_destination())]

    async def _on_request_body(self, message: ext_proc.ProcessingRequest) -> list[ext_proc.ProcessingResponse]:
        self.body.extend(message.request_body.body)
        if not message.request_body.end_of_stream:
            return []
        return await self._route(headers_phase=self.request_mode == FULL_DUPLEX)

    async def _route(self, headers_phase: bool) -> list[ext_proc.ProcessingResponse]:
        """Pick the endpoint (waiting in our queue) and answer in the phase Envoy expects."""
        assert self.request is not None
        self.request.body = bytes(self.body)
        try:
            self.ticket = ticket = await self.backend.pick(protocol.parse_body(self.request), self.subset)
        except GatewayError as err:
            self.done = self.answered = True
            return [protocol.immediate(err)]
        except Exception:  # noqa: BLE001 - the gateway must answer whatever went wrong
            log.exception("endpoint picking failed")
            self.done = True
            if self.settings.fail_open:
                return self._pass_through(headers_phase)
            self.answered = True
            return [protocol.immediate(protocol.NoEndpoint("endpoint picker internal error"))]
        # The body may have grown (usage reporting, engine priority): its length must follow.
        changed = ticket.body != self.request.body
        extra = {"content-length": str(len(ticket.body))} if changed else None
        common, metadata = protocol.destination_mutation(list(ticket.endpoints), extra)
        if not headers_phase:
            if changed:
                protocol.replace_body(common, ticket.body)
            return [protocol.body_continue(common, metadata=metadata)]
        out = [protocol.headers_continue(common, metadata=metadata)]
        if ticket.body:
            out.append(protocol.body_stream(ticket.body, True))
        return out

    def _pass_through(self, headers_phase: bool) -> list[ext_proc.ProcessingResponse]:
        """Fail open: Envoy's own balancing over the pool picks, never the client's header."""
        if not headers_phase:
            return [protocol.body_continue(protocol.strip_destination())]
        out = [protocol.headers_continue(protocol.strip_destination())]
        if self.body:
            out.append(protocol.body_stream(bytes(self.body), True))
        return out

    async def _on_response_headers(self, message: ext_proc.ProcessingRequest) -> list[ext_proc.ProcessingResponse]:
        headers = protocol.header_map(message.response_headers)
        status = int(headers.get(":status", "200") or 200)
        if self.ticket is not None and not self.done:
            self.backend.served(self.ticket, protocol.served_endpoint(message), status,
                                headers.get("content-type", ""))
            if status >= 400 or message.response_headers.end_of_stream:
                self._finish(ok=status < 400 and message.response_headers.end_of_stream)
        return [protocol.RESPONSE_HEADERS_CONTINUE]

    async def _on_response_body(self, message: ext_proc.ProcessingRequest) -> list[ext_proc.ProcessingResponse]:
        chunk, eos = message.response_body.body, message.response_body.end_of_stream
        if self.ticket is not None and not self.done:
            chunk = self.backend.response_body(self.ticket, chunk, eos)
            if eos:
                self._finish(ok=True)
        if self.response_mode != FULL_DUPLEX:  # Envoy forwards its own bytes; nothing can be held back
            return [protocol.RESPONSE_BODY_CONTINUE]
        if not chunk and not eos:
            return []  # a partial event: it goes out with the rest of it
        return [protocol.body_stream(chunk, eos, response=True)]

    async def _on_request_trailers(self, message: ext_proc.ProcessingRequest) -> list[ext_proc.ProcessingResponse]:
        """A body that ends in trailers never says end_of_stream: the trailers complete it."""
        out = []
        if self.request is not None and self.ticket is None and not self.done:
            out = await self._route(headers_phase=self.request_mode == FULL_DUPLEX)
        if not self.answered:
            out.append(protocol.REQUEST_TRAILERS_CONTINUE)
        return out

    async def _on_response_trailers(self, message: ext_proc.ProcessingRequest) -> list[ext_proc.ProcessingResponse]:
        return [protocol.RESPONSE_TRAILERS_CONTINUE]

    def _finish(self, ok: bool) -> None:
        if self.ticket is not None and not self.done:
            self.done = True
            self.backend.finish(self.ticket, ok)

    def close(self) -> None:
        """The stream ended before the response did: the client or Envoy went away."""
        self._finish(ok=False)


_HANDLERS = {kind: getattr(_Exchange, f"_on_{kind}") for kind in (
    "request_headers", "request_body", "request_trailers", "response_headers", "response_body", "response_trailers")}


class EndpointPicker(ext_proc_grpc.ExternalProcessorServicer):
    """Thin servicer: one `_Exchange` per stream."""

    def __init__(self, backend: GatewayBackend, settings: GatewaySettings | None = None) -> None:
        self.backend = backend
        self.settings = settings or GatewaySettings()
        # (phase, seconds) of every message handled, kept only when a benchmark sets a list here;
        # phase "decision" is the message that completed the request and got the endpoint.
        self.timings: list[tuple[str, float]] | None = None

    async def Process(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[ext_proc.ProcessingRequest], context: Any
    ) -> None:
        # context.read/write rather than grpc.aio's async-iterator and generator adapters: one layer
        # less on each of a stream's ~11 messages (bench/results/gateway: gRPC is most of the cost).
        exchange = _Exchange(self.backend, self.settings)
        read, write = context.read, context.write
        try:
            while (message := await read()) is not grpc.aio.EOF:
                if self.timings is None:
                    responses = await exchange.handle(message)
                else:
                    responses = await self._timed(exchange, message)
                for response in responses:
                    await write(response)
                if exchange.answered:
                    return  # answered immediately: Envoy sends nothing more on this stream
        finally:
            exchange.close()

    async def _timed(self, exchange: _Exchange, message: ext_proc.ProcessingRequest
                     ) -> list[ext_proc.ProcessingResponse]:
        assert self.timings is not None
        routed = exchange.ticket is not None or exchange.done
        t0 = time.perf_counter()
        responses = await exchange.handle(message)
        elapsed = time.perf_counter() - t0
        decided = not routed and (exchange.ticket is not None or exchange.done)
        self.timings.append(("decision" if decided else message.WhichOneof("request"), elapsed))
        return responses
