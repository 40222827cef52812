"""The router's HTTP/1.1 client to its pods (router.upstream_http), against raw asyncio servers on
loopback that frame their answers by hand: what the pod sends is exactly what the test says."""
from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sagesched.router.errors import RouterError
from sagesched.router.parse import parse_request
from sagesched.router.pipeline import UPSTREAM_FAULTS
from sagesched.router.pods import PodEntry
from sagesched.router.proxy import Upstream
from sagesched.router.request import Api
from sagesched.router.settings import RouterSettings
from sagesched.router.upstream_http import PodConnectionError, PodPool

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Request"], Awaitable[None]]


class Request:
    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head.decode().split("\r\n")
        self.line = lines[0]
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        self.body = body


class RawPod:
    """A loopback server: reads each request (head and Content-Length body), lets `answer` write
    the reply, and keeps serving the connection until `answer` closes it or the client does."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.connections = 0
        self.requests: list[Request] = []
        self.client_left = asyncio.Event()  # a connection ended from the client's side
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> RawPod:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while not writer.is_closing():
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.client_left.set()
                    return
                request = Request(head[:-4], b"")
                request.body = await reader.readexactly(int(request.headers.get("content-length", 0)))
                self.requests.append(request)
                await self.answer(reader, writer, request)
        except ConnectionError:
            self.client_left.set()
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def raw_pod() -> AsyncIterator[Callable[[Answer], Awaitable[RawPod]]]:
    started: list[RawPod] = []

    async def start(answer: Answer, tls: ssl.SSLContext | None = None) -> RawPod:
        started.append(await RawPod(answer, tls).start())
        return started[-1]

    yield start
    for pod in started:
        await pod.stop()


@pytest.fixture
async def pool() -> AsyncIterator[PodPool]:
    pool = PodPool(limit=100, connect_timeout_s=2.0)
    yield pool
    await pool.close()


def reply(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def sized(reader, writer, request) -> None:
    body = json.dumps({"echo": json.loads(request.body), "path": request.line.split()[1]}).encode()
    writer.write(reply("200 OK", {"Content-Type": "application/json", "Content-Length": str(len(body))}, body))
    await writer.drain()


async def test_a_content_length_answer_arrives_whole_and_its_connection_is_reused(raw_pod, pool):
    pod = await raw_pod(sized)
    for n in range(3):
        resp = await pool.post(pod.url, "/v1/completions", {"X-Request-Id": f"r{n}"}, {"prompt": "hi", "n": n})
        assert resp.status == 200
        assert resp.headers.get("content-type") == resp.headers.get("Content-Type") == "application/json"
        assert json.loads(await resp.read()) == {"echo": {"prompt": "hi", "n": n}, "path": "/v1/completions"}
        resp.release()
    assert pod.connections == 1 and len(pod.requests) == 3
    sent = pod.requests[2]
    assert sent.line == "POST /v1/completions HTTP/1.1"
    assert sent.headers["x-request-id"] == "r2" and sent.headers["content-type"] == "application/json"
    assert sent.headers["host"] == pod.url.removeprefix("http://")


async def test_a_chunked_answer_is_read_chunk_by_chunk_however_the_bytes_are_split(raw_pod, pool):
    events = [b"data: {\"n\": %d}\n\n" % i for i in range(5)]
    go_on = asyncio.Event()

    async def chunked(reader, writer, request) -> None:
        writer.write(reply("200 OK", {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"}))
        writer.write(chunk(events[0]))
        await writer.drain()
        await go_on.wait()  # the client has read the first event before the rest comes
        rest = b"".join(chunk(e) for e in events[1:]) + b"0\r\nX-Trailer: yes\r\n\r\n"
        for i in range(0, len(rest), 3):  # size lines, data and CRLFs split across reads
            writer.write(rest[i:i + 3])
            await writer.drain()

    pod = await raw_pod(chunked)
    resp = await pool.post(pod.url, "/v1/completions", {}, {"stream": True})
    assert resp.headers["Transfer-Encoding"] == "chunked"
    received = []
    async for data in resp.chunks():
        received.append(data)
        go_on.set()
    assert received[0] == events[0]
    assert b"".join(received) == b"".join(events)
    resp.release()
    again = await pool.post(pod.url, "/v1/completions", {}, {"stream": True})
    assert await again.read() == b"".join(events)
    again.release()
    assert pod.connections == 1  # the trailers were read: the connection went back to the pool


async def test_leaving_before_the_end_closes_the_connection_so_the_pod_sees_the_client_go(raw_pod, pool):
    async def endless(reader, writer, request) -> None:
        writer.write(reply("200 OK", {"Transfer-Encoding": "chunked"}) + chunk(b"data: 1\n\n"))
        await writer.drain()
        await reader.read()  # until the client closes
        pod.client_left.set()

    pod = await raw_pod(endless)
    resp = await pool.post(pod.url, "/v1/completions", {}, {})
    async for _ in resp.chunks():
        break
    resp.release()
    await asyncio.wait_for(pod.client_left.wait(), 5)
    again = await pool.post(pod.url, "/v1/completions", {}, {})
    again.close()
    assert pod.connections == 2  # the unfinished one was never reused


async def test_a_kept_alive_connection_the_pod_closed_is_replaced_without_failing_the_request(raw_pod, pool):
    async def once(reader, writer, request) -> None:
        await sized(reader, writer, request)
        writer.close()  # no Connection: close header: the client learns only from the socket

    pod = await raw_pod(once)
    for _ in range(3):
        resp = await pool.post(pod.url, "/v1/completions", {}, {"a": 1})
        assert json.loads(await resp.read())["echo"] == {"a": 1}
        resp.release()
    assert pod.connections == 3


async def test_connection_close_and_close_delimited_answers_are_not_reused(raw_pod, pool):
    async def closing(reader, writer, request) -> None:
        if len(pod.requests) == 1:
            writer.write(reply("200 OK", {"Connection": "close", "Content-Length": "2"}, b"ok"))
        else:
            writer.write(reply("200 OK", {}, b"until the end"))
        await writer.drain()
        writer.close()

    pod = await raw_pod(closing)
    for expected in (b"ok", b"until the end"):
        resp = await pool.post(pod.url, "/v1/completions", {}, {})
        assert await resp.read() == expected
        resp.release()
    assert pod.connections == 2


async def test_a_refused_connection_is_a_pod_connection_error_and_a_502(pool):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: refused
        with pytest.raises(PodConnectionError):
            await pool.post(url, "/v1/completions", {}, {})
        err = await upstream_error(url, stream=True)
    assert err.status == 502 and err.kind == "upstream_connection"


async def test_a_silent_pod_times_out_and_is_a_504(raw_pod, pool):
    async def silent(reader, writer, request) -> None:
        await reader.read()  # never answers; returns when the client gives up
        pod.client_left.set()

    pod = await raw_pod(silent)
    with pytest.raises(TimeoutError):
        await pool.post(pod.url, "/v1/completions", {}, {}, first_byte_s=0.2)
    await asyncio.wait_for(pod.client_left.wait(), 5)  # the timed-out connection was closed
    err = await upstream_error(pod.url, stream=True, first_byte_timeout_s=0.2)
    assert err.status == 504 and err.kind == "upstream_timeout"


async def test_a_pod_silent_mid_answer_times_out_per_read(raw_pod, pool):
    async def stalls(reader, writer, request) -> None:
        writer.write(reply("200 OK", {"Transfer-Encoding": "chunked"}) + chunk(b"data: 1\n\n"))
        await writer.drain()
        await reader.read()

    pod = await raw_pod(stalls)
    resp = await pool.post(pod.url, "/v1/completions", {}, {}, first_byte_s=5, idle_s=0.2)
    received = []
    with pytest.raises(TimeoutError) as caught:
        async for data in resp.chunks():
            received.append(data)
    assert received == [b"data: 1\n\n"] and isinstance(caught.value, UPSTREAM_FAULTS)
    resp.release()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_pod_dying_mid_body_is_a_fault_failover_handles(raw_pod, pool, framing):
    async def dies(reader, writer, request) -> None:
        if framing == "chunked":
            writer.write(reply("200 OK", {"Transfer-Encoding": "chunked"}) + chunk(b"data: 1\n\n"))
        else:
            writer.write(reply("200 OK", {"Content-Length": "1000"}, b"data: 1\n\n"))
        await writer.drain()
        writer.transport.abort()

    pod = await raw_pod(dies)
    resp = await pool.post(pod.url, "/v1/completions", {}, {})
    received = []
    with pytest.raises(PodConnectionError) as caught:
        async for data in resp.chunks():
            received.append(data)
    assert received == [b"data: 1\n\n"]  # what came before the failure is kept: the resume starts there
    assert isinstance(caught.value, UPSTREAM_FAULTS)
    resp.release()


async def test_the_pool_holds_at_most_its_limit_of_connections(raw_pod):
    first, second = await raw_pod(sized), await raw_pod(sized)
    pool = PodPool(limit=1, connect_timeout_s=2.0)
    try:
        held = await pool.post(first.url, "/v1/completions", {}, {})
        waiting = asyncio.create_task(pool.post(second.url, "/v1/completions", {}, {}))
        for _ in range(50):
            await asyncio.sleep(0)  # let the waiting post run as far as it can
        assert not waiting.done() and second.connections == 0
        with pytest.raises(TimeoutError):  # a stream waits for room no longer than for its first byte
            await pool.post(second.url, "/v1/completions", {}, {}, first_byte_s=0.1)
        await held.read()
        held.release()  # idle now: closed to make room for the other pod
        resp = await asyncio.wait_for(waiting, 5)
        assert json.loads(await resp.read())["echo"] == {}
        resp.release()
        await asyncio.wait_for(first.client_left.wait(), 5)
    finally:
        await pool.close()


async def upstream_error(url: str, *, stream: bool, **settings) -> RouterError:
    """The RouterError `Upstream.open` raises for a request to the pod at `url`."""
    upstream = Upstream(RouterSettings(**settings))
    await upstream.start()
    req = parse_request(Api.COMPLETIONS, {"model": "m", "prompt": "hi", "stream": stream}, 0.0)
    try:
        with pytest.raises(RouterError) as caught:
            async with upstream.open(req, PodEntry(name="pod", base_url=url, models=("m",)), None):
                pass
    finally:
        await upstream.stop()
    return caught.value


async def test_a_body_larger_than_the_read_buffer_arrives_whole_and_the_connection_is_reused(raw_pod, pool):
    big = bytes(range(256)) * (3 * 4096)  # 3 MiB: reading pauses while the reader lags

    async def large(reader, writer, request) -> None:
        writer.write(reply("200 OK", {"Content-Length": str(len(big))}, big))
        await writer.drain()

    pod = await raw_pod(large)
    for _ in range(2):
        resp = await pool.post(pod.url, "/v1/completions", {}, {})
        received = b""
        async for data in resp.chunks():
            if not received:
                await asyncio.sleep(0.1)  # a reader that lags: the pod's bytes pile up meanwhile
            received += data
        assert received == big
        resp.release()
    assert pod.connections == 1


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl's command line): (cert, key) paths."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


async def test_an_https_pod_is_reached_over_tls_and_its_certificate_is_verified(raw_pod, certificate):
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    pod = await raw_pod(sized, tls=server_side)
    trusting = PodPool(limit=10, connect_timeout_s=2.0, ssl_context=ssl.create_default_context(cafile=cert))
    try:
        for n in range(2):
            resp = await trusting.post(pod.url, "/v1/completions", {}, {"n": n})
            assert resp.status == 200 and json.loads(await resp.read())["echo"] == {"n": n}
            resp.release()
        assert pod.connections == 1  # kept alive over TLS too
    finally:
        await trusting.close()
    default = PodPool(limit=10, connect_timeout_s=2.0)  # the system's trust store: a self-signed pod is refused
    try:
        with pytest.raises(PodConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await default.post(pod.url, "/v1/completions", {}, {"n": 0})
    finally:
        await default.close()
