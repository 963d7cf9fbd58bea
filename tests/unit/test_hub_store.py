"""Hub store: allocation, quarantine, token semantics, replay, re-enrollment, approval."""

from __future__ import annotations

import base64
import hashlib
import ipaddress

import pytest

from builder.errors import UsageError
from builder.hub import tokens as tok
from builder.hub.store import EnrollRequest, Pool, PoolExhausted, Store
from tests.support.hubstore import new_store


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def key(seed: str) -> str:
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_store(tmp_path, clock, cidr="10.100.0.0/16", hub="10.100.0.1", reserved=(), q=3600):
    pool = Pool(
        ipaddress.IPv4Network(cidr),
        ipaddress.IPv4Address(hub),
        [ipaddress.IPv4Address(r) for r in reserved],
    )
    return new_store(
        tmp_path / "hub.db", pool, q, clock=clock, secret_key=KEY, replay_grace_seconds=120
    )


KEY = b"k" * 32


def secret_of(n: dict) -> str:
    return tok.node_secret(KEY, n["node_id"], n["pubkey"], n["generation"])


@pytest.fixture
def store(tmp_path, clock) -> Store:
    return make_store(tmp_path, clock)


def req(token: str, n: int, site: str = "lab", k: str | None = None, fp: str = "") -> EnrollRequest:
    return EnrollRequest(
        token=token,
        site=site,
        node_id=f"node-{n}",
        wg_pubkey=k or key(f"k{n}"),
        hostname=f"h{n}",
        fingerprint=fp,
    )


def used(store: Store, tid: str) -> int:
    return next(t["used"] for t in store.list_tokens() if t["id"] == tid)


def test_pool_skips_network_hub_broadcast_and_reserved():
    pool = Pool(
        ipaddress.IPv4Network("10.0.0.0/29"),
        ipaddress.IPv4Address("10.0.0.1"),
        [ipaddress.IPv4Address("10.0.0.3")],
    )
    got, taken = [], set()
    for _ in range(4):
        ip = pool.pick(taken)
        taken.add(ip)
        got.append(str(ipaddress.IPv4Address(ip)))
    assert got == ["10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    with pytest.raises(PoolExhausted):
        pool.pick(taken)


def test_hub_in_the_middle_of_the_range_is_never_handed_out(tmp_path, clock):
    s = make_store(tmp_path, clock, cidr="10.9.0.0/29", hub="10.9.0.4")
    t, tid = s.create_token("lab", 10, 3600, False)
    ips = [s.enroll(req(t, i)).node["ip"] for i in range(5)]
    assert ips == ["10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.5", "10.9.0.6"]


def test_exhaustion_is_503_and_does_not_use_the_token(tmp_path, clock):
    s = make_store(tmp_path, clock, cidr="10.9.0.0/30", hub="10.9.0.1")
    t, tid = s.create_token("lab", 5, 3600, False)
    assert s.enroll(req(t, 1)).status == 200
    o = s.enroll(req(t, 2))
    assert o.status == 503 and "exhausted" in o.error
    assert used(s, tid) == 1
    assert s.node("node-2") is None


def test_batch_allocates_distinct_addresses_in_one_transaction(store):
    t, tid = store.create_token("lab", 100, 3600, False)
    outs = store.enroll_many([req(t, i) for i in range(50)] + [req("nf1.bad", 99)])
    ips = [o.node["ip"] for o in outs if o.status == 200]
    assert len(ips) == 50 == len(set(ips))
    assert outs[-1].status == 401
    assert used(store, tid) == 50


def test_quarantine_keeps_a_released_address_until_it_expires(store, clock):
    t, _ = store.create_token("lab", 10, 10**6, False)
    first = store.enroll(req(t, 1)).node["ip"]
    store.revoke_node("node-1")
    assert store.enroll(req(t, 2)).node["ip"] != first
    clock.t += 3601
    assert store.enroll(req(t, 3)).node["ip"] == first


def test_token_semantics(store, clock):
    t, tid = store.create_token("lab", 2, 60, False)
    assert store.enroll(req(t, 1)).status == 200
    assert store.enroll(req(t, 2)).status == 200
    o = store.enroll(req(t, 3))
    assert (o.status, o.error) == (403, "token used up")
    t2, tid2 = store.create_token("lab", 5, 60, False)
    clock.t += 61
    assert store.enroll(req(t2, 4)).error == "token expired"
    t3, tid3 = store.create_token("lab", 5, 60, False)
    store.revoke_token(tid3)
    assert store.enroll(req(t3, 5)).error == "token revoked"
    t4, _ = store.create_token("other", 5, 60, False)
    assert store.enroll(req(t4, 6)).status == 403
    assert store.enroll(req("garbage", 7)).status == 401
    assert store.enroll(req(t[:-3] + "AAA", 8)).status == 401  # right id, wrong secret
    assert store.enroll(req("nf1.0123456789abcdef." + "A" * 43, 9)).status == 401
    assert {n["node_id"] for n in store.list_nodes()} == {"node-1", "node-2"}
    with pytest.raises(UsageError):
        store.revoke_token("nope")


@pytest.mark.sqlite_only("reads hub.db; on etcd: test_token_is_stored_hashed_in_etcd")
def test_token_is_stored_hashed(store, tmp_path):
    t, tid = store.create_token("lab", 1, 60, False)
    secret = t.split(".")[2]
    raw = (tmp_path / "hub.db").read_bytes()
    assert secret.encode() not in raw
    assert "hash" not in store.list_tokens()[0]


def test_replay_returns_the_same_allocation_without_a_token_use(store, clock):
    t, tid = store.create_token("lab", 1, 60, False)
    a = store.enroll(req(t, 1))
    clock.t += 90  # an answer lost on the way: the node asks again, the token is used up
    b = store.enroll(req(t, 1))
    assert b.status == 200 and b.replay and b.node["ip"] == a.node["ip"]
    assert b.node["generation"] == a.node["generation"]
    assert used(store, tid) == 1
    assert secret_of(a.node) == secret_of(b.node)
    other, _ = store.create_token("lab", 1, 60, False)
    assert store.enroll(req(other, 1)).status == 403  # replay needs the token it used


def test_a_used_up_token_never_gets_the_node_secret_again(store, clock):
    """Issue 14 finding 8: token + public node id and key gave the node secret forever."""
    t, _ = store.create_token("lab", 1, 60, False)
    a = store.enroll(req(t, 1))
    clock.t += 3600  # long after: the token is used up and expired
    b = store.enroll(req(t, 1))
    assert b.status == 409 and b.node is None
    # nor once the node used its secret (join material fetched), even right away
    t2, _ = store.create_token("lab", 1, 60, False)
    c = store.enroll(req(t2, 2))
    store.set_bootstrap_token("node-2", "abc123")
    assert store.enroll(req(t2, 2)).status == 409
    # the node itself, presenting its secret, gets the same answer
    r = req(t, 1)
    r.node_secret = secret_of(a.node)
    assert store.enroll(r).status == 200
    assert c.status == 200


def test_key_of_another_node_is_a_conflict(store):
    t, _ = store.create_token("lab", 5, 60, False)
    store.enroll(req(t, 1))
    o = store.enroll(req(t, 2, k=key("k1")))
    assert o.status == 409


def test_taking_over_an_active_node_id_needs_its_secret_or_approval(store):
    """Issue 14 finding 1: any token holder sending an active node's node_id got its
    address, a new secret, and the victim's peer removed."""
    t, tid = store.create_token("lab", 5, 60, False)
    a = store.enroll(req(t, 1, fp="sha256:hw1"))
    store.complete("node-1")
    thief = store.enroll(req(t, 1, k=key("thief")))  # same node_id, new key, no secret
    assert thief.status == 202 and thief.node is None and not thief.remove_peers
    n = store.node("node-1")
    assert n["pubkey"] == key("k1") and n["state"] == "joined"
    assert n["generation"] == a.node["generation"]
    assert [p for p, _ in store.active_peers()] == [key("k1")]
    wrong = req(t, 1, k=key("thief2"))
    wrong.node_secret = "nfs1." + "A" * 43
    assert store.enroll(wrong).status == 401
    # the node itself (its secret): new key, same address, old peer removed
    own = req(t, 1, k=key("new"), fp="sha256:hw1")
    own.node_secret = secret_of(a.node)
    b = store.enroll(own)
    assert b.status == 200 and b.node["ip"] == a.node["ip"]
    assert b.remove_peers == [key("k1")] and b.add_peer == (key("new"), a.node["ip"])
    assert b.node["generation"] == a.node["generation"] + 1 and b.node["state"] == "active"
    # with the node secret alone (its token file is gone)
    alone = EnrollRequest("", "lab", "node-1", key("newer"), "h1", node_secret=secret_of(b.node))
    c = store.enroll(alone)
    assert c.status == 200 and c.node["ip"] == a.node["ip"] and c.remove_peers == [key("new")]
    assert (
        store.enroll(EnrollRequest("", "lab", "node-1", key("x"), node_secret="nfs1.x")).status
        == 401
    )


def test_an_unproven_rekey_waits_for_the_operator(store):
    t, _ = store.create_token("lab", 5, 60, False)
    a = store.enroll(req(t, 1))
    assert store.enroll(req(t, 1, k=key("new"))).status == 202
    assert store.enroll(req(t, 1, k=key("new"))).status == 202  # its polls: no new use
    assert store.list_nodes()[0]["rekey_pending"] == 1
    n = store.approve("node-1")
    assert n["pubkey"] == key("new") and n["ip"] == a.node["ip"]
    o = store.enroll(req(t, 1, k=key("new")))
    assert o.status == 200 and o.add_peer == (key("new"), a.node["ip"])
    assert [p for p, _ in store.active_peers()] == [key("new")]


def test_a_fingerprint_is_a_claim_the_operator_confirms(store):
    """Reinstalled hardware (new node_id, new key, same fingerprint) waits for approval,
    which then moves the old node's address to it."""
    t, tid = store.create_token("lab", 5, 60, False)
    a = store.enroll(req(t, 1, fp="sha256:hw1"))
    c = store.enroll(EnrollRequest(t, "lab", "node-1b", key("newer"), "h1", "sha256:hw1"))
    assert c.status == 202 and c.node["ip"] is None and "node-1" in c.error
    assert store.node("node-1")["state"] == "active"
    assert [p for p, _ in store.active_peers()] == [key("k1")]
    n = store.approve("node-1b")
    assert n["ip"] == a.node["ip"] and n["state"] == "active"
    assert store.node("node-1")["state"] == "revoked" and store.node("node-1")["ip"] is None
    o = store.enroll(EnrollRequest(t, "lab", "node-1b", key("newer"), "h1", "sha256:hw1"))
    assert o.status == 200 and o.add_peer == (key("newer"), a.node["ip"])
    assert used(store, tid) == 2


def test_an_approve_token_always_waits(store):
    t, _ = store.create_token("lab", 5, 60, True)
    store.enroll(req(t, 1))
    store.approve("node-1")
    own = req(t, 1, k=key("new"))
    own.node_secret = secret_of(store.node("node-1"))
    assert store.enroll(own).status == 202  # even with the node's own secret


def test_revoked_node_cannot_come_back_and_token_revocation_keeps_nodes(store):
    t, tid = store.create_token("lab", 5, 60, False)
    store.enroll(req(t, 1))
    store.enroll(req(t, 2))
    store.revoke_token(tid)
    assert {p for p, _ in store.active_peers()} == {key("k1"), key("k2")}
    old = store.revoke_node("node-1")
    assert old["pubkey"] == key("k1")
    assert [p for p, _ in store.active_peers()] == [key("k2")]
    t2, _ = store.create_token("lab", 5, 60, False)
    assert store.enroll(req(t2, 1, k=key("again"))).status == 403
    events = [e["event"] for e in store.audit_events()]
    assert "node.revoke" in events and "token.revoke" in events


def test_approval_flow(store):
    t, tid = store.create_token("lab", 1, 60, True)
    o = store.enroll(req(t, 1))
    assert o.status == 202 and o.node["ip"] is None
    assert store.enroll(req(t, 1)).status == 202
    assert used(store, tid) == 1
    n = store.approve("node-1")
    assert n["state"] == "active" and n["ip"] == "10.100.0.2"
    o = store.enroll(req(t, 1))
    assert o.status == 200 and o.add_peer == (key("k1"), "10.100.0.2")
    with pytest.raises(UsageError):
        store.approve("node-1")


def test_complete_and_bootstrap_token_bookkeeping(store):
    t, _ = store.create_token("lab", 1, 60, False)
    store.enroll(req(t, 1))
    assert store.set_bootstrap_token("node-1", "abc123") is None
    assert store.set_bootstrap_token("node-1", "def456") == "abc123"
    assert store.complete("node-1") == "def456"
    assert store.node("node-1")["state"] == "joined"
    assert store.node("node-1")["bootstrap_token_id"] is None
