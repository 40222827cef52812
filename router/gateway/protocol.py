"""The Endpoint Picker protocol of the Gateway API Inference Extension, as Envoy ext_proc messages.

Translation only: Envoy's protobufs in, domain values out, and back. The servicer decides nothing
here. Names of headers and metadata keys follow the protocol (v1.0): the picked endpoints travel both
as the `x-gateway-destination-endpoint` request header and as dynamic metadata under `envoy.lb`;
the data plane may restrict the choice with a subset hint and reports the endpoint that served.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

# The service's full name, also the gRPC health service Envoy checks before opening a stream.
EXT_PROC_SERVICE = ext_proc.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name
DESTINATION_HEADER = "x-gateway-destination-endpoint"
LB_NAMESPACE = "envoy.lb"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
SERVED_KEY = "x-gateway-destination-endpoint-served"
# Request headers of the reference picker that clients may already send.
OBJECTIVE_HEADERS = ("x-gateway-inference-objective", "x-llm-d-inference-objective")
FAIRNESS_HEADER = "x-gateway-inference-fairness-id"
PRIORITY_HEADER = "x-sagesched-priority"


class GatewayError(Exception):
    """A request the picker answers itself, with an HTTP status and an OpenAI-shaped body.

    Subclasses fix the status for the protocol's own refusals; the router's errors (queue full,
    unknown model, ...) keep their status, type, code and headers (Retry-After) through the keywords.
    """

    status = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, status: int | None = None, error_type: str | None = None,
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status or self.status
        self.error_type = error_type or self.error_type
        self.code = code
        self.param = param
        self.headers = headers or {}


class BadRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class Overloaded(GatewayError):
    status = 429
    error_type = "rate_limit_exceeded"


class NoEndpoint(GatewayError):
    status = 503
    error_type = "service_unavailable"


@dataclass
class GatewayRequest:
    """What the picker knows of an HTTP request once headers and body have arrived."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    json: dict = field(default_factory=dict)
    # False when Envoy forwards the response as the pod sent it (BUFFERED response mode): the
    # picker cannot hold back what the client did not ask for, so it must not ask for it.
    response_rewritable: bool = True

    @property
    def model(self) -> str:
        return str(self.json.get("model", ""))

    @property
    def stream(self) -> bool:
        return bool(self.json.get("stream", False))

    @property
    def objective(self) -> str:
        return next((self.headers[h] for h in OBJECTIVE_HEADERS if h in self.headers), "")

    @property
    def priority(self) -> int:
        raw = self.headers.get(PRIORITY_HEADER, "")
        try:
            return int(raw) if raw else int(self.json.get("priority", 0) or 0)
        except (TypeError, ValueError):
            raise BadRequest(f"priority must be an integer, got {raw or self.json.get('priority')!r}")


def header_map(headers: ext_proc.HttpHeaders) -> dict[str, str]:
    """Lower-cased header dict; Envoy sends values in `raw_value` (bytes) or `value`."""
    out: dict[str, str] = {}
    for h in headers.headers.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        out[h.key.lower()] = value
    return out


def parse_body(request: GatewayRequest) -> GatewayRequest:
    """Decode the JSON body of an inference request; requests without a body keep `json` empty."""
    if not request.body:
        return request
    try:
        decoded = json.loads(request.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise BadRequest("request body must be a JSON object")
    request.json = decoded
    return request


def _struct_list(metadata: base_pb2.Metadata, namespace: str, key: str) -> list[str] | None:
    if namespace not in metadata.filter_metadata:
        return None
    fields = metadata.filter_metadata[namespace].fields
    if key not in fields:
        return None
    value = fields[key]
    if value.HasField("list_value"):
        return [v.string_value for v in value.list_value.values]
    return [part for part in value.string_value.split(",") if part]


def subset_hint(request: ext_proc.ProcessingRequest) -> frozenset[str] | None:
    """Endpoints the data plane allows (None = the whole pool; empty set = none allowed)."""
    listed = _struct_list(request.metadata_context, SUBSET_NAMESPACE, SUBSET_KEY)
    return None if listed is None else frozenset(listed)


def served_endpoint(request: ext_proc.ProcessingRequest) -> str | None:
    """The endpoint that actually served (the proxy may have fallen back down our list)."""
    listed = _struct_list(request.metadata_context, LB_NAMESPACE, SERVED_KEY)
    return listed[0] if listed else None


# Responses are built in place, field by field: nested constructors and CopyFrom copy every level
# again, and a stream builds ~5 responses (Python protobuf construction is most of their cost).
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _set_headers_into(mutation: ext_proc.HeaderMutation, headers: dict[str, str]) -> ext_proc.HeaderMutation:
    for key, value in headers.items():
        option = mutation.set_headers.add()
        option.header.key = key
        option.header.raw_value = value.encode()
        option.append_action = _OVERWRITE
    return mutation


def _set_headers(headers: dict[str, str]) -> ext_proc.HeaderMutation:
    return _set_headers_into(ext_proc.HeaderMutation(), headers)


def strip_destination() -> ext_proc.CommonResponse:
    """A request the picker lets through unrouted: a destination the client sent must not lead it."""
    return ext_proc.CommonResponse(header_mutation=ext_proc.HeaderMutation(remove_headers=[DESTINATION_HEADER]))


def destination_mutation(endpoints: list[str], extra_headers: dict[str, str] | None = None
                         ) -> tuple[ext_proc.CommonResponse, struct_pb2.Struct]:
    """Header mutation and dynamic metadata carrying the same endpoint list (they must agree).
    `extra_headers` are set with it (content-length when the picker rewrote the body)."""
    value = ",".join(endpoints)
    common = ext_proc.CommonResponse(clear_route_cache=True)
    _set_headers_into(common.header_mutation, {DESTINATION_HEADER: value, **(extra_headers or {})})
    metadata = struct_pb2.Struct()
    metadata.fields[LB_NAMESPACE].struct_value.fields[DESTINATION_HEADER].string_value = value
    return common, metadata


def replace_body(common: ext_proc.CommonResponse, body: bytes) -> ext_proc.CommonResponse:
    """BUFFERED mode: the buffered request body Envoy sends upstream becomes `body`."""
    common.body_mutation.body = body
    return common


def immediate(error: GatewayError) -> ext_proc.ProcessingResponse:
    """Answer the client directly (no upstream), with an OpenAI-shaped error body."""
    body = json.dumps({"error": {"message": error.message, "type": error.error_type, "param": error.param,
                                 "code": error.code}}).encode()
    return ext_proc.ProcessingResponse(
        immediate_response=ext_proc.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=error.status),
            headers=_set_headers({"content-type": "application/json", **error.headers}),
            body=body,
            details=f"sagesched_{error.error_type}",
        )
    )


def _continue(phase: str, common: ext_proc.CommonResponse | None, metadata: struct_pb2.Struct | None
              ) -> ext_proc.ProcessingResponse:
    out = ext_proc.ProcessingResponse()
    target = getattr(out, phase).response
    if common is None:
        target.SetInParent()
    else:
        target.CopyFrom(common)
    if metadata:
        out.dynamic_metadata.CopyFrom(metadata)
    return out


def headers_continue(common: ext_proc.CommonResponse | None = None, *, response: bool = False,
                     metadata: struct_pb2.Struct | None = None) -> ext_proc.ProcessingResponse:
    """Let request (or response) headers through, optionally mutated."""
    return _continue("response_headers" if response else "request_headers", common, metadata)


def body_continue(common: ext_proc.CommonResponse | None = None, *, response: bool = False,
                  metadata: struct_pb2.Struct | None = None) -> ext_proc.ProcessingResponse:
    """Let a buffered/streamed body chunk through unchanged, optionally with header mutations."""
    return _continue("response_body" if response else "request_body", common, metadata)


def body_stream(chunk: bytes, end_of_stream: bool, *, response: bool = False) -> ext_proc.ProcessingResponse:
    """In FULL_DUPLEX_STREAMED mode the processor sends the body back itself, chunk by chunk."""
    out = ext_proc.ProcessingResponse()
    body = (out.response_body if response else out.request_body).response.body_mutation.streamed_response
    body.body = chunk
    body.end_of_stream = end_of_stream
    return out


# Answers that never vary, built once (a stream sends each of them once or more).
RESPONSE_HEADERS_CONTINUE = headers_continue(response=True)
RESPONSE_BODY_CONTINUE = body_continue(response=True)
REQUEST_TRAILERS_CONTINUE = ext_proc.ProcessingResponse(request_trailers=ext_proc.TrailersResponse())
RESPONSE_TRAILERS_CONTINUE = ext_proc.ProcessingResponse(response_trailers=ext_proc.TrailersResponse())
