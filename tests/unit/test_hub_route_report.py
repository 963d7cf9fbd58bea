"""POST /v1/route (a node says its overlay route goes through this hub), in process like
test_hub_routes.py: through the tunnel check, then the body checks, word for word (issue 18,
written for the mutants of ``Hub._route_report``, which no unit test reached).

``set_route`` exists only on a store shared by several hubs (etcd); here a recording
stand-in for it is put on the store (the SQLite one has none; on etcd, in
tests/integration/test_hub_routes_etcd.py, the real one answers first).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

from test_hub_routes import DUMP, HANDSHAKED, enroll, key, make_hub, recorded_wg, request

from builder.hub import api
from builder.hub.server import Request
from tests.support.hubstore import backend


def test_route_report(tmp_path, monkeypatch):
    hub = make_hub(tmp_path)
    try:
        token, _ = hub.store.create_token("lab", 10, 3600, False)
        st, node = enroll(hub, token, "node-0", HANDSHAKED)
        assert st == 200 and node["address"] == "10.9.0.2"
        recorded_wg(monkeypatch, DUMP)
        hub.cfg = dataclasses.replace(hub.cfg, wg=dataclasses.replace(hub.cfg.wg, apply=True))
        hub.metrics.hub = "hub-a"

        def report(body, secret=node["node_secret"], peer="10.9.0.2"):
            return request(hub, "POST", "/v1/route", body, secret, peer, "10.9.0.1")

        def raw(data: bytes):
            headers = {
                "content-length": str(len(data)),
                "authorization": f"Bearer {node['node_secret']}",
            }
            req = Request("POST", "/v1/route", "HTTP/1.1", headers, "10.9.0.2", "10.9.0.1", data)
            resp = asyncio.run(hub.handle(req))
            return resp.status, json.loads(resp.body)

        mine = {"hub": hub.hub_pubkey}
        # the tunnel check comes first
        assert report(mine, secret="nfs1.wrong") == (401, {"error": "bad node secret"})
        assert report(mine, peer="10.9.0.99") == (
            403,
            {"error": "no enrolled node at this overlay address"},
        )
        # then the body
        assert raw(b"{not json") == (400, {"error": "body: not JSON"})
        wrong_hub = (400, {"error": "hub: a node reports its route to the hub it goes through"})
        assert report({"hub": "another hub's key"}) == wrong_hub
        assert report(["hub", hub.hub_pubkey]) == wrong_hub
        assert raw(b"") == wrong_hub  # no body: {} names no hub
        monkeypatch.setattr(api.time, "time", lambda: 1_800_000_123.5)
        info = {"hub": "hub-a", "hub_ip": "10.9.0.1", "at": 1_800_000_123.5}
        if backend() == "sqlite":  # one hub on a SQLite store: nothing to choose
            assert report(mine) == (
                404,
                {"error": "one hub on this store: there is no route to choose"},
            )
        else:  # etcd's own set_route stores it
            assert report(mine) == (200, {"status": "ok", **info})
            assert hub.store.routes() == {"node-0": info}  # type: ignore[attr-defined]
        # a store shared by several hubs records it, with this hub's name and time
        got = []
        hub.store.set_route = lambda node_id, info: got.append((node_id, info)) or True  # type: ignore[attr-defined]
        assert report(mine) == (200, {"status": "ok", **info})
        assert got == [("node-0", info)]
        # the store refuses: the node was revoked after the tunnel check read it
        hub.store.set_route = lambda node_id, info: False  # type: ignore[attr-defined]
        assert report(mine) == (403, {"error": "no enrolled node at this overlay address"})
    finally:
        hub.stop()


def test_tunnel_check_texts(tmp_path, monkeypatch):
    hub = make_hub(tmp_path)
    try:
        token, _ = hub.store.create_token("lab", 10, 3600, False)
        st, node = enroll(hub, token, "node-0", HANDSHAKED)
        recorded_wg(monkeypatch, DUMP)
        hub.cfg = dataclasses.replace(hub.cfg, wg=dataclasses.replace(hub.cfg.wg, apply=True))
        secret = node["node_secret"]

        def join(auth, local="10.9.0.1"):
            headers = {"content-length": "0", "authorization": auth}
            req = Request("GET", "/v1/join", "HTTP/1.1", headers, "10.9.0.2", local, b"")
            resp = asyncio.run(hub.handle(req))
            return resp.status, json.loads(resp.body)

        assert join(f"Bearer {secret}", local="192.0.2.1") == (
            403,
            {"error": "only answered through the WireGuard tunnel"},
        )
        # the secret counts only as a Bearer credential
        assert join(f"Token: {secret}") == (401, {"error": "bad node secret"})
        assert join(f"Bearer {secret}")[0] == 200
        # a joined node still reaches the hub through its tunnel
        hub.store.complete("node-0")
        assert join(f"Bearer {secret}")[0] == 200
    finally:
        hub.stop()


def test_failed_authentications_spend_the_site_and_the_token_budget(tmp_path):
    hub = make_hub(tmp_path, failed_auth_rate=0.001, failed_auth_burst=3)
    try:
        t, tid = hub.store.create_token("lab", 10, 3600, False)
        t2, _ = hub.store.create_token("lab", 10, 3600, False)
        wrong = t[:-3] + ("AAA" if not t.endswith("AAA") else "BBB")  # t's id, wrong secret
        for i in range(3):
            assert enroll(hub, wrong, f"n{i}", key(i))[0] == 401
        assert hub.metrics.auth_failures == 3
        # the site's budget is spent: t, which failed itself, waits; t2 never failed and passes
        busy = (429, {"error": "too many failed authentications on this hub: try again later"})
        assert enroll(hub, t, "n7", key(7)) == busy
        assert enroll(hub, t2, "n8", key(8))[0] == 200
        # a token that cannot be used any more does not pass the gate either
        t3, tid3 = hub.store.create_token("lab", 10, 3600, False)
        hub.store.revoke_token(tid3)
        assert enroll(hub, t3, "n6", key(6)) == busy
        # Retry-After: the failing token's own wait, or the site's for no usable token;
        # one token back takes 1 / 0.001 = 1000 s
        assert 990 <= raw_enroll(hub, t).retry_after <= 1000
        assert 990 <= raw_enroll(hub, "nf1.malformed").retry_after <= 1000
        assert hub.metrics.auth_throttled == 4
        assert hub.metrics.auth_failures == 3  # throttled requests are not evaluated
    finally:
        hub.stop()


def raw_enroll(hub, token, peer="192.0.2.10"):
    body = json.dumps({"site": "lab", "node_id": "n9", "wg_pubkey": key(9)}).encode()
    headers = {"content-length": str(len(body)), "authorization": f"Bearer {token}"}
    req = Request("POST", "/v1/enroll", "HTTP/1.1", headers, peer, "192.0.2.1", body)
    return asyncio.run(hub.handle(req))


def test_per_address_limit_on_v1_only(tmp_path):
    hub = make_hub(tmp_path, per_ip_rate=0.001, per_ip_burst=2)
    try:
        slow = (429, {"error": "too many requests from this address"})
        for _ in range(2):
            assert request(hub, "GET", "/v1/nope", peer="192.0.2.50")[0] == 404
        assert request(hub, "GET", "/v1/nope", peer="192.0.2.50") == slow
        assert 990 <= raw_enroll(hub, "nf1.x", peer="192.0.2.50").retry_after <= 1000
        assert request(hub, "GET", "/v1/nope", peer="192.0.2.51")[0] == 404  # its own budget
        for _ in range(3):
            assert request(hub, "GET", "/healthz", peer="192.0.2.50")[0] == 200  # not /v1/
    finally:
        hub.stop()


def test_route_table_texts(tmp_path):
    hub = make_hub(tmp_path)
    try:
        creds = (400, {"error": "credentials belong in the Authorization header, not the URL"})
        assert request(hub, "GET", "/v1/join?token=x") == creds
        assert request(hub, "GET", "/v1/join?Access_TOKEN=x") == creds
        assert request(hub, "POST", "/v1/enroll?site=lab", {}) == creds  # any query on enroll
        # another query elsewhere is no credential: the route's own check answers
        assert request(hub, "GET", "/v1/join?x=1") == (
            403,
            {"error": "only answered through the WireGuard tunnel"},
        )
        assert request(hub, "GET", "/nope") == (404, {"error": "not found"})
        st, body = request(hub, "GET", "/metrics")
        assert st == 200 and b"nodeforge_hub" in body
    finally:
        hub.stop()
