#!/usr/bin/env python3
"""Hostile clients and a well-behaved probe for the hub (run inside a test network namespace).

  flood --mode slow     TLS, then a request dribbled one header line a second (slowloris)
  flood --mode idle     plain TCP connections that send nothing
  flood --mode headers  TLS, then header lines as fast as they go, never ending the block
        Each of --per-source connections per --sources address reconnects --retry seconds after
        the hub closes it, until --seconds have passed; prints {"opened", "refused"} as JSON.
  probe  --n well-formed enrollments from --sources (fresh TLS connection each, a few at a
        time); prints {"latencies": [...], "statuses": [...]} (latency -1: no answer).
Everything stops by itself after --seconds (flood) or --n requests (probe); SIGTERM stops a
flood early (its connections are dropped) and it still prints its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import ssl
import sys
import time

from cryptography.hazmat.primitives.asymmetric import x25519


async def one_hostile(mode, host, port, ctx, src, stop_at, stats, retry):
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=None if mode == "idle" else ctx, local_addr=(src, 0)
                ),
                10,
            )
        except (OSError, ssl.SSLError, TimeoutError):
            stats["refused"] += 1
            await asyncio.sleep(retry)
            continue
        stats["opened"] += 1
        try:
            if mode == "slow":
                writer.write(b"POST /v1/enroll HTTP/1.1\r\nHost: hub\r\n")
                i = 0
                while time.monotonic() < stop_at and not reader.at_eof():
                    await asyncio.sleep(1)
                    writer.write(b"X-Slow-%d: x\r\n" % i)
                    await writer.drain()
                    i += 1
            elif mode == "headers":
                writer.write(b"POST /v1/enroll HTTP/1.1\r\nHost: hub\r\n")
                line = b"X-Flood: " + b"y" * 1000 + b"\r\n"
                while time.monotonic() < stop_at:
                    writer.write(line)
                    await writer.drain()
                    await asyncio.sleep(0.01)
            else:
                while time.monotonic() < stop_at:
                    if await reader.read(1) == b"":
                        break
        except (OSError, ssl.SSLError, ConnectionError):
            pass
        finally:
            writer.transport.abort()
        await asyncio.sleep(retry)


async def flood(a) -> None:
    ctx = ssl.create_default_context(cafile=a.ca)
    stats = {"opened": 0, "refused": 0}
    stop_at = time.monotonic() + a.seconds
    tasks = [
        asyncio.ensure_future(
            one_hostile(a.mode, a.host, a.port, ctx, src, stop_at, stats, a.retry)
        )
        for src in a.sources.split(",")
        for _ in range(a.per_source)
    ]
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGTERM, lambda: [t.cancel() for t in tasks]
    )
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(stats))


async def probe_one(a, ctx, src, i, token):
    pub = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    body = json.dumps(
        {
            "site": "lab",
            "node_id": f"probe-{os.getpid()}-{i}",
            "wg_pubkey": base64.b64encode(pub).decode(),
            "hostname": f"p{i}",
        }
    ).encode()
    head = (
        f"POST /v1/enroll HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(a.host, a.port, ssl=ctx, local_addr=(src, 0)), a.timeout
        )
        try:
            writer.write(head + body)
            line = await asyncio.wait_for(reader.readline(), a.timeout)
            status = int(line.split()[1])
        finally:
            writer.transport.abort()
    except (OSError, ssl.SSLError, TimeoutError, ValueError, IndexError):
        return -1.0, 0
    return time.monotonic() - t0, status


async def probe(a) -> None:
    ctx = ssl.create_default_context(cafile=a.ca)
    srcs = a.sources.split(",")
    out = []
    for start in range(0, a.n, 4):  # four at a time, like a few nodes booting together
        batch = [
            probe_one(a, ctx, srcs[i % len(srcs)], i, a.token)
            for i in range(start, min(a.n, start + 4))
        ]
        out += await asyncio.gather(*batch)
        await asyncio.sleep(a.gap)
    print(json.dumps({"latencies": [x[0] for x in out], "statuses": [x[1] for x in out]}))


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("flood", "probe"):
        p = sub.add_parser(name)
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--ca", required=True)
        p.add_argument("--sources", required=True)
        if name == "flood":
            p.add_argument("--mode", choices=("slow", "idle", "headers"), required=True)
            p.add_argument("--per-source", type=int, default=100)
            p.add_argument("--seconds", type=float, default=20)
            p.add_argument("--retry", type=float, default=1.0, help="seconds before reconnecting")
        else:
            p.add_argument("--token", required=True)
            p.add_argument("--n", type=int, default=40)
            p.add_argument("--timeout", type=float, default=5)
            p.add_argument("--gap", type=float, default=0.2)
    a = ap.parse_args()
    asyncio.run(flood(a) if a.cmd == "flood" else probe(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
