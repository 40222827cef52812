"""Stage 1, parse: OpenAI JSON (or a gRPC GenerateRequest turned into the same dict) → LiveRequest.

The hot path never tokenises: prompt length is estimated from characters (≈4 per token for English
BPE vocabularies); the pod's usage report gives the true count afterwards.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from sagesched.router.continuation import PREEMPTIBLE_HEADER
from sagesched.router.errors import bad_request
from sagesched.router.request import Api, LiveRequest
from sagesched.scheduling.config import DEFAULT_TENANT_HEADER

CHARS_PER_TOKEN = 4
# Chat templates add a few tokens of framing per message.
TOKENS_PER_MESSAGE = 4
# Counts and priorities beyond int32 mean nothing to any engine and overflow numpy and C longs.
MAX_INT = 2**31 - 1
REQUEST_ID_HEADER = "x-request-id"
# W3C trace context: passed to the pod unchanged so its spans join the client's trace.
TRACE_HEADERS = ("traceparent", "tracestate")
# A client's request id goes into the pod's request headers and our logs: visible ASCII, bounded.
_CLIENT_ID = re.compile(r"[\x21-\x7e]{1,256}")
# A tenant named by a header: visible ASCII, bounded (it keys the fairness counters).
_TENANT = re.compile(r"[\x21-\x7e]{1,128}")
API_KEY_TENANT = "key-"  # + 16 hex digits of the SHA-256 of the client's API key


def estimate_tokens(chars: int) -> int:
    return max(1, (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(t for p in content if isinstance(p, dict) and isinstance(t := p.get("text"), str))
    return ""


def _int_field(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        raise bad_request(f"`{name}` must be an integer from 0 to {MAX_INT}", param=name)
    return value


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"Request body is not valid JSON: {exc}") from None
    except RecursionError:  # hostile nesting: the decoder recurses once per level
        raise bad_request("Request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    return body


def _client_request_id(value: str | None) -> str | None:
    if not value:
        return None
    if not _CLIENT_ID.fullmatch(value):
        raise bad_request("the request id must be 1-256 visible ASCII characters", param="request_id")
    return value


def tenant_of(headers: Mapping[str, str], tenant_header: str = DEFAULT_TENANT_HEADER) -> str:
    """Who sent the request, for tenant fairness: the tenant header if present (a gateway that
    authenticated the client sets it), else the client's API key hashed — the key itself is never
    kept or logged —, else "" (anonymous)."""
    named = headers.get(tenant_header.lower())
    if named:
        if not _TENANT.fullmatch(named):
            raise bad_request(f"the {tenant_header} header must be 1-128 visible ASCII characters")
        return named
    scheme, _, key = str(headers.get("authorization", "")).strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return ""
    return API_KEY_TENANT + hashlib.sha256(key.strip().encode()).hexdigest()[:16]


def parse_request(api: Api, body: dict[str, Any], now: float,
                  headers: Mapping[str, str] | None = None, tenant_header: str = DEFAULT_TENANT_HEADER) -> LiveRequest:
    """Validate what the router itself needs; everything else passes through to the pod.

    `headers` (lower-case names, or a case-insensitive mapping) may carry the client's
    X-Request-Id, trace context and tenant (`tenant_of`); the request always gets its own unique
    id, because clients reuse theirs and the scheduler's bookkeeping is keyed by it."""
    headers = headers or {}
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("`model` is required", param="model")
    if api is Api.CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("`messages` must be a non-empty list", param="messages")
        if not all(isinstance(m, dict) and "role" in m for m in messages):
            raise bad_request("each message needs a `role`", param="messages")
        text = "\n".join(_content_text(m.get("content")) for m in messages)
        prompt_tokens = estimate_tokens(len(text)) + TOKENS_PER_MESSAGE * len(messages)
        max_tokens = _int_field(body, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            text, prompt_tokens = prompt, estimate_tokens(len(prompt))
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            text, prompt_tokens = "", len(prompt)  # token ids: the length is exact
        else:
            raise bad_request("`prompt` must be a string or a list of token ids (batched prompts are not routed)",
                              param="prompt")
        max_tokens = _int_field(body, "max_tokens")
    # OpenAI's API treats null as "not given" for these; so do its clients.
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("`stream` must be a boolean", param="stream")
    if body.get("n") not in (None, 1):
        raise bad_request("only n=1 is supported", param="n")
    priority = body.get("priority")
    if priority is None:
        priority = 0
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > MAX_INT:
        raise bad_request(f"`priority` must be an integer within ±{MAX_INT}", param="priority")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("`stream_options` must be an object", param="stream_options")
    return LiveRequest(
        id=f"req-{uuid.uuid4().hex}",
        api=api,
        model=model,
        body=body,
        stream=stream,
        prompt_text=text,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        priority=priority,
        arrival=now,
        arrival_unix=time.time(),
        client_wants_usage=bool(options.get("include_usage")),
        client_request_id=_client_request_id(headers.get(REQUEST_ID_HEADER)),
        trace_headers={h: v for h in TRACE_HEADERS if (v := headers.get(h))},
        prompt_is_text=api is Api.CHAT or bool(text),
        client_allows_preemption=str(headers.get(PREEMPTIBLE_HEADER, "")).lower() != "false",
        tenant=tenant_of(headers, tenant_header),
    )
