"""builder.hub.api routes in process (issue 18 finding 5): a real Hub (SQLite store, on etcd
in tests/integration/test_hub_routes_etcd.py; writer
core in this process, static join provider), requests handed to ``Hub.handle`` as the server
would, so each answer's reason is known exactly.

The tunnel check is isolated: every request below carries the node's *right* secret from its
*own* overlay address to the hub's overlay address, so only the WireGuard peer check can
refuse it. The peers come from ``wg show IF dump`` recorded on a real wireguard-go interface
(tests/unit/fixtures/wg/README.md); the overlay is that recording's 10.9.0.0/16.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from builder.hub import config as hub_config
from builder.hub import wg as hub_wg
from builder.hub.api import Hub
from builder.hub.pki import init_hub
from builder.hub.server import Request
from builder.hub.writer import WriterCore
from tests.support.hubstore import store_json

FIX = Path(__file__).with_name("fixtures") / "wg"
DUMP = (FIX / "show-dump.txt").read_text()
HANDSHAKED = "STTdWWSJsruGD+aKYHdZOLCEuVM5h3EhDKiahivU+To="  # 10.9.0.2/32, handshake
NO_HANDSHAKE = "Sao955fdR83/FIRPz6rdgbfwIpnvYQuAky6nIHCF4mw="  # 10.9.0.3/32,10.9.0.4/32
NO_IPS = "1THOLpN/S872zJGPNbeNwZTXPKy2MToHgZ1g9V7CnRc="  # (none)
NOT_A_PEER = "k3A0kVqZ9ezWyN0E3Jm7ZyYl3wz8PDqGxAcxK5kqiWU="  # on no interface


def key(i: int) -> str:
    """A real Curve25519 public key (the hub refuses small-order points such as all-zero)."""
    priv = x25519.X25519PrivateKey.from_private_bytes(hashlib.sha256(b"%d" % i).digest())
    return base64.b64encode(priv.public_key().public_bytes_raw()).decode()


def make_hub(tmp_path: Path, **limits: float) -> Hub:
    d = tmp_path / "hub"
    init_hub(
        d,
        endpoint="hub.example:51820",
        url="https://hub.example:8443",
        overlay_cidr="10.9.0.0/16",
        hub_ip="10.9.0.1",
    )
    raw = json.loads((d / "hub.json").read_text())
    raw["wireguard"]["apply"] = False  # the writer touches no interface
    raw["join"] = {"provider": "static", "token": "abcdef.0123456789abcdef"}
    raw["limits"] = {"per_ip_rate": 0, "writer_process": False, **limits}
    raw["store"] = store_json(d)  # SQLite; etcd when the integration lane runs these again
    (d / "hub.json").write_text(json.dumps(raw))
    hub = Hub(hub_config.load(d / "hub.json"))
    hub.start()
    return hub


@pytest.fixture
def hub(tmp_path):
    h = make_hub(tmp_path)
    yield h
    h.stop()


def request(hub, method, path, body=None, token=None, peer="192.0.2.10", local="192.0.2.1"):
    data = b"" if body is None else json.dumps(body).encode()
    headers = {"content-length": str(len(data))}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = Request(method, path, "HTTP/1.1", headers, peer, local, data)
    resp = asyncio.run(hub.handle(req))
    return resp.status, json.loads(resp.body) if resp.body.startswith(b"{") else resp.body


def enroll(hub, token, node_id, pub, peer="192.0.2.10"):
    return request(
        hub,
        "POST",
        "/v1/enroll",
        {"site": "lab", "node_id": node_id, "wg_pubkey": pub, "hostname": node_id},
        token,
        peer,
    )


def recorded_wg(monkeypatch, dump: str) -> list[list[str]]:
    """`wg show IF dump` answers the recording (every other program is refused)."""
    calls: list[list[str]] = []

    def run(argv, **kw):
        calls.append([str(a) for a in argv])
        if argv[0] == "wg" and argv[1] == "show" and argv[3] == "dump":
            return subprocess.CompletedProcess(argv, 0, dump, "")
        raise AssertionError(f"unexpected program {argv}")

    monkeypatch.setattr(hub_wg, "run", run)
    return calls


def test_routes_404_405_and_credentials_in_the_url(hub):
    assert request(hub, "GET", "/nope")[0] == 404
    assert request(hub, "GET", "/v1/nope")[0] == 404
    assert request(hub, "GET", "/v1/enroll") == (405, {"error": "method not allowed"})
    assert request(hub, "POST", "/healthz")[0] == 405
    assert request(hub, "PUT", "/v1/join")[0] == 405
    assert request(hub, "DELETE", "/v1/complete")[0] == 405
    assert request(hub, "GET", "/healthz")[0] == 200
    assert request(hub, "GET", "/v1/join?token=x")[0] == 400
    assert hub.metrics.requests[("other", 404)] == 2
    assert hub.metrics.requests[("/v1/enroll", 405)] == 1


def test_the_tunnel_check_is_what_refuses(tmp_path, monkeypatch):
    hub = make_hub(tmp_path)
    try:
        token, _ = hub.store.create_token("lab", 10, 3600, False)
        nodes = {}
        for i, pub in enumerate([HANDSHAKED, NO_HANDSHAKE, NO_IPS, NOT_A_PEER]):
            st, ans = enroll(hub, token, f"node-{i}", pub)
            assert st == 200, ans
            nodes[pub] = ans
        assert [nodes[p]["address"] for p in nodes] == [
            "10.9.0.2",
            "10.9.0.3",
            "10.9.0.4",
            "10.9.0.5",
        ]
        # the interface is on from here: the recorded peers stand for it
        calls = recorded_wg(monkeypatch, DUMP)
        hub.cfg = dataclasses.replace(hub.cfg, wg=dataclasses.replace(hub.cfg.wg, apply=True))

        def join(pub, secret=None, peer=None):
            n = nodes[pub]
            return request(
                hub,
                "GET",
                "/v1/join",
                token=secret or n["node_secret"],
                peer=peer or n["address"],
                local="10.9.0.1",
            )

        st, mat = join(HANDSHAKED)
        assert st == 200 and mat["node_ip"] == "10.9.0.2"
        assert mat["token"] == "abcdef.0123456789abcdef"
        mismatch = (403, {"error": "WireGuard peer does not match this node"})
        # the peer holds the address but never completed a handshake
        assert join(NO_HANDSHAKE) == mismatch
        # the peer exists, 10.9.0.4/32 belongs to another peer (NO_HANDSHAKE's)
        assert join(NO_IPS) == mismatch
        # the node's key is not a peer at all
        assert join(NOT_A_PEER) == mismatch
        assert all(c[:2] == ["wg", "show"] and c[3] == "dump" for c in calls) and len(calls) == 4
        # the handshaked key, but the interface gives it another address (the recording with
        # that one field edited: an interface lagging the database after an address moved)
        moved = DUMP.replace("\t10.9.0.2/32\t", "\t10.9.0.9/32\t")
        assert moved != DUMP
        recorded_wg(monkeypatch, moved)
        assert join(HANDSHAKED) == mismatch
        calls = recorded_wg(monkeypatch, DUMP)
        st, ans = request(hub, "POST", "/v1/complete", {}, nodes[NOT_A_PEER]["node_secret"],
                          "10.9.0.5", "10.9.0.1")  # fmt: skip
        assert (st, ans) == mismatch
        # the checks before it, each with its own answer
        n = nodes[HANDSHAKED]
        assert request(hub, "GET", "/v1/join", token=n["node_secret"], peer=n["address"])[0] == 403
        assert join(HANDSHAKED, secret="nfs1.wrong")[0] == 401
        assert join(HANDSHAKED, peer="10.9.0.99") == (
            403,
            {"error": "no enrolled node at this overlay address"},
        )
        assert len(calls) == 1  # none of those asked the interface
        hub.cfg = dataclasses.replace(hub.cfg, wg=dataclasses.replace(hub.cfg.wg, apply=False))
        assert join(HANDSHAKED) == (503, {"error": "WireGuard is disabled on this hub"})
    finally:
        hub.stop()


def test_per_token_limit_then_other_tokens_still_enroll(tmp_path):
    hub = make_hub(tmp_path, per_token_rate=0.001, per_token_burst=2)
    try:
        t1, _ = hub.store.create_token("lab", 10, 3600, False)
        t2, _ = hub.store.create_token("lab", 10, 3600, False)
        keys = [key(i) for i in range(5)]
        assert enroll(hub, t1, "n1", keys[0])[0] == 200
        assert enroll(hub, t1, "n2", keys[1])[0] == 200
        st, ans = enroll(hub, t1, "n3", keys[2])
        assert (st, ans) == (429, {"error": "too many enrollments with this token"})
        assert enroll(hub, t2, "n4", keys[3])[0] == 200  # the limit is per token
        assert hub.store.node_states().get("active") == 3  # the refused one wrote nothing
    finally:
        hub.stop()


def test_a_writer_slower_than_the_request_timeout_is_503_busy(tmp_path, monkeypatch):
    slow = WriterCore.process

    def process(self, reqs):
        time.sleep(1.6)
        return slow(self, reqs)

    monkeypatch.setattr(WriterCore, "process", process)
    hub = make_hub(tmp_path, request_timeout=1)
    try:
        token, _ = hub.store.create_token("lab", 10, 3600, False)
        t0 = time.monotonic()
        req = Request(
            "POST",
            "/v1/enroll",
            "HTTP/1.1",
            {"authorization": f"Bearer {token}"},
            "192.0.2.10",
            "192.0.2.1",
            json.dumps({"site": "lab", "node_id": "n1", "wg_pubkey": key(1)}).encode(),
        )
        resp = asyncio.run(hub.handle(req))
        assert time.monotonic() - t0 < 1.5
        assert resp.status == 503 and json.loads(resp.body) == {"error": "hub busy"}
        assert resp.retry_after == 5
    finally:
        hub.stop()


def test_batches_are_at_most_batch_max(tmp_path, monkeypatch):
    sizes: list[int] = []
    real = WriterCore.process

    def process(self, reqs):
        sizes.append(len(reqs))
        time.sleep(0.2)  # let the queue fill while this batch is written
        return real(self, reqs)

    monkeypatch.setattr(WriterCore, "process", process)
    hub = make_hub(tmp_path, batch_max=3)
    try:
        token, _ = hub.store.create_token("lab", 20, 3600, False)

        async def burst():
            reqs = [
                Request(
                    "POST",
                    "/v1/enroll",
                    "HTTP/1.1",
                    {"authorization": f"Bearer {token}"},
                    "192.0.2.10",
                    "192.0.2.1",
                    json.dumps({"site": "lab", "node_id": f"n{i}", "wg_pubkey": key(i)}).encode(),
                )
                for i in range(10)
            ]
            return await asyncio.gather(*(hub.handle(r) for r in reqs))

        answers = asyncio.run(burst())
        assert [r.status for r in answers] == [200] * 10
        assert sum(sizes) == 10 and max(sizes) == 3 and len(sizes) >= 4, sizes
    finally:
        hub.stop()


def test_revoke_invalidates_the_node_secret_for_join_and_reenrollment(tmp_path, monkeypatch):
    """README: `builder hub revoke <node_id>`: peer removed, node secret invalid, address
    quarantined."""
    from builder.hub import admin

    hub = make_hub(tmp_path)
    try:
        token, _ = hub.store.create_token("lab", 10, 3600, False)
        st, n = enroll(hub, token, "node-0", HANDSHAKED)
        assert st == 200
        recorded_wg(monkeypatch, DUMP)
        hub.cfg = dataclasses.replace(hub.cfg, wg=dataclasses.replace(hub.cfg.wg, apply=True))

        def join():
            return request(
                hub, "GET", "/v1/join", token=n["node_secret"], peer=n["address"], local="10.9.0.1"
            )

        assert join()[0] == 200
        admin.revoke_node(hub.cfg.path, n["node_id"])  # what `builder hub revoke` runs
        assert join() == (403, {"error": "no enrolled node at this overlay address"})
        # the old secret no longer proves the identity: re-enrolling with it is refused
        st, ans = request(
            hub,
            "POST",
            "/v1/enroll",
            {"site": "lab", "node_id": n["node_id"], "wg_pubkey": HANDSHAKED, "hostname": "x"},
            n["node_secret"],
        )
        assert st == 401, ans
        # the secret itself is void: its generation moved on (revoked is also terminal, so the
        # two answers above hold even without that; this is what makes a leaked secret useless)
        _, store = admin.open_store(hub.cfg.path)  # the stored row, read afresh
        row = store.node(n["node_id"])
        store.close()
        assert (row["state"], row["ip"], row["generation"]) == ("revoked", None, 2)
        # and the address is not handed out again (quarantined)
        st, other = enroll(hub, token, "node-1", key(7))
        assert st == 200 and other["address"] != n["address"]
    finally:
        hub.stop()
