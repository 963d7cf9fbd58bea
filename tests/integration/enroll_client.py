#!/usr/bin/env python3
"""Test client for the hub, run inside a test network namespace (`ip netns exec NS …`).

  request  one request; prints {"status", "headers", "body"} as JSON
  burst    N enrollments from T threads, fresh TLS connection each; one JSON line per
           answer to --out as it arrives (so a test can kill the hub mid-burst)
  flood    N quick requests from one source address; prints status counts
Node keys are derived from --prefix and the index, so a retry is a real replay.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import hashlib
import http.client
import json
import ssl
import sys
import threading
import time
import urllib.parse
from collections import Counter

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519


def keypair(seed: str) -> tuple[str, str]:
    raw = bytearray(hashlib.sha256(seed.encode()).digest())
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    k = x25519.X25519PrivateKey.from_private_bytes(bytes(raw))
    pub = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(bytes(raw)).decode(), base64.b64encode(pub).decode()


_CTX: dict[str, ssl.SSLContext] = {}


def _context(ca: str) -> ssl.SSLContext:
    if ca not in _CTX:  # one context per process: loading the CA is not what we measure
        _CTX[ca] = ssl.create_default_context(cafile=ca)
    return _CTX[ca]


def call(
    url,
    ca,
    method="POST",
    path="/v1/enroll",
    token=None,
    body=b"",
    bind=None,
    timeout=15.0,
    headers=None,
    close=False,
):
    u = urllib.parse.urlsplit(url)
    ctx = _context(ca)
    conn = http.client.HTTPSConnection(
        u.hostname,
        u.port,
        context=ctx,
        timeout=timeout,
        source_address=(bind, 0) if bind else None,
    )
    h = dict(headers or {})
    if close:  # like the node agent: one request per connection
        h["Connection"] = "close"
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body if method != "GET" else None, headers=h)
        r = conn.getresponse()
        data = r.read()
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = data.decode(errors="replace")
        return r.status, dict(r.getheaders()), parsed
    finally:
        conn.close()


def enroll_body(prefix: str, i: int, site: str) -> tuple[bytes, str, str]:
    _, pub = keypair(f"{prefix}-{i}")
    node_id = f"{prefix}-{i:05d}"
    body = {
        "site": site,
        "node_id": node_id,
        "wg_pubkey": pub,
        "hostname": f"h{i}",
        "fingerprint": "",
        "image_version": "test",
    }
    return json.dumps(body).encode(), node_id, pub


def cmd_request(a):
    if a.body_size:
        body = b"{" + b" " * a.body_size + b"}"
    elif a.body_raw is not None:
        body = a.body_raw.encode()
    else:
        body = b""
    try:
        st, hd, bd = call(a.url, a.ca, a.method, a.path, a.token, body, a.bind)
    except (OSError, http.client.HTTPException) as exc:
        st, hd, bd = 0, {}, str(exc)
    print(json.dumps({"status": st, "headers": hd, "body": bd}))


def cmd_burst(a):
    only = None
    if a.only:
        only = [int(x) for x in a.only.split(",") if x]
    idx = only if only is not None else list(range(a.n))
    bodies = {i: enroll_body(a.prefix, i, a.site) for i in idx}  # keys made before timing
    lock = threading.Lock()
    out = open(a.out, "a")  # noqa: SIM115 - closed below, shared by threads
    local = threading.local()
    u = urllib.parse.urlsplit(a.url)
    headers = {"Authorization": f"Bearer {a.token}", "Content-Type": "application/json"}

    def keepalive_call(body):
        for attempt in (1, 2):
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPSConnection(
                    u.hostname, u.port, context=_context(a.ca), timeout=30
                )
            try:
                conn.request("POST", "/v1/enroll", body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    local.conn = None
                return r.status, json.loads(data) if data else {}
            except (OSError, http.client.HTTPException):
                conn.close()
                local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # open loop (--rate): enrollment k of this process is due at start + k / rate, and its
    # latency counts from then, so time spent waiting for a free thread is counted too
    due = {i: k / a.rate for k, i in enumerate(idx)} if a.rate else {}

    def one(i):
        body, node_id, pub = bodies[i]
        t0 = time.monotonic()
        if a.rate:
            t0 = t_start + due[i]
            time.sleep(max(0.0, t0 - time.monotonic()))
        try:
            if a.keepalive:
                st, bd = keepalive_call(body)
            else:
                st, _, bd = call(
                    a.url, a.ca, "POST", "/v1/enroll", a.token, body, close=not a.keep_open
                )
        except (OSError, http.client.HTTPException, ValueError) as exc:
            st, bd = 0, {"error": str(exc)}
        dt = time.monotonic() - t0
        rec = {
            "i": i,
            "node_id": node_id,
            "pubkey": pub,
            "status": st,
            "latency": dt,
            "t_end": time.time(),
            "address": bd.get("address") if isinstance(bd, dict) else None,
        }
        with lock:
            out.write(json.dumps(rec) + "\n")
            out.flush()

    if a.start_at:  # several client processes start together, after their set-up
        time.sleep(max(0.0, a.start_at - time.time()))
    t_start = time.monotonic()
    with cf.ThreadPoolExecutor(a.threads) as ex:
        list(ex.map(one, idx))
    out.close()


def cmd_flood(a):
    counts = Counter()
    retry_after = set()
    for _ in range(a.n):
        try:
            st, hd, _ = call(
                a.url, a.ca, "POST", "/v1/enroll", "nf1.0000000000000000.x", b"{}", a.bind
            )
        except (OSError, http.client.HTTPException):
            st, hd = 0, {}
        counts[st] += 1
        if st == 429:
            retry_after.add(hd.get("Retry-After"))
    print(json.dumps({"counts": counts, "retry_after": sorted(x for x in retry_after if x)}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("request", "burst", "flood"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True)
        p.add_argument("--ca", required=True)
        p.add_argument("--bind")
        p.add_argument("--token")
        p.add_argument("--site", default="lab")
        if name == "request":
            p.add_argument("--method", default="POST")
            p.add_argument("--path", default="/v1/enroll")
            p.add_argument("--body-raw")
            p.add_argument("--body-size", type=int, default=0)
        if name == "burst":
            p.add_argument("--n", type=int, default=100)
            p.add_argument("--threads", type=int, default=16)
            p.add_argument("--prefix", default="burst")
            p.add_argument("--out", required=True)
            p.add_argument("--only", default=None)
            p.add_argument("--start-at", type=float, default=0.0)
            p.add_argument(
                "--keepalive", action="store_true", help="reuse one connection per thread"
            )
            p.add_argument(
                "--keep-open",
                action="store_true",
                help="no Connection: close (the node agent before issue 17's round 3)",
            )
            p.add_argument(
                "--rate", type=float, default=0.0, help="enrollments/s offered (0: closed loop)"
            )
        if name == "flood":
            p.add_argument("--n", type=int, default=60)
    a = ap.parse_args()
    {"request": cmd_request, "burst": cmd_burst, "flood": cmd_flood}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
