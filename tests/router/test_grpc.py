"""gRPC sagesched.v1.Router: unary and streaming generation, admin state, health, reflection."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sagesched.v1 import common_pb2, router_pb2, router_pb2_grpc

from tests.router.conftest import MODEL

ADMIN_TOKEN = "test-admin-token"  # GetState is an admin call (tests/reliability covers its refusals)


@pytest.fixture
async def channel(pods, make_router):
    router = await make_router([p.base_url for p in pods], admin_token=ADMIN_TOKEN)
    async with grpc.aio.insecure_channel(router.grpc_target) as ch:
        yield ch


async def test_generate_unary_returns_text_usage_and_pod(channel):
    stub = router_pb2_grpc.RouterStub(channel)
    resp = await stub.Generate(router_pb2.GenerateRequest(
        request_id="r1", model=MODEL, prompt="hello", params=common_pb2.RequestParams(max_tokens=6, ignore_eos=True)))
    assert resp.text == " the of and to in a"
    assert resp.usage.completion_tokens == 6
    assert resp.finish_reason == "length"
    assert resp.pod and resp.request_id == "r1"


async def test_generate_stream_yields_tokens_then_a_closing_chunk(channel):
    stub = router_pb2_grpc.RouterStub(channel)
    chat = router_pb2.ChatMessages(messages=[router_pb2.ChatMessage(role="user", content="hi")])
    chunks = [c async for c in stub.GenerateStream(router_pb2.GenerateRequest(
        model=MODEL, chat=chat, params=common_pb2.RequestParams(max_tokens=4, ignore_eos=True)))]
    assert "".join(c.text for c in chunks) == " the of and to"
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 4


async def test_unknown_model_is_not_found(channel):
    stub = router_pb2_grpc.RouterStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Generate(router_pb2.GenerateRequest(model="nope", prompt="x"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_get_state_lists_pods_and_queues(channel):
    stub = router_pb2_grpc.RouterStub(channel)
    state = await stub.GetState(router_pb2.GetStateRequest(), metadata=[("authorization", f"Bearer {ADMIN_TOKEN}")])
    assert state.policy == "sagesched"
    assert len(state.pods) == 2 and all(p.healthy and MODEL in p.models for p in state.pods)
    assert [q.model for q in state.queues] == [MODEL]


async def test_health_and_reflection_are_served(channel):
    health = health_pb2_grpc.HealthStub(channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service="sagesched.v1.Router"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = [s.name async for r in call for s in r.list_services_response.service]
    assert "sagesched.v1.Router" in services
