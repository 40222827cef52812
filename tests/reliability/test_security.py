"""Access and transport: the admin call needs a token (and is off without one), HTTP and gRPC
serve TLS with a certificate made here, and secrets never reach the logs."""
from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx2 as httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sagesched.v1 import router_pb2, router_pb2_grpc
from tests.conftest import free_port, wait_for_port
from tests.reliability.conftest import MODEL

TOKEN = "s3cret-admin-token"


@pytest.mark.parametrize("configured, presented, code", [
    (None, None, grpc.StatusCode.PERMISSION_DENIED),
    (None, f"Bearer {TOKEN}", grpc.StatusCode.PERMISSION_DENIED),
    (TOKEN, None, grpc.StatusCode.UNAUTHENTICATED),
    (TOKEN, "Bearer wrong", grpc.StatusCode.UNAUTHENTICATED),
    (TOKEN, f"Bearer {TOKEN}", grpc.StatusCode.OK),
])
async def test_get_state_is_an_admin_call(pod_processes, make_router, configured, presented, code) -> None:
    router = await make_router([pod_processes().url], admin_token=configured)
    metadata = [("authorization", presented)] if presented else None
    async with grpc.aio.insecure_channel(router.grpc_target) as channel:
        try:
            state = await router_pb2_grpc.RouterStub(channel).GetState(router_pb2.GetStateRequest(), metadata=metadata)
            got = grpc.StatusCode.OK
            assert len(state.pods) == 1
        except grpc.aio.AioRpcError as err:
            got = err.code()
    assert got == code


def self_signed(tmp_path: Path) -> tuple[str, str]:
    """(cert path, key path) for 127.0.0.1 / localhost, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def test_http_and_grpc_serve_tls(pod_processes, make_router, tmp_path) -> None:
    cert, key = self_signed(tmp_path)
    router = await make_router([pod_processes().url], tls_cert=cert, tls_key=key)
    assert router.url.startswith("https://")
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert)) as http:
        client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, http_client=http)
        resp = await client.completions.create(model=MODEL, prompt="hi", max_tokens=2, extra_body={"ignore_eos": True})
        assert resp.usage.completion_tokens == 2
    async with httpx.AsyncClient() as untrusting:  # the system roots do not know our certificate
        with pytest.raises(httpx.ConnectError):
            await untrusting.get(f"{router.url}/health")
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(cert).read_bytes())
    async with grpc.aio.secure_channel(router.grpc_target, credentials) as channel:
        out = await router_pb2_grpc.RouterStub(channel).Generate(router_pb2.GenerateRequest(model=MODEL, prompt="hi"))
        assert out.finish_reason in ("stop", "length")


def test_secrets_never_reach_the_logs(redis_server, pod_processes) -> None:
    """A real router process at DEBUG, with a password in its Redis URL (that Redis has none, so
    every store call fails and is logged) and an admin token; its whole output is searched."""
    password = "hunter2-redis-password"
    pod = pod_processes()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sagesched", "router", "--backend", pod.url, "--host", "127.0.0.1", "--port", str(port),
         "--grpc-port", "-1", "--log-level", "DEBUG", "--admin-token", TOKEN,
         "--redis-url", f"redis://:{password}@127.0.0.1:{redis_server.port}/0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=60)
        with httpx.Client(timeout=30) as http:
            resp = http.post(f"http://127.0.0.1:{port}/v1/completions",
                             json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
        # served (the static backend does not need the store), so the request path's logging ran too
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] == 2
        time.sleep(1.0)  # let the pod-store loop fail and log a few times
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0].decode(errors="replace")
    assert "starting router with" in output and "redis://:***@" in output  # the logs were captured
    assert password not in output
    assert TOKEN not in output
