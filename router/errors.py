"""Errors the router answers with, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Every stage raises `RouterError`; the HTTP layer renders it as JSON with its status (and headers such
as Retry-After), the gRPC layer maps the status onto a gRPC code. `kind` labels
`sagesched_errors_total`.
"""
from __future__ import annotations

import json


class RouterError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


def bad_request(message: str, param: str | None = None) -> RouterError:
    return RouterError(400, message, kind="bad_request", param=param, code="invalid_request")


def unknown_model(model: str) -> RouterError:
    return RouterError(404, f"The model `{model}` does not exist.", kind="unknown_model",
                       type="NotFoundError", param="model", code="model_not_found")


def queue_full(model: str, retry_after_s: float) -> RouterError:
    seconds = max(1, int(round(retry_after_s)))
    return RouterError(429, f"Too many requests queued for model `{model}`; retry later.", kind="queue_full",
                       type="rate_limit_error", code="queue_full", headers={"Retry-After": str(seconds)})


def queue_timeout(waited_s: float) -> RouterError:
    return RouterError(504, f"Request waited {waited_s:.1f}s in the queue without a pod taking it.",
                       kind="queue_timeout", type="timeout_error", code="queue_timeout")


def no_pods(model: str) -> RouterError:
    return RouterError(503, f"No healthy pod serves model `{model}`.", kind="no_pods",
                       type="service_unavailable_error", code="no_pods")


def upstream_error(message: str, status: int = 502, kind: str = "upstream") -> RouterError:
    return RouterError(status, message, kind=kind, type="upstream_error", code="upstream_error")


def upstream_connection_error(message: str) -> RouterError:
    """The connection to the pod failed or broke (as opposed to the pod answering with an error)."""
    return upstream_error(message, kind="upstream_connection")


def pod_failed(status: int, body: bytes) -> RouterError:
    """A pod answered 5xx: the client gets 502 with the pod's message (bounded)."""
    return upstream_error(f"pod answered {status}: {body.decode(errors='replace')[:300]}")


def resume_refused(status: int, body: bytes) -> RouterError:
    """A pod refused a preempted request's continuation (its stream to the client is under way)."""
    return upstream_error(f"pod refused the continuation with {status}: {body.decode(errors='replace')[:300]}",
                          kind="resume_refused")


def upstream_timeout(message: str) -> RouterError:
    return RouterError(504, message, kind="upstream_timeout", type="timeout_error", code="upstream_timeout")


def internal_error(message: str) -> RouterError:
    return RouterError(500, message, kind="internal", type="internal_error", code="internal_error")
