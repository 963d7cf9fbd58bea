"""POST /v1/enroll, GET /v1/join and POST /v1/complete answered word for word (issue 18,
round 5: the mutants of ``Hub.enroll``, ``enroll_response``, ``_join`` and ``_complete``).

In process like test_hub_routes.py (a real Hub on a real SQLite store, the writer in a
thread). Expected values come from outside the code under test: the node secret is the
HMAC-SHA256 of ``node_id\\npubkey\\ngeneration`` under the hub's secret.key (the formula
test_hub_tokens_exact.py checks against openssl), the hub's public key is what ``wg pubkey``
prints for its wg.key, the rest are the configuration's literals. The join provider is a
recording test double (kubeadm itself is tested in test_hub_provider.py).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import subprocess

import pytest
from test_hub_routes import DUMP, HANDSHAKED, key, make_hub, recorded_wg

from builder.errors import BuilderError
from builder.hub.server import Request

pytestmark = pytest.mark.allow_subprocess  # `wg pubkey` for the expected hub key


def call(hub, method, path, body=None, auth=None, peer="192.0.2.10", local="192.0.2.1"):
    data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
    headers = {"content-length": str(len(data))}
    if auth is not None:
        headers["authorization"] = auth
    resp = asyncio.run(hub.handle(Request(method, path, "HTTP/1.1", headers, peer, local, data)))
    return resp.status, json.loads(resp.body), resp.retry_after


def enroll(hub, auth, node_id="node-0", pub=HANDSHAKED, **extra):
    body = {"site": "lab", "node_id": node_id, "wg_pubkey": pub, **extra}
    return call(hub, "POST", "/v1/enroll", body, auth)


def secret_of(hub, node_id: str, pub: str, generation: int) -> str:
    k = hub.cfg.secret_key_file.read_bytes().strip()  # the file ends in a newline
    mac = hmac.new(k, f"{node_id}\n{pub}\n{generation}".encode(), hashlib.sha256).digest()
    return "nfs1." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


@pytest.fixture
def hub(tmp_path):
    h = make_hub(tmp_path, failed_auth_rate=1, failed_auth_burst=10)
    yield h
    h.stop()


def test_enroll_answer_field_by_field(hub) -> None:
    wg = subprocess.run(
        ["wg", "pubkey"],
        input=hub.cfg.wg.private_key_file.read_bytes(),
        check=True,
        capture_output=True,
    )
    token, _ = hub.store.create_token("lab", 5, 3600, False)
    st, ans, ra = enroll(hub, f"Bearer  {token} ")  # spaces around the token are dropped
    assert (st, ra) == (200, None)
    assert ans == {
        "node_id": "node-0",
        "address": "10.9.0.2",
        "overlay_cidr": "10.9.0.0/16",
        "hub": {
            "pubkey": wg.stdout.decode().strip(),
            "endpoint": "hub.example:51820",
            "overlay_ip": "10.9.0.1",
        },
        "mtu": 1420,
        "keepalive": 25,
        "node_secret": secret_of(hub, "node-0", HANDSHAKED, 1),
        "join_url": "https://10.9.0.1:8443/v1/join",
    }
    assert dict(hub.metrics.enroll) == {"ok": 1}
    assert hub.metrics.lat_count == 1
    # the same request again is a replay: the same answer, counted as one
    st, again, _ = enroll(hub, f"Bearer {token}")
    assert (st, again) == (200, ans)
    assert dict(hub.metrics.enroll) == {"ok": 1, "ok_replay": 1}
    assert hub.metrics.auth_failures == 0


def test_missing_or_other_authorization(hub) -> None:
    missing = (401, {"error": "missing enrollment token (Authorization: Bearer …)"}, None)
    assert enroll(hub, None) == missing
    assert enroll(hub, "Bearer ") == missing
    assert enroll(hub, "Bearer    ") == missing
    token, _ = hub.store.create_token("lab", 5, 3600, False)
    assert enroll(hub, f"Basic {token}") == missing
    assert enroll(hub, f"bearer {token}") == missing
    assert hub.metrics.auth_failures == 0  # no token given: nothing to count as a failure
    assert hub.store.node_states() == {}


def test_malformed_token_spends_the_dash_budget(hub) -> None:
    assert enroll(hub, "Bearer nf1.zz") == (401, {"error": "malformed enrollment token"}, None)
    assert hub.metrics.auth_failures == 1
    assert hub.auth_budget.peek("site") == pytest.approx(9, abs=0.1)
    assert hub.auth_budget.peek("id:-") == pytest.approx(9, abs=0.1)
    assert dict(hub.metrics.enroll) == {}


def test_unknown_token_spends_its_own_budget(hub) -> None:
    tid = "0123456789abcdef"  # well-formed, never created
    st, ans, _ = enroll(hub, f"Bearer nf1.{tid}." + "A" * 43)
    assert (st, ans) == (401, {"error": "unknown enrollment token"})
    assert hub.metrics.auth_failures == 1
    assert hub.auth_budget.peek("id:" + tid) == pytest.approx(9, abs=0.1)
    assert hub.auth_budget.peek("id:-") == pytest.approx(10, abs=0.1)
    assert dict(hub.metrics.enroll) == {"401": 1}


def test_used_up_token_is_403_and_counted_by_status(hub) -> None:
    token, _ = hub.store.create_token("lab", 1, 3600, False)
    assert enroll(hub, f"Bearer {token}")[0] == 200
    st, ans, ra = enroll(hub, f"Bearer {token}", node_id="node-1", pub=key(1))
    assert (st, set(ans), ra) == (403, {"error"}, None)
    assert dict(hub.metrics.enroll) == {"ok": 1, "403": 1}
    assert hub.metrics.auth_failures == 0


def test_a_token_made_with_approve_waits(hub) -> None:
    token, _ = hub.store.create_token("lab", 5, 3600, True)
    st, ans, ra = enroll(hub, f"Bearer {token}")
    assert (st, ra) == (202, 30)  # pending_retry_seconds
    assert set(ans) == {"status", "detail"} and ans["status"] == "pending"
    assert ans["detail"] and "approv" in ans["detail"]
    assert dict(hub.metrics.enroll) == {"pending": 1}


def test_per_token_limit_answers_429_with_its_wait(tmp_path) -> None:
    hub = make_hub(tmp_path, per_token_rate=0.5, per_token_burst=1)
    try:
        token, _ = hub.store.create_token("lab", 5, 3600, False)
        assert enroll(hub, f"Bearer {token}")[0] == 200
        assert enroll(hub, f"Bearer {token}", node_id="node-1", pub=key(1)) == (
            429,
            {"error": "too many enrollments with this token"},
            2,
        )
    finally:
        hub.stop()


def test_re_enrollment_with_the_node_secret(hub) -> None:
    token, _ = hub.store.create_token("lab", 1, 3600, False)
    st, first, _ = enroll(hub, f"Bearer {token}")
    assert st == 200
    # a wrong secret of the right shape: 401, spent on the site and the '-' bucket
    wrong = "nfs1." + "A" * 43
    st, ans, _ = enroll(hub, f"Bearer {wrong}", pub=key(7))
    assert st == 401 and hub.metrics.auth_failures == 1
    assert hub.auth_budget.peek("id:-") == pytest.approx(9, abs=0.1)
    assert hub.auth_budget.peek("id:secret:node-0") == pytest.approx(10, abs=0.1)
    # the right secret re-keys the node (the token is used up: the secret alone proves it)
    st, ans, _ = enroll(hub, f"Bearer {first['node_secret']}", pub=key(7))
    assert st == 200
    assert ans["address"] == "10.9.0.2"
    assert ans["node_secret"] == secret_of(hub, "node-0", key(7), 2)


class Provider:
    """Recording join provider: a new bootstrap token id per call, deletes recorded."""

    def __init__(self) -> None:
        self.n = 0
        self.deleted: list[str | None] = []
        self.fail_material = False
        self.fail_delete = False

    def material(self, node):
        if self.fail_material:
            raise BuilderError("kubeadm token create: connection refused")
        self.n += 1
        return {"token": f"abcdef.{self.n:016d}", "token_id": f"tid{self.n}", "ip": node["ip"]}

    def delete(self, tid):
        self.deleted.append(tid)
        if self.fail_delete:
            raise BuilderError("kubeadm token delete: timed out")


def tunnel_hub(hub, monkeypatch):
    token, _ = hub.store.create_token("lab", 5, 3600, False)
    st, node, _ = enroll(hub, f"Bearer {token}")
    assert st == 200 and node["address"] == "10.9.0.2"
    recorded_wg(monkeypatch, DUMP)
    hub.cfg = dataclasses.replace(hub.cfg, wg=dataclasses.replace(hub.cfg.wg, apply=True))
    prov = Provider()
    hub.provider = prov
    return node, prov


def tunnel(hub, method, path, node):
    return call(hub, method, path, {}, f"Bearer {node['node_secret']}", "10.9.0.2", "10.9.0.1")


def audit(hub, event):
    return [(e["node_id"], e["remote"]) for e in hub.store.audit_events() if e["event"] == event]


def test_join_material_and_the_previous_token_deleted(hub, monkeypatch, caplog) -> None:
    node, prov = tunnel_hub(hub, monkeypatch)
    st, mat, _ = tunnel(hub, "GET", "/v1/join", node)
    assert (st, mat) == (200, {"token": "abcdef.0000000000000001", "token_id": "tid1",
                               "ip": "10.9.0.2"})  # fmt: skip
    assert prov.deleted == []  # no earlier token
    assert audit(hub, "node.join_material") == [("node-0", "10.9.0.2")]
    st, mat, _ = tunnel(hub, "GET", "/v1/join", node)
    assert st == 200 and mat["token_id"] == "tid2"
    assert prov.deleted == ["tid1"]
    prov.fail_delete = True
    with caplog.at_level(logging.WARNING, logger="nodeforge.hub"):
        st, mat, _ = tunnel(hub, "GET", "/v1/join", node)
    assert st == 200 and mat["token_id"] == "tid3" and prov.deleted == ["tid1", "tid2"]
    assert [r.getMessage() for r in caplog.records if r.name == "nodeforge.hub"] == [
        "could not delete old bootstrap token tid2: kubeadm token delete: timed out"
    ]


def test_join_material_unavailable(hub, monkeypatch, caplog) -> None:
    node, prov = tunnel_hub(hub, monkeypatch)
    prov.fail_material = True
    with caplog.at_level(logging.ERROR, logger="nodeforge.hub"):
        assert tunnel(hub, "GET", "/v1/join", node) == (
            503,
            {"error": "join material unavailable"},
            30,
        )
    assert [r.getMessage() for r in caplog.records if r.name == "nodeforge.hub"] == [
        "join material for node-0: kubeadm token create: connection refused"
    ]
    assert audit(hub, "node.join_material") == []


def test_complete_deletes_the_bootstrap_token(hub, monkeypatch, caplog) -> None:
    node, prov = tunnel_hub(hub, monkeypatch)
    assert tunnel(hub, "GET", "/v1/join", node)[0] == 200
    assert tunnel(hub, "POST", "/v1/complete", node) == (
        200,
        {"status": "joined", "node_id": "node-0"},
        None,
    )
    assert prov.deleted == ["tid1"]
    assert hub.store.node("node-0")["state"] == "joined"
    assert audit(hub, "node.complete") == [("node-0", "10.9.0.2")]
    assert tunnel(hub, "GET", "/v1/join", node)[0] == 200  # tid2
    prov.fail_delete = True
    with caplog.at_level(logging.WARNING, logger="nodeforge.hub"):
        assert tunnel(hub, "POST", "/v1/complete", node)[0] == 200
    assert prov.deleted == ["tid1", "tid2"]
    assert [r.getMessage() for r in caplog.records if r.name == "nodeforge.hub"] == [
        "could not delete bootstrap token tid2: kubeadm token delete: timed out"
    ]
    # completed again: no token left, the provider is asked to delete None (skips it)
    prov.fail_delete = False
    assert tunnel(hub, "POST", "/v1/complete", node)[0] == 200
    assert prov.deleted == ["tid1", "tid2", None]


def test_join_and_complete_refused_outside_the_tunnel(hub, monkeypatch) -> None:
    node, prov = tunnel_hub(hub, monkeypatch)
    outside = call(hub, "GET", "/v1/join", {}, f"Bearer {node['node_secret']}", "10.9.0.2")
    assert outside == (403, {"error": "only answered through the WireGuard tunnel"}, None)
    st, _, _ = call(hub, "POST", "/v1/complete", {}, f"Bearer {node['node_secret']}", "10.9.0.2")
    assert st == 403 and prov.n == 0 and prov.deleted == []
    assert hub.store.node("node-0")["state"] == "active"


def test_the_same_bootstrap_token_again_is_not_deleted(hub, monkeypatch) -> None:
    """A provider that hands out the token it gave last time (the previous one is the current
    one): deleting it would break the join the node is about to make."""
    node, prov = tunnel_hub(hub, monkeypatch)
    prov.material = lambda n: {"token": "abcdef.0123456789abcdef", "token_id": "same"}
    assert tunnel(hub, "GET", "/v1/join", node)[0] == 200
    assert tunnel(hub, "GET", "/v1/join", node)[0] == 200
    assert prov.deleted == []


def test_the_hubs_own_key_and_the_request_remote(hub) -> None:
    token, _ = hub.store.create_token("lab", 5, 3600, False)
    assert enroll(hub, f"Bearer {token}", pub=hub.hub_pubkey) == (
        400,
        {"error": "wg_pubkey: this is the hub's own key"},
        None,
    )
    assert enroll(hub, f"Bearer {token}")[0] == 200
    ok = [e for e in hub.store.audit_events() if e["event"] == "enroll.ok"]
    assert [(e["node_id"], e["remote"]) for e in ok] == [("node-0", "192.0.2.10")]
    assert hub.store.node("node-0")["remote"] == "192.0.2.10"
    assert 0 < hub.metrics.lat_sum < 10  # seconds this enrollment took, not a clock reading


def test_other_hubs_on_a_shared_store_are_in_the_answer(hub) -> None:
    """A store shared by several hubs (etcd) lists them: a stand-in ``hubs`` on SQLite."""
    me = hub.hub_info()
    other = {"pubkey": key(99), "endpoint": "hub-b.example:51820", "overlay_ip": "10.9.0.254"}
    hub.store.hubs = lambda: [me, other]
    token, _ = hub.store.create_token("lab", 5, 3600, False)
    st, ans, _ = enroll(hub, f"Bearer {token}")
    assert st == 200 and ans["other_hubs"] == [other]
