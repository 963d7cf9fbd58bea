"""The single-hub store tests (tests/unit/test_hub_store.py) on the etcd backend, against a
real 3-member etcd cluster on loopback ports; plus what only etcd has: two stores (two hubs)
on one cluster racing for the same addresses and the same token uses."""

from __future__ import annotations

import base64
import ipaddress
import sys
import threading
from pathlib import Path

import pytest
from etcd_lab import EtcdCluster, missing

from builder.hub.config import StoreConfig
from builder.hub.store import EnrollRequest, Pool
from builder.hub.stores.etcd import EtcdStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import test_hub_store as base  # noqa: E402 - the unit lane's tests, run here on etcd

pytestmark = pytest.mark.integration

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


@pytest.fixture(autouse=True)
def _on_etcd(cluster, monkeypatch):
    monkeypatch.setattr(
        base,
        "make_store",
        lambda tmp_path, clock, **kw: etcd_store(cluster, f"/t/{tmp_path.name}", clock, **kw),
    )


clock = base.clock


@pytest.fixture
def store(tmp_path, clock):
    return base.make_store(tmp_path, clock)


# every single-hub store test, on etcd (the one reading the SQLite file has its own below)
for _name in dir(base):
    if _name.startswith("test_") and _name != "test_token_is_stored_hashed":
        globals()[_name] = getattr(base, _name)


def test_token_is_stored_hashed_in_etcd(store, cluster):
    t, _ = store.create_token("lab", 1, 60, False)
    secret = t.split(".")[2]
    _, kvs = store.client.range("/", "\xff")
    assert kvs and all(secret not in v for _, v, _ in kvs)


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
