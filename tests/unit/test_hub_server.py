"""builder.hub.server: the asyncio HTTP/1.1 front, in-process on loopback (plain TCP).

The hub serves it over TLS; the limits are the same without it, and raw sockets let a test
send exactly the bytes a hostile client would.
"""

from __future__ import annotations

import asyncio
import json
import time

from builder.hub.config import DEFAULTS, Limits
from builder.hub.metrics import Metrics
from builder.hub.server import HttpServer, LogLimiter, Request, Response
from tests.support.ports import free_port


def limits(**over: float) -> Limits:
    d = {k: v for k, v in DEFAULTS["limits"].items() if k in Limits.__dataclass_fields__}
    d.update(over)
    return Limits(**d)  # type: ignore[arg-type]


async def echo(req: Request) -> Response:
    body = json.dumps({"path": req.path, "len": len(req.body), "peer": req.peer}).encode()
    return Response(200, body)


def err(status: int, message: str) -> Response:
    return Response(status, json.dumps({"error": message}).encode(), close=True)


async def with_server(lim: Limits, fn):
    m = Metrics()
    srv = HttpServer(echo, err, None, lim, m, max_body=4096)
    port = free_port()
    await srv.start("127.0.0.1", port)
    try:
        return await fn(port, m, srv)
    finally:
        await srv.close()


async def exchange(port: int, data: bytes, src: str = "127.0.0.1", wait: float = 5) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
    try:
        w.write(data)
        return await asyncio.wait_for(r.read(65536), wait)
    finally:
        w.close()


def status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw else 0


def test_requests_and_bad_framing() -> None:
    async def fn(port, m, srv):
        ok = await exchange(port, b"POST /v1/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        assert status(ok) == 200 and b'"len": 2' in ok
        big = b"GET / HTTP/1.1\r\n" + b"X-A: " + b"a" * 9000 + b"\r\n\r\n"
        assert status(await exchange(port, big)) == 431
        assert status(await exchange(port, b"POST / HTTP/1.1\r\n\r\n")) == 411
        chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        assert status(await exchange(port, chunked)) == 411
        two = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        assert status(await exchange(port, two)) == 400
        assert status(await exchange(port, b"GARBAGE\r\n\r\n")) == 400
        huge = b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
        assert status(await exchange(port, huge)) == 413
        # keep-alive: two requests on one connection
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(r.read(65536), 5)
        data += await asyncio.wait_for(r.read(65536), 5)
        w.close()
        assert data.count(b"HTTP/1.1 200") == 2 and b'"/b"' in data

    asyncio.run(with_server(limits(), fn))


def test_the_deadline_covers_the_whole_request() -> None:
    """A request dribbled a line at a time is cut at the deadline, however lively."""

    async def fn(port, m, srv):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.monotonic()
        w.write(b"GET / HTTP/1.1\r\n")
        closed = None
        for i in range(50):
            await asyncio.sleep(0.1)
            try:
                w.write(b"X-%d: y\r\n" % i)
                await w.drain()
            except ConnectionError:
                closed = time.monotonic() - t0
                break
            if r.at_eof():
                closed = time.monotonic() - t0
                break
        w.close()
        assert closed is not None and 1.0 <= closed <= 2.5, closed
        assert m.dropped["deadline"] == 1

    asyncio.run(with_server(limits(request_timeout=1), fn))


def test_per_source_and_global_caps() -> None:
    async def fn(port, m, srv):
        held = [await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))]
        held += [
            await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            for _ in range(3)
        ]
        await asyncio.sleep(0.2)
        assert srv.open == 3 and m.dropped["per_source_limit"] == 1  # the 4th from .2
        # another address still gets through
        assert status(await exchange(port, b"GET / HTTP/1.1\r\n\r\n", "127.0.0.3")) == 200
        for _ in range(3):
            held.append(
                await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.4", 0))
            )
        await asyncio.sleep(0.2)
        assert srv.open == 5 and m.dropped["connection_limit"] == 1
        for _, w in held:
            w.close()

    asyncio.run(with_server(limits(per_source_connections=3, max_connections=5), fn))


def test_dropped_connections_are_logged_at_most_once_per_interval(caplog) -> None:
    t = [0.0]
    lim = LogLimiter(10, clock=lambda: t[0])
    with caplog.at_level("WARNING", logger="nodeforge.hub"):
        for _ in range(1000):
            lim.warning("x", "dropping %s", "a")
        t[0] = 11
        lim.warning("x", "dropping %s", "b")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["dropping a", "dropping b (and 999 more in the last 10 s)"]
