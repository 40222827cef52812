"""Hostile and malformed input never makes the router answer 500, crash or hang: fuzzed with
hypothesis on the parsers, then over real sockets against a `sagesched router` process (HTTP and
gRPC) in front of an emulated pod process."""
from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sagesched.router.errors import RouterError
from sagesched.router.parse import parse_body, parse_request
from sagesched.router.proxy import upstream_body
from sagesched.router.request import Api
from sagesched.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.conftest import free_port, wait_for_port
from tests.reliability.conftest import MODEL, PodProcess, assert_openai_error

MAX_BODY = 64 * 1024
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
fields = {
    "model": st.sampled_from([MODEL, "", "nope"]) | json_values,
    "prompt": st.text(max_size=40) | json_values | st.lists(st.integers(), max_size=5),
    "messages": json_values | st.lists(st.fixed_dictionaries({"role": st.text(max_size=5)},
                                                            optional={"content": json_values}), max_size=3),
    "max_tokens": st.integers(min_value=-2**70, max_value=2**70) | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": json_values,
    "n": json_values, "priority": json_values, "temperature": json_values,
}
bodies = st.fixed_dictionaries({}, optional=fields) | json_values
raw_bodies = (bodies.map(lambda b: json.dumps(b).encode()) | st.binary(max_size=200)
              | st.integers(1, 100_000).map(lambda d: b"[" * d + b"]" * d))


@settings(max_examples=600, deadline=None)
@given(raw=raw_bodies, api=st.sampled_from(list(Api)))
def test_parsers_answer_any_bytes_with_a_request_or_a_client_error(raw: bytes, api: Api) -> None:
    try:
        req = parse_request(api, parse_body(raw), 0.0)
    except RouterError as err:
        assert 400 <= err.status < 500
        return
    json.dumps(upstream_body(req, _NoPriorityPod(), None))  # what goes to the pod is valid JSON too


class _NoPriorityPod:
    priority_mode = False


@pytest.fixture(scope="module")
def router_process() -> Iterator[tuple[int, int]]:
    """(HTTP port, gRPC port) of a real router process with a small body limit."""
    pod = PodProcess().start()
    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagesched", "router", "--backend", pod.url, "--host", "127.0.0.1", "--port",
         str(port), "--grpc-port", str(grpc_port), "--max-body-bytes", str(MAX_BODY), "--scrape-interval", "0.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=60)
        yield port, grpc_port
        assert proc.poll() is None, "the router process died"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        pod.kill()


def post(port: int, body: bytes, path: str = "/v1/completions") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # a hang fails the test
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=raw_bodies, path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
def test_http_api_never_answers_500_to_fuzzed_bodies(router_process, raw: bytes, path: str) -> None:
    status, body = post(router_process[0], raw, path)
    assert status < 500, body
    if status >= 400:
        assert_openai_error(json.loads(body))


@pytest.mark.parametrize("raw, status", [
    (b"x" * (MAX_BODY + 1), 413),
    (b"\xff\xfe" + b"\x80" * 100, 400),
    (b'{"model": "emu-model", "prompt": "\xc3\x28"}', 400),
    (b"[" * 60_000, 400),
    (b'{"model": "emu-model", "prompt": "hi", "max_tokens": -1}', 400),
    (b'{"model": "emu-model", "prompt": "hi", "max_tokens": 99999999999999999999}', 400),
    (b'{"model": "unknown", "prompt": "hi"}', 404),
    (b'"just a string"', 400),
])
def test_http_api_rejects_known_hostile_bodies_with_4xx(router_process, raw: bytes, status: int) -> None:
    got, body = post(router_process[0], raw)
    assert got == status, body
    assert_openai_error(json.loads(body))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.text(max_size=50) | bodies.map(json.dumps) | st.integers(1, 5000).map(lambda d: "[" * d),
       model=st.sampled_from([MODEL, "", "nope"]), max_tokens=st.integers(0, 2**32 - 1),
       chat=st.booleans())
def test_grpc_api_answers_fuzzed_requests_with_client_errors_only(router_process, extra: str, model: str,
                                                                  max_tokens: int, chat: bool) -> None:
    msg = router_pb2.GenerateRequest(model=model, extra_json=extra,
                                     params=common_pb2.RequestParams(max_tokens=max_tokens))
    if chat:
        msg.chat.messages.add(role="user", content="hi")
    else:
        msg.prompt = "hi"
    with grpc.insecure_channel(f"127.0.0.1:{router_process[1]}") as channel:
        try:
            router_pb2_grpc.RouterStub(channel).Generate(msg, timeout=30)
        except grpc.RpcError as err:
            assert err.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}, err.details()


def test_grpc_message_over_the_limit_is_refused(router_process) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{router_process[1]}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            router_pb2_grpc.RouterStub(channel).Generate(
                router_pb2.GenerateRequest(model=MODEL, prompt="x" * (MAX_BODY + 1)), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
