"""The router's HTTP/1.1 client to its pods: pooled keep-alive connections over `asyncio.Protocol`.

The request path's only client. It does what relaying needs and nothing else: POST a JSON body,
hand back the status and headers once they arrive, then the body as it comes (Content-Length,
chunked, or delimited by the connection's close), over plain TCP or TLS (`https://` pods, verified
against the system's trust store unless the pool is given its own context).
Written for the router's CPU: aiohttp's general client cost more than twice as much per streamed
request (bench/results/router-cpu/README.md).

Timeouts are deadlines checked only while the caller waits, each wait arming one timer: connecting
(`connect_timeout_s`), the response head (`first_byte_s`), each read of the body (`idle_s`), and the
whole exchange (`total_s`). A connection goes back to its pod's idle pool only when the response
arrived whole and the pod allows keep-alive; one left early is closed, which is how an engine learns
that its client went away and aborts the request.

Errors: `PodConnectionError` when the pod cannot be reached, closes or resets the connection before
the answer is complete, or breaks HTTP; `TimeoutError` when a deadline passes (the connection is
closed). A kept-alive connection that the pod had closed before our request reached it is retried
once on a fresh connection.
"""
from __future__ import annotations

import asyncio
import json
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

_MAX_HEAD = 65536  # bytes of a response head (or chunk-size line) before it counts as broken
_HIGH_WATER = 1 << 20  # body bytes held for a slow reader before the socket stops being read

# parser states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class PodConnectionError(Exception):
    """The pod could not be reached, dropped or reset the connection, or broke HTTP."""


class Headers(dict):
    """Response headers by lower-case name; lookups ignore case, as HTTP does."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class _Target:
    """A pod's base URL, parsed once: where to connect and what the request line and Host say."""

    __slots__ = ("key", "host", "port", "tls", "prefix", "host_header")

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"pod URL {base_url!r}: expected http(s)://host[:port][/prefix]")
        self.key = base_url
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        self.host_header = parts.netloc.rpartition("@")[2]


class _Connection(asyncio.Protocol):
    """One pod connection and the parser of the response now on it."""

    def __init__(self, pool: PodPool, key: str) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.counted = True  # holds one of the pool's `limit` slots until closed
        self.closed = False
        self.reused = False  # has served a response: a failure before any byte may be a stale keep-alive
        self.idle_since = 0.0
        self.paused = False
        self.waiter: asyncio.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.state = _HEAD
        self.buf = b""
        self.status = 0
        self.headers: Headers | None = None
        self.keep_alive = True
        self.remaining = 0
        self.body: list[bytes] = []
        self.buffered = 0
        self.received = False
        self.exc: BaseException | None = None

    # --- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if self.state == _UNTIL_CLOSE:
            self.state = _DONE
        elif self.state != _DONE and self.exc is None:
            where = "mid-answer" if self.status else "before answering"
            self.exc = PodConnectionError(f"connection {'reset' if exc else 'closed'} {where}"
                                          + (f": {exc}" if exc else ""))
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self.state == _DONE:  # bytes beyond the answer (or on an idle connection): not reusable
            self.keep_alive = False
            self.close()
            return
        self.received = True
        if self.buf:
            data = self.buf + data
            self.buf = b""
        try:
            self._feed(data)
        except (ValueError, IndexError) as exc:
            self.exc = PodConnectionError(f"malformed HTTP from the pod: {exc}")
            self.close()
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close; connection_lost settles the answer

    # --- parsing ---------------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            state = self.state
            if state == _CHUNK_DATA or state == _LENGTH:
                take = min(self.remaining, n - pos)
                piece = data if take == n else data[pos:pos + take]
                self.body.append(piece)
                self.buffered += take
                self.remaining -= take
                pos += take
                if not self.remaining:
                    if state == _LENGTH:
                        self._done(data, pos)
                        return
                    self.state = _CHUNK_END
            elif state == _CHUNK_SIZE or state == _TRAILERS:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    self._hold(data, pos)
                    return
                if state == _TRAILERS:
                    if end == pos:
                        self._done(data, end + 2)
                        return
                else:
                    size = int(data[pos:end].partition(b";")[0], 16)
                    if size < 0:
                        raise ValueError("negative chunk size")
                    self.remaining = size
                    self.state = _CHUNK_DATA if size else _TRAILERS
                pos = end + 2
            elif state == _CHUNK_END:
                if n - pos < 2:
                    self._hold(data, pos)
                    return
                if data[pos:pos + 2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                pos += 2
                self.state = _CHUNK_SIZE
            elif state == _HEAD:
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    self._hold(data, pos)
                    return
                self._head(data[pos:end])
                pos = end + 4
                if self.state == _DONE:
                    self._done(data, pos)
                    return
            elif state == _UNTIL_CLOSE:
                piece = data[pos:] if pos else data
                self.body.append(piece)
                self.buffered += len(piece)
                return
            else:
                return

    def _hold(self, data: bytes, pos: int) -> None:
        self.buf = data[pos:]
        if len(self.buf) > _MAX_HEAD:
            raise ValueError("header or chunk-size line too long")

    def _head(self, block: bytes) -> None:
        lines = block.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ", 2)[:2]
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        code = int(status)
        if 100 <= code < 200:  # an interim answer (100 Continue): the real head follows
            return
        headers = Headers()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"header line without a colon: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        self.keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        self.status, self.headers = code, headers
        if code == 204 or code == 304:
            self.state = _DONE
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self.state = _CHUNK_SIZE
        elif (length := headers.get("content-length")) is not None:
            self.remaining = int(length)
            if self.remaining < 0:
                raise ValueError("negative content-length")
            self.state = _LENGTH if self.remaining else _DONE
        else:
            self.state = _UNTIL_CLOSE
            self.keep_alive = False

    def _done(self, data: bytes, pos: int) -> None:
        self.state = _DONE
        if pos < len(data):  # more than one answer was sent: the connection is not reusable
            self.keep_alive = False

    # --- the caller's side -----------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @staticmethod
    def _expire(waiter: asyncio.Future) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())

    async def wait(self, deadline: float | None) -> None:
        """Until the pod sends something or the connection ends; TimeoutError at `deadline`."""
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_at(deadline, self._expire, waiter) if deadline is not None else None
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def take(self) -> bytes:
        """The body bytes received and not yet taken."""
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        self.body = []
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def send(self, request: bytes) -> None:
        """Start an exchange: a fresh parser, then the request."""
        assert self.transport is not None
        self._reset()
        self.transport.write(request)

    def close(self) -> None:
        """Close the connection (the pod sees it end); its pool slot frees at once."""
        self.pool._forget(self)
        if self.transport is not None and not self.closed:
            self.transport.close()


class PodResponse:
    """A pod's answer: `status` and `headers` (case-insensitive) have arrived, the body is read with
    `chunks()` or `read()`. `release()` returns the connection to the pool if the answer arrived
    whole, otherwise closes it; `close()` always closes it."""

    __slots__ = ("status", "headers", "_conn", "_deadline", "_idle_s", "_released", "_body")

    def __init__(self, conn: _Connection, deadline: float | None, idle_s: float | None) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self._conn = conn
        self._deadline = deadline
        self._idle_s = idle_s
        self._released = False
        self._body: bytes | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: per read, everything received since the last one. Raises
        `PodConnectionError` if the connection ends before the body does (after what came before
        it), `TimeoutError` if a read waits longer than the idle bound or the total runs out."""
        conn = self._conn
        while True:
            if conn.body:
                yield conn.take()
            elif conn.state == _DONE:
                return
            elif conn.exc is not None:
                raise conn.exc
            else:
                deadline = self._deadline
                if self._idle_s is not None:
                    idle = conn.loop.time() + self._idle_s
                    deadline = idle if deadline is None or idle < deadline else deadline
                await conn.wait(deadline)

    async def read(self) -> bytes:
        """The whole body."""
        if self._body is None:
            self._body = b"".join([chunk async for chunk in self.chunks()])
        return self._body

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        if conn.state == _DONE and conn.keep_alive and conn.exc is None and not conn.closed:
            conn.pool._put(conn)
        else:
            conn.close()

    def close(self) -> None:
        self._released = True
        self._conn.close()


class PodPool:
    """Keep-alive connections to pods, per pod URL, at most `limit` open at once (idle ones
    included: an idle connection to one pod is closed when another pod needs the slot; beyond that,
    requests wait for one). Idle connections are closed after `keepalive_s`."""

    def __init__(self, limit: int, connect_timeout_s: float, keepalive_s: float = 60.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.limit = limit
        self._ssl = ssl_context
        self.connect_timeout_s = connect_timeout_s
        self.keepalive_s = keepalive_s
        self.loop = asyncio.get_running_loop()
        self._targets: dict[str, _Target] = {}
        self._idle: dict[str, list[_Connection]] = {}
        self._conns: set[_Connection] = set()  # open or opening, each holding a slot
        self._waiters: deque[asyncio.Future] = deque()
        self._sweeper: asyncio.TimerHandle | None = None

    async def post(self, base_url: str, path: str, headers: dict[str, str], body: Any, *,
                   first_byte_s: float | None = None, idle_s: float | None = None,
                   total_s: float | None = None) -> PodResponse:
        """POST `body` as JSON to `base_url` + `path`; the answer once its head arrived."""
        loop = self.loop
        now = loop.time()
        deadline = now + total_s if total_s else None
        head_by = deadline
        if first_byte_s:
            head_by = now + first_byte_s if deadline is None else min(deadline, now + first_byte_s)
        target = self._targets.get(base_url) or self._target(base_url)
        request = _request(target, path, headers, json.dumps(body).encode())
        for attempt in range(2):
            conn = await self._acquire(target, head_by)
            reused = conn.reused
            try:
                conn.send(request)
                while not conn.status:
                    if conn.exc is not None:
                        raise conn.exc
                    await conn.wait(head_by)
            except PodConnectionError:
                conn.close()
                if reused and not conn.received and attempt == 0:
                    continue  # the pod had closed this idle connection; our request never reached it
                raise
            except BaseException:
                conn.close()
                raise
            return PodResponse(conn, deadline, idle_s)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self._conns):
            conn.close()
        self._idle.clear()

    def _target(self, base_url: str) -> _Target:
        target = self._targets[base_url] = _Target(base_url)
        return target

    async def _acquire(self, target: _Target, deadline: float | None) -> _Connection:
        """An idle connection to `target`, or a new one once the pool has room (waiting no later
        than `deadline`: TimeoutError)."""
        while True:
            idle = self._idle.get(target.key)
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    return conn
            if len(self._conns) < self.limit or self._evict():
                return await self._connect(target)
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            timer = self.loop.call_at(deadline, _Connection._expire, waiter) if deadline is not None else None
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake_one()  # pass on the slot this waiter was given
                raise
            finally:
                if timer is not None:
                    timer.cancel()

    async def _connect(self, target: _Target) -> _Connection:
        conn = _Connection(self, target.key)
        self._conns.add(conn)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await self.loop.create_connection(lambda: conn, target.host, target.port,
                                                  ssl=self._tls() if target.tls else None)
        except (OSError, TimeoutError) as exc:
            conn.close()
            detail = "timed out" if isinstance(exc, TimeoutError) else f"{exc.__class__.__name__}: {exc}"
            raise PodConnectionError(f"cannot connect to {target.host}:{target.port}: {detail}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _put(self, conn: _Connection) -> None:
        conn.body = []  # its parser stays done: a byte arriving while idle closes it
        conn.buffered = 0
        if conn.paused and conn.transport is not None:
            conn.paused = False
            conn.transport.resume_reading()
        conn.reused = True
        conn.idle_since = self.loop.time()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.keepalive_s / 2, self._sweep)
        if self._waiters:
            self._wake_one()

    def _forget(self, conn: _Connection) -> None:
        """`conn` is closing: its slot is free."""
        if conn.counted:
            conn.counted = False
            self._conns.discard(conn)
            if self._waiters:
                self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _evict(self) -> bool:
        """Close the longest-idle connection to make room for another; False if none is idle."""
        oldest: _Connection | None = None
        for idle in self._idle.values():
            while idle and idle[0].closed:
                idle.pop(0)
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is None:
            return False
        self._idle[oldest.key].remove(oldest)
        oldest.close()
        return True

    def _sweep(self) -> None:
        cutoff = self.loop.time() - self.keepalive_s
        for key, idle in list(self._idle.items()):
            keep = []
            for conn in idle:
                if conn.closed:
                    continue
                if conn.idle_since < cutoff:
                    conn.close()
                else:
                    keep.append(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        self._sweeper = self.loop.call_later(self.keepalive_s / 2, self._sweep) if self._idle else None


def _request(target: _Target, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """The request's bytes: head and JSON body, one write."""
    head = [f"POST {target.prefix}{path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"]
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError(f"newline in header {name!r}")
        head.append(f"{name}: {value}\r\n")
    head.append("\r\n")
    return "".join(head).encode("utf-8", "surrogateescape") + body
