"""The single-hub store tests (tests/unit/test_hub_store.py) on the etcd backend (a real
single-member etcd, see backends.py); plus what only etcd has, on a real 3-member etcd
cluster on loopback ports: two stores (two hubs) on one cluster racing for the same addresses
and the same token uses, the SQLite to etcd migration, conflicts on /metrics."""

from __future__ import annotations

import base64
import ipaddress
import json
import sys
import threading
from pathlib import Path

import pytest
from backends import on_etcd
from etcd_lab import EtcdCluster, missing

from builder.hub.config import StoreConfig
from builder.hub.store import EnrollRequest, Pool
from builder.hub.stores.etcd import EtcdStore
from builder.hub.stores.etcd_client import StoreUnavailable, put
from tests.support.hubstore import close_in_another_thread

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import test_hub_store as base  # noqa: E402 - the unit lane's tests, run here on etcd

# every single-hub store test, on etcd (on the session's single-member etcd, see backends.py;
# the one reading the SQLite file has its own below)
TAKEN = on_etcd(base, globals(), fixtures=("store", "clock"))

if missing():
    pytest.skip(f"needs {missing()}", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = EtcdCluster(tmp_path_factory.mktemp("etcd"), members=3).start()
    yield c
    c.stop()


def etcd_store(cluster, prefix, clock, cidr="10.100.0.0/16", hub="10.100.0.1", reserved=(), q=3600):
    pool = Pool(
        ipaddress.IPv4Network(cidr),
        ipaddress.IPv4Address(hub),
        [ipaddress.IPv4Address(r) for r in reserved],
    )
    cfg = StoreConfig(kind="etcd", endpoints=tuple(cluster.endpoints), prefix=prefix, name="t")
    return EtcdStore(cfg, pool, q, clock=clock, secret_key=base.KEY, replay_grace_seconds=120)


def test_these_run_on_etcd(store):
    assert isinstance(store, EtcdStore)
    assert len(TAKEN) >= 15  # 17 when written: one is sqlite_only, the pool arithmetic builds none


def test_token_is_stored_hashed_in_etcd(store):
    t, _ = store.create_token("lab", 1, 60, False)
    secret = t.split(".")[2]
    _, kvs = store.client.range("/", "\xff")
    assert kvs and all(secret not in v for _, v, _ in kvs)


def test_a_store_closed_twice_or_in_another_thread_reads_again(store):
    """The etcd side of test_the_database_file_and_its_settings (test_hub_store_audit.py):
    each thread its own connection (an HTTP session to etcd); closing twice, or in a thread
    that never opened one, is no error; a closed store opens a new one at its next call."""
    store.create_token("lab", 1, 60, False)
    first = store.client._session()
    assert store.client._session() is first  # one per thread
    store.close()
    store.close()  # twice: nothing to close
    assert close_in_another_thread(store) == []
    assert len(store.list_tokens()) == 1
    assert store.client._session() is not first


def test_a_node_row_without_the_later_columns_loads(store, tmp_path, clock):
    """The etcd side of test_an_old_database_gets_the_new_columns: a node row naming only
    the first release's columns (no replaces, pending_*) loads with them empty, and the
    store goes on enrolling."""
    token, _ = store.create_token("lab", 2, 600, False)
    node = store.enroll(base.req(token, 1)).node
    later = ("replaces", "pending_pubkey", "pending_token_id", "pending_at")
    old = {k: v for k, v in node.items() if k not in later}
    store.client.txn([], [put(f"{store.state}node/node-1", json.dumps(old))])
    fresh = base.make_store(tmp_path, clock)  # another hub, reading the state from scratch
    assert fresh.node("node-1") == node
    assert fresh.enroll(base.req(token, 2)).status == 200
    assert store.node("node-1") == node  # the first store's snapshot, brought up to date


def test_a_row_from_a_newer_hub_keeps_the_columns_this_hub_does_not_know(store, tmp_path, clock):
    """Hubs on one etcd are upgraded one at a time, and a newer hub may write rows with a
    column this hub's schema lacks (four node columns came after the first release, see
    store.ADDED_COLUMNS). This hub still reads and changes the state, and a row it rewrites
    keeps that column's value. Before: every store call of an older hub raised
    sqlite3.OperationalError "table nodes has no column named ..." (its snapshot's schema)."""
    token, _ = store.create_token("lab", 3, 600, False)
    node = store.enroll(base.req(token, 1)).node
    key = f"{store.state}node/node-1"
    store.client.txn([], [put(key, json.dumps({**node, "later_column": "kept"}))])
    fresh = base.make_store(tmp_path, clock)  # another hub, reading the state from scratch
    assert fresh.node("node-1")["ip"] == node["ip"]
    assert fresh.enroll(base.req(token, 2)).status == 200
    fresh.revoke_node("node-1")  # rewrites node-1's row
    row = json.loads(store.client.range(key)[1][0][1])
    assert (row["state"], row["later_column"]) == ("revoked", "kept")
    assert store.node("node-1")["state"] == "revoked"  # an older snapshot, brought up to date
    assert store.enroll(base.req(token, 3)).status == 200
    # a column name is never spliced into SQL unless it is a plain identifier
    store.client.txn([], [put(key, json.dumps({**node, "x) --": 1}))])
    with pytest.raises(StoreUnavailable, match="column"):
        base.make_store(tmp_path, clock).node("node-1")


def test_two_hubs_never_share_an_address_or_overuse_a_token(cluster, tmp_path, clock):
    """Two stores (two hubs) on one prefix, 4 threads each, enrolling at once with one token
    of 150 uses: 200 requests, exactly 150 succeed, all with distinct addresses."""
    prefix = f"/race/{tmp_path.name}"
    a = etcd_store(cluster, prefix, clock, cidr="10.50.0.0/24", hub="10.50.0.1")
    b = etcd_store(cluster, prefix, clock, cidr="10.50.0.0/24", hub="10.50.0.1")
    token, tid = a.create_token("lab", 150, 3600, False)
    results: list = []
    lock = threading.Lock()

    def worker(st: EtcdStore, first: int) -> None:
        for i in range(first, first + 25):
            k = base64.b64encode(i.to_bytes(32, "big")).decode()
            reqs = [EnrollRequest(token, "lab", f"n{i}", k, hostname=f"h{i}")]
            out = st.enroll_many(reqs)
            with lock:
                results.extend(out)

    threads = [
        threading.Thread(target=worker, args=(st, j * 25))
        for j, st in enumerate([a, b, a, b, a, b, a, b])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    ok = [o for o in results if o.status == 200]
    assert len(results) == 200
    assert len(ok) == 150, sorted({(o.status, o.error) for o in results})
    assert {o.status for o in results if o.status != 200} == {403}
    ips = [o.node["ip"] for o in ok]
    assert len(set(ips)) == 150
    nodes = a.list_nodes()
    assert sorted(n["ip"] for n in nodes) == sorted(ips)
    assert next(t["used"] for t in b.list_tokens() if t["id"] == tid) == 150
    assert a.conflicts + b.conflicts > 0  # the race really happened


def test_migrate_sqlite_to_etcd_keeps_every_node_and_address(cluster, tmp_path):
    """`builder hub migrate --to etcd` on a hub with enrolled nodes: same nodes, same
    addresses, token use counts kept; a node's re-enrollment with its secret still works;
    a second hub state under the same prefix is refused (exit 2, config untouched)."""
    import json
    import subprocess

    from builder.hub import config as hub_config
    from builder.hub import stores
    from builder.hub import tokens as tok_mod

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", "from builder.cli import main; main()", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    d = tmp_path / "hub"
    p = cli("hub", "init", str(d), "--endpoint", "192.0.2.1:51820", "--url", "https://h:8443")
    assert p.returncode == 0, p.stderr
    cfg = hub_config.load(d / "hub.json")
    sq = stores.open_store(cfg)
    tok, tid = sq.create_token("lab", 10, 3600, False)
    enrolled = [sq.enroll(base.req(tok, i)) for i in range(5)]
    sq.revoke_node("node-4")  # a quarantined address travels too
    before = {n["node_id"]: n for n in sq.list_nodes()}
    prefix = f"/mig/{tmp_path.name}"
    eps = [a for e in cluster.endpoints for a in ("--endpoint", e)]
    p = cli(
        "hub", "migrate", "--config", str(d / "hub.json"), "--to", "etcd", *eps, "--prefix", prefix
    )
    assert p.returncode == 0, p.stderr
    assert "copied 1 tokens, 5 nodes, 1 quarantined" in p.stdout
    cfg2 = hub_config.load(d / "hub.json")
    assert cfg2.store.kind == "etcd" and cfg2.store.prefix == prefix
    et = stores.open_store(cfg2)
    after = {n["node_id"]: n for n in et.list_nodes()}
    assert after == before
    assert next(t["used"] for t in et.list_tokens() if t["id"] == tid) == 5
    o = enrolled[1]
    r = base.req("", 1, k=base.key("k1-new"))
    n = o.node
    r.node_secret = tok_mod.node_secret(
        cfg.secret_key(), n["node_id"], n["pubkey"], n["generation"]
    )
    re = et.enroll(r)
    assert re.status == 200 and re.node["ip"] == o.node["ip"]
    new = et.enroll(base.req(tok, 9))
    assert new.status == 200 and new.node["ip"] not in {n["ip"] for n in before.values()}
    # the prefix now holds a live hub state: a second migration into it is refused
    other = tmp_path / "other"
    init = cli("hub", "init", str(other), "--endpoint", "192.0.2.1:51820", "--url", "https://h:1")
    assert init.returncode == 0, init.stderr
    s2 = stores.open_store(hub_config.load(other / "hub.json"))
    s2.create_token("lab", 1, 60, False)
    raw = (other / "hub.json").read_text()
    p = cli(
        "hub",
        "migrate",
        "--config",
        str(other / "hub.json"),
        "--to",
        "etcd",
        *eps,
        "--prefix",
        prefix,
    )
    assert p.returncode == 2 and "already holds" in p.stderr and "Traceback" not in p.stderr
    assert (other / "hub.json").read_text() == raw
    assert json.loads(raw).get("store") is None


def test_a_conflict_is_counted_and_shown_on_metrics(cluster, tmp_path, clock):
    """Hub b commits between hub a's snapshot and a's commit: a's compare fails once, a runs
    the change again on a fresh snapshot and succeeds; /metrics shows 1 conflict, 0 give-ups."""
    from builder.hub.metrics import Metrics
    from builder.hub.writer import store_counts

    prefix = f"/conflict/{tmp_path.name}"
    a = etcd_store(cluster, prefix, clock)
    b = etcd_store(cluster, prefix, clock)
    b.create_token("lab", 1, 60, False)
    real = a.client.txn_rev
    calls = []

    def b_first(cmp, ops):
        if not calls:  # the first commit of a: b gets in between
            b.create_token("lab", 1, 60, False)
        calls.append(cmp)
        return real(cmp, ops)

    a.client.txn_rev = b_first  # type: ignore[method-assign]
    a.create_token("lab", 1, 60, False)
    assert len(calls) == 2  # the compare failed once, the re-run committed
    assert (a.conflicts, a.giveups, b.conflicts) == (1, 0, 0)
    assert len(b.list_tokens()) == 3  # nothing lost, nothing doubled
    m = Metrics()
    m.hub = "hub-a"
    m.store_conflicts = 2  # what the writer process reported with its batches
    text = m.render({}, store_counts(a))
    assert 'nodeforge_hub_store_conflicts_total{hub="hub-a"} 3\n' in text
    assert 'nodeforge_hub_store_giveups_total{hub="hub-a"} 0\n' in text


def test_revoking_a_node_drops_its_route_report(store, cluster):
    """`builder hub revoke` must not leave the node's last `POST /v1/route` report behind
    (``builder hub nodes`` showed a revoked node still routing through a hub); the report
    goes in the same transaction as the revocation, the other nodes' reports stay."""
    token, _ = store.create_token("lab", 2, 600, False)
    gone, kept = (store.enroll(base.req(token, n)).node["node_id"] for n in (1, 2))
    for node_id in (gone, kept):
        store.set_route(node_id, {"hub": "hub-b", "hub_ip": "10.100.0.2", "at": 1.0})
    assert set(store.routes()) == {gone, kept}
    store.revoke_node(gone)
    assert set(store.routes()) == {kept}
    _, kvs = store.client.range(f"{store.cfg.prefix}/routes/{gone}")
    assert kvs == []  # deleted, not emptied


def test_a_node_replaced_by_its_reinstall_loses_its_route_report(store):
    """Approving a reinstall (same hardware fingerprint, new identity) revokes the old node:
    its route report goes with it, in the same transaction."""
    token, _ = store.create_token("lab", 2, 600, False)
    old = store.enroll(base.req(token, 1, fp="fp-same-box")).node["node_id"]
    store.set_route(old, {"hub": "hub-a", "hub_ip": "10.100.0.1", "at": 1.0})
    pending = store.enroll(base.req(token, 2, fp="fp-same-box"))
    assert pending.status == 202 and pending.node["replaces"] == old
    store.approve(pending.node["node_id"])
    assert store.node(old)["state"] == "revoked"
    assert old not in store.routes()


def test_a_route_report_landing_after_the_revocation_is_not_stored(store):
    """The api checked the node (active) and then the revocation committed: the report that
    follows must not bring the route back (set_route compares the node's row it read)."""
    token, _ = store.create_token("lab", 1, 600, False)
    gone = store.enroll(base.req(token, 1)).node["node_id"]
    store.revoke_node(gone)
    assert store.set_route(gone, {"hub": "hub-a", "hub_ip": "10.100.0.1", "at": 2.0}) is False
    assert gone not in store.routes()


def test_a_revocation_between_the_read_and_the_write_of_a_route_wins(store):
    token, _ = store.create_token("lab", 1, 600, False)
    node_id = store.enroll(base.req(token, 1)).node["node_id"]
    real = store.client.txn

    def revoke_first(cmp, ops):  # the revocation commits just before the route's txn
        store.client.txn = real  # type: ignore[method-assign]
        store.revoke_node(node_id)
        return real(cmp, ops)

    store.client.txn = revoke_first  # type: ignore[method-assign]
    assert store.set_route(node_id, {"hub": "hub-a", "hub_ip": "10.100.0.1", "at": 3.0}) is False
    assert node_id not in store.routes()


def test_a_joined_node_reports_its_route(store):
    """A node that has joined the cluster (state ``joined``) routes and reports like an
    active one: the failover test's nodes have all joined before they fail over."""
    token, _ = store.create_token("lab", 1, 600, False)
    node_id = store.enroll(base.req(token, 1)).node["node_id"]
    store.complete(node_id)
    assert store.node(node_id)["state"] == "joined"
    info = {"hub": "hub-a", "hub_ip": "10.100.0.1", "at": 4.0}
    assert store.set_route(node_id, info) is True
    assert store.routes() == {node_id: info}
