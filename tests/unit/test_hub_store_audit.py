"""Hub store, word for word: every enrollment rule's answer, the node row it leaves and the
audit trail it writes (issue 18, written against the mutation survivors of store/enroll).

The audit trail is the operator's record of who enrolled, re-keyed, was refused or revoked,
from where and with which token: each row is checked whole (event, node, token, remote,
detail, time) against literals written from the rules in ``builder/hub/enroll.py``'s
docstring, never computed by the store.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sqlite3
import stat

import pytest
from test_hub_store import Clock
from test_hub_store import key as wgkey

from builder.errors import UsageError
from builder.hub import tokens as tok
from builder.hub.store import EnrollRequest, Pool, Store
from tests.support.hubstore import close_in_another_thread, edit_node, new_store, quarantine_rows

T0 = 1_800_000_000.0
KEY = b"s" * 32
FROM = "192.0.2.7"


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


def make_store(tmp_path, clock, cidr="10.100.0.0/24", hub="10.100.0.1", q=3600) -> Store:
    pool = Pool(ipaddress.IPv4Network(cidr), ipaddress.IPv4Address(hub))
    return new_store(
        tmp_path / "hub.db", pool, q, clock=clock, secret_key=KEY, replay_grace_seconds=120
    )


@pytest.fixture
def store(tmp_path, clock) -> Store:
    return make_store(tmp_path, clock)


def enr(token: str, n: int, k: str | None = None, site: str = "lab", **kw) -> EnrollRequest:
    return EnrollRequest(
        token=token,
        site=site,
        node_id=f"node-{n}",
        wg_pubkey=k or wgkey(f"k{n}"),
        hostname=f"host-{n}",
        fingerprint=kw.pop("fp", ""),
        image_version="v7",
        remote=FROM,
        **kw,
    )


def trail(store: Store) -> list[tuple]:
    """Every audit row, oldest first, as (ts, event, node_id, token_id, remote, detail)."""
    rows = reversed(store.audit_events(10**6))
    return [
        (r["ts"], r["event"], r["node_id"], r["token_id"], r["remote"], json.loads(r["detail"]))
        for r in rows
    ]


def since(store: Store, n: int) -> list[tuple]:
    return trail(store)[n:]


def secret(n: dict) -> str:
    return tok.node_secret(KEY, n["node_id"], n["pubkey"], n["generation"])


def outcome(o) -> tuple:
    return (o.status, o.error, o.retry_after, o.add_peer, o.remove_peers, o.replay)


def test_a_new_node_token_use_row_and_audit(store, clock):
    t, tid = store.create_token("lab", 2, 60, False, "rack 4")
    assert trail(store) == [
        (
            T0,
            "token.create",
            None,
            tid,
            None,
            {"approve": False, "site": "lab", "ttl": 60, "uses": 2},
        )
    ]
    clock.t += 5
    o = store.enroll(enr(t, 1))
    assert outcome(o) == (200, "", None, (wgkey("k1"), "10.100.0.2"), [], False)
    n = store.node("node-1")
    assert o.node == n
    assert {k: n[k] for k in n if k not in ("pubkey",)} == {
        "node_id": "node-1",
        "site": "lab",
        "ip": "10.100.0.2",
        "state": "active",
        "generation": 1,
        "hostname": "host-1",
        "fingerprint": "",
        "image_version": "v7",
        "token_id": tid,
        "remote": FROM,
        "created_at": T0 + 5,
        "updated_at": T0 + 5,
        "joined_at": None,
        "bootstrap_token_id": None,
        "replaces": None,
        "pending_pubkey": None,
        "pending_token_id": None,
        "pending_at": None,
    }
    assert since(store, 1) == [
        (
            T0 + 5,
            "enroll.ok",
            "node-1",
            tid,
            FROM,
            {"hostname": "host-1", "ip": "10.100.0.2", "replaces": None},
        )
    ]
    assert store.list_tokens() == [
        {
            "id": tid,
            "site": "lab",
            "max_uses": 2,
            "used": 1,
            "approve": 0,
            "created_at": T0,
            "expires_at": T0 + 60,
            "revoked_at": None,
            "description": "rack 4",
        }
    ]
    assert store.token_usable(tid)
    store.enroll(enr(t, 2))
    assert not store.token_usable(tid)  # used up: 2 of 2
    assert store.list_nodes()[1] == {
        "node_id": "node-2",
        "site": "lab",
        "hostname": "host-2",
        "ip": "10.100.0.3",
        "state": "active",
        "pubkey": wgkey("k2"),
        "fingerprint": "",
        "image_version": "v7",
        "token_id": tid,
        "created_at": T0 + 5,
        "updated_at": T0 + 5,
        "joined_at": None,
        "replaces": None,
        "rekey_pending": 0,
    }


def test_the_audit_log_line_is_the_row_as_json(store, clock, caplog):
    caplog.set_level(logging.INFO, logger="nodeforge.hub.audit")
    clock.t = T0 + 0.12345
    t, tid = store.create_token("lab", 1, 60, True)
    store.enroll(enr(t, 3))
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "nodeforge.hub.audit"]
    assert lines == [
        {
            "ts": 1_800_000_000.123,
            "event": "token.create",
            "node_id": None,
            "token_id": tid,
            "remote": None,
            "approve": True,
            "site": "lab",
            "ttl": 60,
            "uses": 1,
        },
        {
            "ts": 1_800_000_000.123,
            "event": "enroll.pending",
            "node_id": "node-3",
            "token_id": tid,
            "remote": FROM,
            "hostname": "host-3",
            "ip": None,
            "replaces": None,
        },
    ]


def test_refusals_before_any_token_use(store, clock):
    t, tid = store.create_token("lab", 5, 60, False)
    other, oid = store.create_token("other", 5, 60, False)
    gone, gid = store.create_token("lab", 5, 60, False)
    store.revoke_token(gid)
    n0 = len(trail(store))
    cases = [
        (enr("garbage", 1), 401, "unknown enrollment token", None, "unknown token"),
        (enr(t[:-3] + "AAA", 1), 401, "unknown enrollment token", tid, "unknown token"),
        (enr(other, 1), 403, "token is for site 'other', not 'lab'", oid, None),
        (enr(gone, 1), 403, "token revoked", gid, None),
    ]
    for r, status, error, token_id, reason in cases:
        o = store.enroll(r)
        assert outcome(o) == (status, error, None, None, [], False)
        assert o.node is None
        assert since(store, n0) == [
            (T0, "enroll.denied", "node-1", token_id, FROM, {"reason": reason or error})
        ]
        n0 += 1
    assert [x["used"] for x in store.list_tokens()] == [0, 0, 0]
    assert store.list_nodes() == []


def test_expired_and_used_up_at_their_exact_limits(store, clock):
    t, tid = store.create_token("lab", 1, 60, False)
    clock.t = T0 + 60  # expires_at > now is false at the second it expires
    assert not store.token_usable(tid)
    o = store.enroll(enr(t, 1))
    assert (o.status, o.error) == (403, "token expired")
    clock.t = T0 + 59.5
    assert store.token_usable(tid)
    assert store.enroll(enr(t, 1)).status == 200
    n0 = len(trail(store))
    o = store.enroll(enr(t, 2))
    assert (o.status, o.error) == (403, "token used up")
    assert since(store, n0) == [
        (T0 + 59.5, "enroll.denied", "node-2", tid, FROM, {"reason": "token used up"})
    ]


def test_replays(store, clock):
    t, tid = store.create_token("lab", 3, 600, False)
    a = store.enroll(enr(t, 1))
    n0 = len(trail(store))
    clock.t = T0 + 120  # replay_grace_seconds: still fresh at exactly 120 s
    o = store.enroll(enr(t, 1))
    assert outcome(o) == (200, "", None, (wgkey("k1"), "10.100.0.2"), [], True)
    assert o.node == a.node
    assert since(store, n0) == [
        (T0 + 120, "enroll.replay", "node-1", tid, FROM, {"ip": "10.100.0.2", "state": "active"})
    ]
    clock.t = T0 + 120.5
    o = store.enroll(enr(t, 1))
    assert outcome(o) == (
        409,
        "already enrolled: the token is used; the node secret is not handed out again",
        None,
        None,
        [],
        False,
    )
    assert since(store, n0 + 1) == [
        (T0 + 120.5, "enroll.denied", "node-1", tid, FROM, {"reason": "stale replay"})
    ]
    # another token with the node's own id and key
    t2, tid2 = store.create_token("lab", 3, 600, False)
    n1 = len(trail(store))
    o = store.enroll(enr(t2, 1))
    assert (o.status, o.error, o.node) == (403, "this node enrolled with a different token", None)
    assert since(store, n1) == [
        (T0 + 120.5, "enroll.denied", "node-1", tid2, FROM, {"reason": "replay with another token"})
    ]
    # a joined node is not fresh, even within the grace time; its secret still works
    store.enroll(enr(t, 2))
    store.complete("node-2")
    assert store.enroll(enr(t, 2)).status == 409
    r = enr(t, 2, node_secret=secret(store.node("node-2")))
    assert store.enroll(r).status == 200
    # a revoked node asking again with its old key and token
    store.revoke_node("node-1")
    n1 = len(trail(store))
    o = store.enroll(enr(t, 1))
    assert (o.status, o.error, o.node) == (403, "node revoked", None)
    assert since(store, n1) == [
        (T0 + 120.5, "enroll.denied", "node-1", tid, FROM, {"reason": "node revoked"})
    ]


def test_a_pending_replay_and_the_used_count(store, clock):
    t, tid = store.create_token("lab", 1, 600, True)
    first = store.enroll(enr(t, 1))
    assert outcome(first) == (202, "pending approval", 30, None, [], False)
    assert first.node["ip"] is None and first.node["state"] == "pending"
    n0 = len(trail(store))
    o = store.enroll(enr(t, 1))
    assert outcome(o) == (202, "pending approval", 30, None, [], True)
    assert o.node == first.node
    assert since(store, n0) == [(T0, "enroll.replay", "node-1", tid, FROM, {"state": "pending"})]
    assert store.list_tokens()[0]["used"] == 1


def test_an_active_identity_with_a_new_key(store, clock):
    t, tid = store.create_token("lab", 9, 600, False)
    a = store.enroll(enr(t, 1, fp="hw1"))
    clock.t = T0 + 10
    n0 = len(trail(store))
    # a wrong secret
    o = store.enroll(enr(t, 1, k=wgkey("x"), node_secret="nfs1." + "A" * 43))
    assert outcome(o) == (401, "bad node secret", None, None, [], False)
    assert since(store, n0) == [
        (T0 + 10, "enroll.denied", "node-1", tid, FROM, {"reason": "bad node secret"})
    ]
    # no secret: the operator decides; the token is used
    o = store.enroll(enr(t, 1, k=wgkey("new")))
    assert outcome(o) == (
        202,
        "node is active: re-enrollment needs its node secret or `builder hub approve`",
        30,
        None,
        [],
        False,
    )
    assert o.node is None
    n = store.node("node-1")
    assert (n["pubkey"], n["pending_pubkey"], n["pending_token_id"], n["pending_at"]) == (
        wgkey("k1"),
        wgkey("new"),
        tid,
        T0 + 10,
    )
    assert store.list_nodes()[0]["rekey_pending"] == 1
    assert since(store, n0 + 1) == [
        (T0 + 10, "enroll.rekey_pending", "node-1", tid, FROM, {"hostname": "host-1"})
    ]
    assert store.list_tokens()[0]["used"] == 2
    # its polls: same answer, no new use, no new audit row
    o = store.enroll(enr(t, 1, k=wgkey("new")))
    assert outcome(o) == (202, "re-enrollment waits for approval", 30, None, [], True)
    assert store.list_tokens()[0]["used"] == 2
    assert len(trail(store)) == n0 + 2
    # the same poll with another token
    t2, tid2 = store.create_token("lab", 9, 600, False)
    o = store.enroll(enr(t2, 1, k=wgkey("new")))
    assert (o.status, o.error) == (403, "this node enrolled with a different token")
    assert since(store, n0 + 3) == [
        (
            T0 + 10,
            "enroll.denied",
            "node-1",
            tid2,
            FROM,
            {"reason": "this node enrolled with a different token"},
        )
    ]
    # with its own secret: re-keyed at once, same address, old peer out
    clock.t = T0 + 20
    store.set_bootstrap_token("node-1", "boot01")
    n1 = len(trail(store))
    r = enr(t2, 1, k=wgkey("own"), node_secret=secret(a.node))
    r.hostname, r.fingerprint, r.image_version, r.remote = "renamed", "hw2", "v8", "192.0.2.8"
    o = store.enroll(r)
    assert outcome(o) == (200, "", None, (wgkey("own"), "10.100.0.2"), [wgkey("k1")], False)
    n = store.node("node-1")
    assert o.node == n
    assert {k: n[k] for k in n if k != "created_at"} == {
        "node_id": "node-1",
        "site": "lab",
        "pubkey": wgkey("own"),
        "ip": "10.100.0.2",
        "state": "active",
        "generation": 2,
        "hostname": "renamed",
        "fingerprint": "hw2",
        "image_version": "v8",
        "token_id": tid2,
        "remote": "192.0.2.8",
        "updated_at": T0 + 20,
        "joined_at": None,
        "bootstrap_token_id": None,
        "replaces": None,
        "pending_pubkey": None,
        "pending_token_id": None,
        "pending_at": None,
    }
    assert since(store, n1) == [
        (T0 + 20, "enroll.rekey_proven", "node-1", tid2, "192.0.2.8", {}),
        (
            T0 + 20,
            "enroll.reenroll",
            "node-1",
            tid2,
            "192.0.2.8",
            {"ip": "10.100.0.2", "old_pubkey": wgkey("k1")},
        ),
    ]
    assert [x["used"] for x in store.list_tokens()] == [2, 0]  # proof uses no token
    assert store.active_peers() == [(wgkey("own"), "10.100.0.2")]


def test_a_joined_node_rekeyed_with_its_secret_is_active_again(store, clock):
    t, tid = store.create_token("lab", 9, 600, False)
    a = store.enroll(enr(t, 1))
    store.complete("node-1")
    o = store.enroll(enr("", 1, k=wgkey("n2"), node_secret=secret(a.node)))
    assert outcome(o) == (200, "", None, (wgkey("n2"), "10.100.0.2"), [wgkey("k1")], False)
    n = store.node("node-1")
    assert (n["state"], n["generation"], n["token_id"]) == ("active", 2, tid)
    assert store.list_tokens()[0]["used"] == 1


def test_identity_refusals(store, clock):
    t, tid = store.create_token("lab", 9, 600, False)
    store.enroll(enr(t, 1))
    # the key of another node
    n0 = len(trail(store))
    o = store.enroll(enr(t, 2, k=wgkey("k1")))
    assert (o.status, o.error, o.node) == (409, "this WireGuard key belongs to another node", None)
    assert since(store, n0) == [
        (
            T0,
            "enroll.denied",
            "node-2",
            tid,
            FROM,
            {"reason": "this WireGuard key belongs to another node"},
        )
    ]
    # the same node id from another site's token
    other, oid = store.create_token("other", 9, 600, False)
    o = store.enroll(enr(other, 1, k=wgkey("x"), site="other"))
    assert (o.status, o.error) == (409, "node id registered for another site")
    # a pending node id with another key
    ta, _ = store.create_token("lab", 9, 600, True)
    store.enroll(enr(ta, 5))
    o = store.enroll(enr(ta, 5, k=wgkey("y")))
    assert (o.status, o.error) == (409, "this node id is waiting for approval with another key")
    # a revoked node id with a new key
    store.revoke_node("node-1")
    n1 = len(trail(store))
    o = store.enroll(enr(t, 1, k=wgkey("z")))
    assert (o.status, o.error) == (403, "node revoked")
    assert since(store, n1) == [
        (T0, "enroll.denied", "node-1", tid, FROM, {"reason": "node revoked"})
    ]
    assert [x["used"] for x in store.list_tokens()] == [1, 0, 1]


def test_the_node_secret_alone(store, clock):
    t, tid = store.create_token("lab", 9, 600, False)
    a = store.enroll(enr(t, 1))
    b = store.enroll(enr(t, 2))
    n0 = len(trail(store))
    for r in (
        enr("", 9, node_secret=secret(a.node)),  # no such node
        enr("", 1, node_secret=secret(b.node)),  # another node's secret
        enr("", 1, node_secret=""),
    ):
        o = store.enroll(r)
        assert outcome(o) == (401, "bad node secret", None, None, [], False)
    assert since(store, n0) == [
        (T0, "enroll.denied", f"node-{n}", None, FROM, {"reason": "bad node secret"})
        for n in (9, 1, 1)
    ]
    o = store.enroll(enr("", 1, node_secret=secret(a.node), site="other"))
    assert (o.status, o.error) == (409, "node id registered for another site")
    o = store.enroll(enr("", 1, node_secret=secret(a.node)))  # same key: a replay
    assert outcome(o) == (200, "", None, (wgkey("k1"), "10.100.0.2"), [], True)
    assert o.node == store.node("node-1")
    o = store.enroll(enr("", 1, k=wgkey("k2"), node_secret=secret(a.node)))
    assert (o.status, o.error) == (409, "this WireGuard key belongs to another node")
    assert len(trail(store)) == n0 + 3  # these three leave no audit row
    store.revoke_node("node-2")
    o = store.enroll(enr("", 2, node_secret=secret(b.node)))
    assert (o.status, o.error) == (401, "bad node secret")  # revoked: generation moved on


def test_claimed_hardware_waits_and_approval_moves_the_address(store, clock):
    t, tid = store.create_token("lab", 9, 600, False)
    a = store.enroll(enr(t, 1, fp="hw1"))
    store.enroll(enr(t, 2, fp="hw1", site="lab"))  # node-2 claims node-1's hardware
    n2 = store.node("node-2")
    assert (n2["state"], n2["ip"], n2["replaces"]) == ("pending", None, "node-1")
    o = store.enroll(enr(t, 3, fp="hw9"))  # other hardware: no claim
    assert o.status == 200
    # claims only match active nodes of the same site, the newest first
    clock.t = T0 + 1
    c = store.enroll(enr(t, 4, fp="hw1"))
    assert (c.status, c.error) == (202, "hardware of active node node-1: pending approval")
    assert c.node["replaces"] == "node-1"
    n0 = len(trail(store))
    clock.t = T0 + 30
    n = store.approve("node-2")
    assert (n["state"], n["ip"], n["updated_at"]) == ("active", a.node["ip"], T0 + 30)
    old = store.node("node-1")
    assert (old["state"], old["ip"], old["generation"], old["updated_at"]) == (
        "revoked",
        None,
        2,
        T0 + 30,
    )
    assert since(store, n0) == [
        (T0 + 30, "node.replaced", "node-1", None, None, {"by": "node-2", "ip": "10.100.0.2"}),
        (T0 + 30, "node.approve", "node-2", None, None, {"ip": "10.100.0.2"}),
    ]
    # node-4 claimed node-1 too, which is gone now: it gets a fresh address
    n = store.approve("node-4")
    assert (n["state"], n["ip"]) == ("active", "10.100.0.4")
    assert [x["used"] for x in store.list_tokens()] == [4]


def test_approve_and_its_refusals(store, clock):
    t, tid = store.create_token("lab", 9, 600, False)
    store.enroll(enr(t, 1))
    with pytest.raises(UsageError) as e:
        store.approve("nope")
    assert (e.value.message, e.value.hint) == ("no node 'nope'", "see `builder hub nodes`")
    with pytest.raises(UsageError) as e:
        store.approve("node-1")
    assert e.value.message == "node node-1 is active, not pending"
    store.complete("node-1")
    store.enroll(enr(t, 1, k=wgkey("new")))  # re-key waiting
    store.set_bootstrap_token("node-1", "boot01")
    n0 = len(trail(store))
    clock.t = T0 + 40
    n = store.approve("node-1")
    assert {k: n[k] for k in ("pubkey", "token_id", "generation", "state", "updated_at")} == {
        "pubkey": wgkey("new"),
        "token_id": tid,
        "generation": 2,
        "state": "active",
        "updated_at": T0 + 40,
    }
    assert (n["bootstrap_token_id"], n["pending_pubkey"], n["pending_at"]) == (None, None, None)
    assert since(store, n0) == [
        (
            T0 + 40,
            "node.approve_rekey",
            "node-1",
            None,
            None,
            {"ip": "10.100.0.2", "old_pubkey": wgkey("k1")},
        )
    ]
    # a pending new key that another node took meanwhile
    store.enroll(enr(t, 1, k=wgkey("newer")))
    store.enroll(enr(t, 2, k=wgkey("newer2")))
    edit_node(store, "node-1", pending_pubkey=wgkey("newer2"))
    with pytest.raises(UsageError) as e:
        store.approve("node-1")
    assert e.value.message == "the new key of node-1 now belongs to another node"


def test_revoke_node_quarantine_and_revoke_token(store, clock):
    t, tid = store.create_token("lab", 9, 10**6, False)
    store.enroll(enr(t, 1))
    n0 = len(trail(store))
    clock.t = T0 + 7
    old = store.revoke_node("node-1")
    assert (old["state"], old["ip"], old["generation"]) == ("active", "10.100.0.2", 1)
    n = store.node("node-1")
    assert (n["state"], n["ip"], n["generation"], n["updated_at"]) == ("revoked", None, 2, T0 + 7)
    assert quarantine_rows(store) == [("10.100.0.2", T0 + 7 + 3600)]
    assert since(store, n0) == [(T0 + 7, "node.revoke", "node-1", None, None, {"ip": "10.100.0.2"})]
    with pytest.raises(UsageError) as e:
        store.revoke_node("nope")
    assert (e.value.message, e.value.hint) == ("no node 'nope'", "see `builder hub nodes`")
    # the quarantine ends at its second, not before
    clock.t = T0 + 7 + 3600
    assert store.enroll(enr(t, 2)).node["ip"] == "10.100.0.2"
    clock.t = T0 + 8
    store.revoke_token(tid)
    assert store.list_tokens()[0]["revoked_at"] == T0 + 8
    clock.t = T0 + 9
    store.revoke_token(tid)  # again: no error, the first time stays
    assert store.list_tokens()[0]["revoked_at"] == T0 + 8
    assert [e[:5] for e in trail(store)[-2:]] == [
        (T0 + 8, "token.revoke", None, tid, None),
        (T0 + 9, "token.revoke", None, tid, None),
    ]
    with pytest.raises(UsageError) as e:
        store.revoke_token("nope")
    assert (e.value.message, e.value.hint) == (
        "no token with id 'nope'",
        "see `builder hub token list`",
    )


def test_join_material_and_complete_bookkeeping(store, clock):
    t, tid = store.create_token("lab", 9, 600, False)
    store.enroll(enr(t, 1))
    n0 = len(trail(store))
    assert store.set_bootstrap_token("node-1", "abc", "10.100.0.2") is None
    clock.t = T0 + 3
    assert store.complete("node-1", "10.100.0.2") == "abc"
    n = store.node("node-1")
    assert (n["state"], n["joined_at"], n["updated_at"], n["bootstrap_token_id"]) == (
        "joined",
        T0 + 3,
        T0 + 3,
        None,
    )
    assert since(store, n0) == [
        (T0, "node.join_material", "node-1", None, "10.100.0.2", {}),
        (T0 + 3, "node.complete", "node-1", None, "10.100.0.2", {}),
    ]
    assert store.set_bootstrap_token("nope", "x") is None
    assert store.complete("nope") is None
    store.revoke_node("node-1")
    store.complete("node-1")
    assert store.node("node-1")["state"] == "revoked"  # complete never revives a node
    assert store.node_states() == {"revoked": 1}


def test_create_token_refusals(store):
    with pytest.raises(UsageError) as e:
        store.create_token("lab", 0, 60, False)
    assert e.value.message == "--uses must be at least 1"
    with pytest.raises(UsageError) as e:
        store.create_token("", 1, 60, False)
    assert e.value.message == "--site is required"
    t, tid = store.create_token("lab", 1, 60, False)  # one use is enough
    assert store.token_usable(tid) is True
    assert store.token_usable("nope") is False
    store.revoke_token(tid)
    assert store.token_usable(tid) is False
    assert store.ping() is None  # a readable store: no error


def test_a_failing_request_rolls_back_alone(store, clock, monkeypatch):
    t, tid = store.create_token("lab", 9, 600, False)
    real = Store._allocate

    calls = []

    def boom(self, c, ctx):
        calls.append(1)
        ip = real(self, c, ctx)
        if len(calls) == 2:  # node-2: after its address was taken from the batch's set
            raise RuntimeError("disk on fire")
        return ip

    monkeypatch.setattr(Store, "_allocate", boom)
    n0 = len(trail(store))
    outs = store.enroll_many([enr(t, 1), enr(t, 2), enr(t, 3)])
    assert [(o.status, o.error) for o in outs] == [
        (200, ""),
        (500, "internal error: RuntimeError"),
        (200, ""),
    ]
    # node-2's token use, audit row and address rolled back with it: node-3 gets that address
    assert [n["node_id"] for n in store.list_nodes()] == ["node-1", "node-3"]
    assert [n["ip"] for n in store.list_nodes()] == ["10.100.0.2", "10.100.0.3"]
    assert store.list_tokens()[0]["used"] == 2
    assert [(e[1], e[2]) for e in since(store, n0)] == [
        ("enroll.ok", "node-1"),
        ("enroll.ok", "node-3"),
    ]


def test_an_exhausted_pool_rolls_back_alone(tmp_path, clock):
    s = make_store(tmp_path, clock, "10.9.0.0/30", "10.9.0.1", 60)
    t, tid = s.create_token("lab", 9, 600, False)
    n0 = len(trail(s))
    outs = s.enroll_many([enr(t, 1), enr(t, 2), enr(t, 1)])
    assert [(o.status, o.error, o.retry_after) for o in outs] == [
        (200, "", None),
        (503, "address pool 10.9.0.0/30 is exhausted", 300),
        (200, "", None),
    ]
    assert [e[1] for e in since(s, n0)] == ["enroll.ok", "enroll.replay"]
    assert s.list_tokens()[0]["used"] == 1


def test_pool_edges():
    pool = Pool(
        ipaddress.IPv4Network("10.0.0.0/29"),
        ipaddress.IPv4Address("10.0.0.1"),
        [ipaddress.IPv4Address("10.0.0.5")],
    )
    ip = lambda s: int(ipaddress.IPv4Address(s))  # noqa: E731
    assert [pool.usable(ip(f"10.0.0.{i}")) for i in range(8)] == [
        False,  # network
        False,  # hub
        True,
        True,
        True,
        False,  # reserved
        True,
        False,  # broadcast
    ]
    assert pool.pick(set(), ip("10.0.0.4")) == ip("10.0.0.4")
    assert pool.pick(set(), ip("10.0.0.5")) == ip("10.0.0.6")
    assert pool.pick(set(), ip("10.0.0.0")) == ip("10.0.0.2")
    assert pool.pick({ip("10.0.0.2")}, 0) == ip("10.0.0.3")
    assert pool.pick(set(), ip("10.0.0.6")) == ip("10.0.0.6")
    # the hub at the top: the first host address is usable, the last is not
    top = Pool(ipaddress.IPv4Network("10.0.0.0/29"), ipaddress.IPv4Address("10.0.0.6"))
    assert [top.usable(ip(f"10.0.0.{i}")) for i in (0, 1, 5, 6, 7)] == [
        False,
        True,
        True,
        False,
        False,
    ]


@pytest.mark.sqlite_only("hub.db's mode and PRAGMAs; etcd's side: test_hub_store_etcd.py")
def test_the_database_file_and_its_settings(tmp_path, clock):
    path = tmp_path / "sub" / "hub.db"
    pool = Pool(ipaddress.IPv4Network("10.9.0.0/24"), ipaddress.IPv4Address("10.9.0.1"))
    s = Store(path, pool, clock=clock)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    c = s.conn()
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL (sqlite.org/pragma.html)
    assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert c.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert s.conn() is c  # one per thread
    s.close()
    assert s.conn() is not c
    assert s.conn().execute("SELECT count(*) FROM nodes").fetchone()[0] == 0
    s.close()
    s.close()  # twice: nothing to close
    assert close_in_another_thread(s) == []  # a thread that never opened a connection


@pytest.mark.sqlite_only("an old hub.db; etcd's side: test_hub_store_etcd.py")
def test_an_old_database_gets_the_new_columns(tmp_path, clock):
    path = tmp_path / "hub.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE nodes(node_id TEXT PRIMARY KEY, site TEXT NOT NULL,"
        " pubkey TEXT NOT NULL UNIQUE, ip TEXT UNIQUE, state TEXT NOT NULL,"
        " generation INTEGER NOT NULL DEFAULT 1, hostname TEXT NOT NULL DEFAULT '',"
        " fingerprint TEXT NOT NULL DEFAULT '', image_version TEXT NOT NULL DEFAULT '',"
        " token_id TEXT, remote TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL,"
        " joined_at REAL, bootstrap_token_id TEXT);"
    )
    old.close()
    pool = Pool(ipaddress.IPv4Network("10.9.0.0/24"), ipaddress.IPv4Address("10.9.0.1"))
    s = Store(path, pool, clock=clock)
    cols = {r[1]: r[2] for r in s.conn().execute("PRAGMA table_info(nodes)")}
    assert {
        k: cols[k] for k in ("replaces", "pending_pubkey", "pending_token_id", "pending_at")
    } == {
        "replaces": "TEXT",
        "pending_pubkey": "TEXT",
        "pending_token_id": "TEXT",
        "pending_at": "REAL",
    }
    t, _ = s.create_token("lab", 1, 60, False)
    assert s.enroll(enr(t, 1)).status == 200


def test_audit_events_newest_first_and_limited(store, clock):
    for i in range(3):
        clock.t = T0 + i
        store.create_token("lab", 1, 60, False)
    got = store.audit_events(2)
    assert [(e["ts"], e["event"]) for e in got] == [
        (T0 + 2, "token.create"),
        (T0 + 1, "token.create"),
    ]
    assert len(store.audit_events()) == 3
