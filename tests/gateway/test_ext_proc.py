"""The Endpoint Picker over ext_proc, driven like Envoy drives it, against the router's real request
path and real emulated pods."""
from __future__ import annotations

import json

import aiohttp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sagesched.router.settings import Backend

from tests.gateway.conftest import DESTINATION, MODEL, EnvoyStream, Mode, destination, endpoint, recorded, until

BODY = {"model": MODEL, "prompt": "hello there, gateway", "max_tokens": 6, "stream": True, "ignore_eos": True}


async def pod_answer(pod_endpoint: str, path: str, body: bytes) -> tuple[str, bytes]:
    """What the pod really answers to the body the picker told Envoy to send (content type, bytes)."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{pod_endpoint}{path}", data=body,
                                headers={"content-type": "application/json"}) as resp:
            assert resp.status == 200
            return resp.headers["content-type"], await resp.read()


def pod_of(server, ep: str):
    return next(e for e in server.router.pods.pods.values() if e.base_url.endswith(ep))


async def test_full_duplex_chunked_request_is_routed_and_streamed_answer_released_and_recorded(
        pods, make_gateway, envoy_channel):
    server = await make_gateway([Backend(url=p.base_url) for p in pods])
    stream = EnvoyStream(envoy_channel(server))
    await stream.request_headers()
    await stream.request_body(json.dumps(BODY).encode(), chunks=3)

    headers_response = await stream.read()
    header, meta = destination(headers_response, "request_headers")
    assert header == meta
    assert sorted(header) == sorted(endpoint(p) for p in pods)  # the pick, then the other pod as fallback
    body_response = await stream.read()
    forwarded = body_response.request_body.response.body_mutation.streamed_response
    assert forwarded.end_of_stream
    sent = json.loads(forwarded.body)
    assert sent["stream_options"] == {"include_usage": True} and "priority" not in sent
    lengths = {h.header.key: h.header.raw_value for h in headers_response.request_headers.response.header_mutation.set_headers}
    assert lengths["content-length"] == str(len(forwarded.body)).encode()
    picked = pod_of(server, header[0])
    assert len(picked.inflight) == 1

    content_type, raw = await pod_answer(header[0], "/v1/completions", forwarded.body)
    await stream.response_headers(content_type=content_type, served=header[0])
    assert (await stream.read()).HasField("response_headers")
    relayed = b""
    cut = len(raw) // 3
    for i, chunk in enumerate((raw[:cut], raw[cut:2 * cut], raw[2 * cut:])):
        await stream.response_body(chunk, end_of_stream=i == 2)
        while True:  # a chunk that ends inside an event is held until the rest arrives
            out = (await stream.read()).response_body.response.body_mutation.streamed_response
            relayed += out.body
            if out.end_of_stream or relayed.endswith(b"\n\n"):
                break
    await stream.call.done_writing()

    assert not picked.inflight
    texts = [json.loads(e[6:])["choices"][0]["text"] for e in relayed.split(b"\n\n") if e.startswith(b"data: {")]
    assert len(texts) == 6 and b"[DONE]" in relayed
    assert b'"usage"' not in relayed  # the router asked for usage; the client did not
    records = await recorded(server)
    assert [(r.output_tokens, r.finish_reason, r.pod) for r in records] == [(6, "length", picked.name)]


async def test_buffered_mode_answers_the_body_with_the_pick_and_counts_usage(pods, make_gateway, envoy_channel):
    server = await make_gateway([Backend(url=p.base_url) for p in pods])
    stream = EnvoyStream(envoy_channel(server))
    await stream.request_headers(mode=Mode.BUFFERED)
    assert list((await stream.read()).request_headers.response.header_mutation.remove_headers) == [DESTINATION]
    await stream.request_body(json.dumps({**BODY, "stream": False}).encode())
    response = await stream.read()
    header, meta = destination(response, "request_body")
    assert header == meta
    assert sorted(header) == sorted(endpoint(p) for p in pods)  # the pick, then the other pod as fallback
    picked = pod_of(server, header[0])
    assert len(picked.inflight) == 1
    # Nothing to add for a non-streaming request to an FCFS pod: no body mutation, so Envoy forwards
    # the buffered body exactly as the client sent it, and that is what the pod gets here.
    assert not response.request_body.response.HasField("body_mutation")
    original = json.dumps({**BODY, "stream": False}).encode()

    content_type, raw = await pod_answer(header[0], "/v1/completions", original)
    await stream.response_headers(content_type=content_type)
    assert (await stream.read()).HasField("response_headers")
    await stream.response_body(raw[:10], end_of_stream=False)
    await stream.response_body(raw[10:], end_of_stream=True)
    assert (await stream.read()).HasField("response_body") and (await stream.read()).HasField("response_body")
    await stream.call.done_writing()
    await until(lambda: not picked.inflight)
    # the usage comes from the pod's buffered JSON answer (max_tokens 6 with ignore_eos: 6, "length"),
    # recorded once, against the picked pod
    records = await recorded(server)
    assert [(r.output_tokens, r.finish_reason, r.pod) for r in records] == [(6, "length", picked.name)]


async def test_subset_hint_restricts_the_pick_and_its_fallbacks(pods, make_gateway, envoy_channel):
    server = await make_gateway([Backend(url=p.base_url) for p in pods])
    only = endpoint(pods[1])
    for _ in range(3):
        stream = EnvoyStream(envoy_channel(server))
        await stream.request_headers(subset=[only])
        await stream.request_body(json.dumps(BODY).encode())
        header, meta = destination(await stream.read(), "request_headers")
        assert header == meta == [only]
        stream.call.cancel()


async def test_empty_subset_is_503(pods, make_gateway, envoy_channel):
    server = await make_gateway([Backend(url=p.base_url) for p in pods])
    stream = EnvoyStream(envoy_channel(server))
    await stream.request_headers(subset=[])
    await stream.request_body(json.dumps(BODY).encode())
    answer = (await stream.read()).immediate_response
    assert answer.status.code == 503 and json.loads(answer.body)["error"]["code"] == "no_pods"


async def test_full_queue_is_429_with_openai_error_and_retry_after(pods, make_gateway, envoy_channel):
    server = await make_gateway([Backend(url=p.base_url) for p in pods], max_queue_per_model=0)
    stream = EnvoyStream(envoy_channel(server))
    await stream.request_headers()
    await stream.request_body(json.dumps(BODY).encode(), chunks=2)
    answer = (await stream.read()).immediate_response
    error = json.loads(answer.body)["error"]
    assert answer.status.code == 429
    assert error["type"] == "rate_limit_error" and error["code"] == "queue_full" and error["message"]
    sent = {h.header.key: h.header.raw_value.decode() for h in answer.headers.set_headers}
    assert sent["content-type"] == "application/json" and sent["Retry-After"] == "1"


async def test_no_ready_endpoint_is_503_and_readiness_not_serving(make_gateway, envoy_channel):
    from tests.conftest import free_port

    dead = Backend(url=f"http://127.0.0.1:{free_port()}", models=[MODEL])
    server = await make_gateway([dead], wait_for_pods=0.1)
    channel = envoy_channel(server)
    stream = EnvoyStream(channel)
    await stream.request_headers()
    await stream.request_body(json.dumps(BODY).encode())
    assert (await stream.read()).immediate_response.status.code == 503
    health = health_pb2_grpc.HealthStub(channel)
    for service, expected in (("liveness", health_pb2.HealthCheckResponse.SERVING),
                              ("readiness", health_pb2.HealthCheckResponse.NOT_SERVING),
                              ("envoy.service.ext_proc.v3.ExternalProcessor", health_pb2.HealthCheckResponse.NOT_SERVING)):
        assert (await health.Check(health_pb2.HealthCheckRequest(service=service))).status == expected


async def test_health_serves_liveness_readiness_and_ext_proc_when_pods_are_known(pods, make_gateway, envoy_channel):
    server = await make_gateway([Backend(url=p.base_url) for p in pods])
    health = health_pb2_grpc.HealthStub(envoy_channel(server))
    for service in ("liveness", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_malformed_json_is_400(pods, make_gateway, envoy_channel):
    server = await make_gateway([Backend(url=p.base_url) for p in pods])
    stream = EnvoyStream(envoy_channel(server))
    await stream.request_headers()
    await stream.request_body(b'{"model": "emu-model", "prompt": ', chunks=2)
    answer = (await stream.read()).immediate_response
    assert answer.status.code == 400 and json.loads(answer.body)["error"]["type"] == "invalid_request_error"


async def test_client_gone_mid_stream_releases_the_pod_and_records_an_abort(pods, make_gateway, envoy_channel):
    server = await make_gateway([Backend(url=p.base_url) for p in pods])
    stream = EnvoyStream(envoy_channel(server))
    await stream.request_headers()
    await stream.request_body(json.dumps(BODY).encode())
    header, _ = destination(await stream.read(), "request_headers")
    forwarded = (await stream.read()).request_body.response.body_mutation.streamed_response.body
    _, raw = await pod_answer(header[0], "/v1/completions", forwarded)
    await stream.response_headers()
    await stream.read()
    await stream.response_body(raw[:raw.index(b"\n\n") + 2], end_of_stream=False)
    await stream.read()
    picked = pod_of(server, header[0])
    assert len(picked.inflight) == 1
    stream.call.cancel()
    await until(lambda: not picked.inflight)
    records = await recorded(server)
    assert records[0].finish_reason == "abort" and records[0].output_tokens == 1


async def test_non_inference_path_is_routed_without_queueing(pods, make_gateway, envoy_channel):
    server = await make_gateway([Backend(url=p.base_url) for p in pods])
    stream = EnvoyStream(envoy_channel(server))
    await stream.request_headers("/v1/models", method="GET", end_of_stream=True)
    header, meta = destination(await stream.read(), "request_headers")
    assert header == meta and set(header) == {endpoint(p) for p in pods}
    stream.call.cancel()


async def test_failing_open_strips_a_destination_the_client_sent_in_both_body_modes(
        pods, make_gateway, envoy_channel, monkeypatch):
    server = await make_gateway([Backend(url=p.base_url) for p in pods], ext_proc_fail_open=True)

    async def broken(*_args):
        raise RuntimeError("picker bug")

    monkeypatch.setattr(server._ext_proc.picker.backend, "pick", broken)
    forged = {DESTINATION: "10.9.9.9:8000"}
    stream = EnvoyStream(envoy_channel(server))
    await stream.request_headers(extra=forged)
    await stream.request_body(json.dumps(BODY).encode())
    assert list((await stream.read()).request_headers.response.header_mutation.remove_headers) == [DESTINATION]

    stream = EnvoyStream(envoy_channel(server))
    await stream.request_headers(extra=forged, mode=Mode.BUFFERED)
    assert list((await stream.read()).request_headers.response.header_mutation.remove_headers) == [DESTINATION]
    await stream.request_body(json.dumps(BODY).encode())
    assert list((await stream.read()).request_body.response.header_mutation.remove_headers) == [DESTINATION]


async def test_buffered_response_mode_asks_the_pod_for_no_usage_the_client_did_not(
        pods, make_gateway, envoy_channel):
    server = await make_gateway([Backend(url=p.base_url) for p in pods])
    stream = EnvoyStream(envoy_channel(server))
    await stream.request_headers(mode=Mode.BUFFERED)
    await stream.read()
    posted = json.dumps({**BODY, "stream_options": {"continuous_usage_stats": False}}).encode()
    await stream.request_body(posted)
    sent = json.loads((await stream.read()).request_body.response.body_mutation.body or posted)
    assert sent["stream_options"] == {"continuous_usage_stats": False}
    stream.call.cancel()
