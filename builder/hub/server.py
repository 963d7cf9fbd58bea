"""A small HTTP/1.1 server on asyncio, built for a hostile network (the hub's API front).

Why our own and not uvicorn/hypercorn: the limits the hub needs are a whole-request deadline
that covers the TLS handshake, the headers and the body, and a cap on open connections per
client address enforced *before* the TLS handshake. Neither server has either (uvicorn's
``timeout_keep_alive`` and ``limit_concurrency`` bound idle keep-alive time and in-flight
requests; neither bounds a dribbled handshake or header block, nor counts per source), so
we would still wrap them in the same accept-time logic, and add a dependency to a fixed
list. The HTTP the hub speaks is tiny (JSON bodies with Content-Length, no chunked
uploads, no upgrades), so a strict parser is a few dozen lines.

Limits (``hub.json`` ``limits``):
- ``request_timeout``: TLS handshake + request line + headers + body must all arrive
  within it; the clock starts at accept (or, on a kept-alive connection, at the first byte
  of the next request). Writing the answer is bounded by it too.
- ``per_source_connections`` / ``max_connections``: a connection over either cap is closed
  at once (RST), before any TLS work or buffer is spent on it; a connection within them
  gets a TLS transport only once its client has sent something.
- ``max_header_bytes`` for the request line + headers (431 beyond), at most 100 header
  lines; bodies need Content-Length and at most ``max_body_bytes`` (413 beyond).
- ``keepalive_seconds``: how long a kept-alive connection may sit idle.
- Dropped connections are counted (metrics) and logged at most once per 10 s per reason.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import logging
import resource
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from .config import Limits
from .metrics import Metrics

log = logging.getLogger("nodeforge.hub")

MAX_HEADER_LINES = 100
DISCARD_MAX = 1 << 20  # an oversized body is read and dropped up to this, so the 413 arrives
# asyncio's TLS transport reads into a 256 KiB buffer per connection (sslproto.max_size);
# a TLS record carries at most 16 KiB, so 32 KiB is plenty and keeps a flood of open
# connections cheap. This process serves only the hub.
TLS_READ_BUFFER = 32 * 1024


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    peer: str
    local: str
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    retry_after: int | None = None
    close: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def encode(self, close: bool) -> bytes:
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [
            f"HTTP/1.1 {self.status} {reason}",
            "Server: nodeforge-hub",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
        ]
        if self.retry_after is not None:
            lines.append(f"Retry-After: {self.retry_after}")
        lines += [f"{k}: {v}" for k, v in self.extra.items()]
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


Handler = Callable[[Request], Awaitable[Response]]
ErrorBody = Callable[[int, str], Response]


class LogLimiter:
    """At most one line per ``interval`` seconds per key, with the count left out since."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self.last: dict[str, float] = {}
        self.suppressed: Counter[str] = Counter()

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = self.clock()
        if now - self.last.get(key, -1e9) < self.interval:
            self.suppressed[key] += 1
            return
        n = self.suppressed.pop(key, 0)
        self.last[key] = now
        log.warning(msg + (f" (and {n} more in the last {self.interval:g} s)" if n else ""), *args)


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return int(soft)


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        error: ErrorBody,
        ctx: ssl.SSLContext | None,
        limits: Limits,
        metrics: Metrics,
        max_body: int,
    ) -> None:
        self.handler = handler
        self.error = error
        self.ctx = ctx
        self.lim = limits
        self.metrics = metrics
        self.max_body = max_body
        self.open = 0
        self.per_source: Counter[str] = Counter()
        self.logs = LogLimiter()
        self.lsock: socket.socket | None = None
        self.accepting: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        fds = raise_fd_limit()
        # keep room for the database, the writer pipe, subprocesses and logs
        self.max_open = max(1, min(limits.max_connections, fds - 64))
        if hasattr(asyncio.sslproto.SSLProtocol, "max_size"):
            asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER

    async def start(self, host: str, port: int) -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), port))
            sock.listen(4096)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.lsock = sock
        self.accepting = asyncio.create_task(self._accept())

    async def close(self) -> None:
        if self.accepting is not None:
            self.accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.accepting
        if self.lsock is not None:
            self.lsock.close()
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)

    # -- connections ------------------------------------------------------------------------
    async def _accept(self) -> None:
        """Accept, and check the caps before anything is spent on the connection: a TLS
        transport (buffers, an SSL object) is only made once the client has sent bytes."""
        loop = asyncio.get_running_loop()
        assert self.lsock is not None
        while True:
            try:
                sock, addr = await loop.sock_accept(self.lsock)
            except OSError as exc:  # e.g. out of file descriptors: back off a little
                self.metrics.drop("accept_error")
                self.logs.warning("accept", "accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            peer = str(addr[0])
            if self.open >= self.max_open:
                self._drop(sock, "connection_limit", peer)
                continue
            if self.per_source[peer] >= self.lim.per_source_connections:
                self._drop(sock, "per_source_limit", peer)
                continue
            self.open += 1
            self.per_source[peer] += 1
            task = asyncio.create_task(self._connection(sock, peer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _drop(self, sock: socket.socket, reason: str, peer: str) -> None:
        self.metrics.drop(reason)
        self.logs.warning(reason, "dropping a connection from %s: %s", peer, reason)
        with contextlib.suppress(OSError):  # RST, no lingering FIN_WAIT state
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        sock.close()

    async def _connection(self, sock: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        writer: asyncio.StreamWriter | None = None
        deadline = self.lim.request_timeout
        try:
            local = str(sock.getsockname()[0])
            async with asyncio.timeout(deadline):
                await _readable(loop, sock)
                reader = asyncio.StreamReader(limit=self.lim.max_header_bytes, loop=loop)
                protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol,
                    sock,
                    ssl=self.ctx,
                    ssl_handshake_timeout=deadline if self.ctx is not None else None,
                )
                writer = asyncio.StreamWriter(transport, protocol, reader, loop)
                first = await self._read_first(reader, writer, peer, local)
            if first is not None:
                await self._serve(reader, writer, first, peer, local)
        except TimeoutError:  # before OSError, of which it is a subclass
            self.metrics.drop("deadline")
            self.logs.warning("deadline", "closing a connection from %s: request deadline", peer)
        except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a bug must not take the server down
            log.exception("connection from %s failed", peer)
        finally:
            self.open -= 1
            self.per_source[peer] -= 1
            if self.per_source[peer] <= 0:
                del self.per_source[peer]
            if writer is not None:
                writer.transport.abort()
            else:
                sock.close()

    async def _read_first(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, local: str
    ) -> tuple[Request, bytearray] | None:
        buf = bytearray()
        try:
            req = await self._read_request(reader, buf, peer, local)
        except BadRequest as exc:
            await self._write(writer, self.error(exc.status, exc.message), True)
            return None
        return None if req is None else (req, buf)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: tuple[Request, bytearray],
        peer: str,
        local: str,
    ) -> None:
        req, buf = first
        while True:
            resp = await self.handler(req)
            close = resp.close or _wants_close(req)
            await self._write(writer, resp, close)
            if close:
                return
            if not buf:  # kept alive: wait (bounded) for the next request
                try:  # asyncio.timeout, not wait_for: no extra task per request
                    async with asyncio.timeout(self.lim.keepalive_seconds):
                        chunk = await reader.read(4096)
                except TimeoutError:
                    return
                if not chunk:
                    return
                buf += chunk
            try:
                async with asyncio.timeout(self.lim.request_timeout):
                    got = await self._read_request(reader, buf, peer, local)
            except BadRequest as exc:
                await self._write(writer, self.error(exc.status, exc.message), True)
                return
            if got is None:
                return
            req = got

    async def _write(self, writer: asyncio.StreamWriter, resp: Response, close: bool) -> None:
        writer.write(resp.encode(close))
        async with asyncio.timeout(self.lim.request_timeout):
            await writer.drain()

    async def _read_request(
        self, reader: asyncio.StreamReader, buf: bytearray, peer: str, local: str
    ) -> Request | None:
        limit = self.lim.max_header_bytes
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > limit:
                raise BadRequest(431, f"request line and headers exceed {limit} bytes")
            chunk = await reader.read(4096)
            if not chunk:
                if buf:
                    raise asyncio.IncompleteReadError(bytes(buf), None)
                return None
            buf += chunk
        if end > limit:
            raise BadRequest(431, f"request line and headers exceed {limit} bytes")
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        req = _parse_head(head, peer, local)
        n = _content_length(req)
        if n > self.max_body:
            # read and drop (never parse) a bounded amount so the client gets to read the 413
            left = min(n, DISCARD_MAX) - len(buf)
            buf.clear()
            while left > 0:
                chunk = await reader.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
            raise BadRequest(413, f"body larger than {self.max_body} bytes")
        if len(buf) < n:
            buf += await reader.readexactly(n - len(buf))
        req.body = bytes(buf[:n])
        del buf[:n]
        return req


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Wait until the client has sent something (or closed)."""
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


def _parse_head(head: str, peer: str, local: str) -> Request:
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(505, "HTTP/1.0 or HTTP/1.1 only")
    if len(lines) - 1 > MAX_HEADER_LINES:
        raise BadRequest(431, f"more than {MAX_HEADER_LINES} header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise BadRequest(400, "malformed header line")
        key = name.lower()
        if key in headers:
            if key in ("content-length", "authorization", "host", "transfer-encoding"):
                raise BadRequest(400, f"duplicate {name} header")
            headers[key] += ", " + value.strip()
        else:
            headers[key] = value.strip()
    return Request(method, target, version, headers, peer, local)


def _content_length(req: Request) -> int:
    if "transfer-encoding" in req.headers:
        raise BadRequest(411, "Content-Length required (no Transfer-Encoding)")
    v = req.headers.get("content-length")
    if v is None:
        if req.method in ("POST", "PUT"):
            raise BadRequest(411, "Content-Length required")
        return 0
    if not v.isdigit() or len(v) > 12:
        raise BadRequest(400, "bad Content-Length")
    return int(v)


def _wants_close(req: Request) -> bool:
    conn = req.header("connection").lower()
    if req.version == "HTTP/1.0":
        return "keep-alive" not in conn
    return "close" in conn
