"""The store the single-hub tests build: SQLite by default, etcd when a test run points it there.

The unit lane's store and hub tests (tests/unit/test_hub_store*.py, test_hub_routes.py, ...)
build every store through ``new_store`` and every hub's ``store`` setting through
``store_json``. On their own they get SQLite (``path`` is the database file). The integration
lane collects the SAME test functions again with ``ETCD`` set to the endpoints of a real etcd
(tests/integration/backends.py): each store then lives under its own key prefix, derived from
``path`` (so a test that opens the same path twice gets the same state back, as with SQLite,
and no two tests share keys).

``quarantine_rows`` and ``edit_node`` read and write a backend's rows behind the store's back,
for the few tests that check a stored row no interface call shows, or set up a state the rules
cannot reach by themselves.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

from builder.hub.config import StoreConfig
from builder.hub.store import Pool, Store
from builder.hub.stores import HubStore
from builder.hub.stores.etcd import EtcdStore
from builder.hub.stores.etcd_client import prefix_end, put

ETCD: tuple[str, ...] = ()  # endpoints of the etcd the tests run on; () = SQLite
RUN = uuid.uuid4().hex[:12]  # this test run's keys: /nodeforge-test/RUN/<path>/...


def backend() -> str:
    return "etcd" if ETCD else "sqlite"


def prefix_for(path: Path) -> str:
    return f"/nodeforge-test/{RUN}{Path(path).resolve()}"


def new_store(path: Path, pool: Pool, quarantine_seconds: int = 86400, **kw: Any) -> HubStore:
    """``Store(path, ...)`` on SQLite; on etcd an ``EtcdStore`` under ``path``'s prefix."""
    if not ETCD:
        return Store(path, pool, quarantine_seconds, **kw)
    cfg = StoreConfig(kind="etcd", endpoints=ETCD, prefix=prefix_for(path), name="test")
    return EtcdStore(cfg, pool, quarantine_seconds, **kw)


def store_json(hub_dir: Path) -> dict[str, Any]:
    """hub.json's ``store`` for a hub kept in ``hub_dir``."""
    if not ETCD:
        return {"kind": "sqlite"}
    return {"kind": "etcd", "endpoints": list(ETCD), "prefix": prefix_for(hub_dir), "name": "hub"}


def _etcd_rows(store: EtcdStore, kind: str) -> dict[str, dict[str, Any]]:
    p = f"{store.state}{kind}/"
    _, kvs = store.client.range(p, prefix_end(p))
    return {k[len(p) :]: json.loads(v) for k, v, _ in kvs if v}


def quarantine_rows(store: HubStore) -> list[tuple[str, float]]:
    """Every (ip, until) row of the address quarantine, as stored, in address order."""
    if isinstance(store, EtcdStore):
        return sorted((r["ip"], r["until"]) for r in _etcd_rows(store, "quarantine").values())
    assert isinstance(store, Store)
    rows = store.conn().execute("SELECT ip, until FROM quarantine ORDER BY ip")
    return [(r[0], r[1]) for r in rows]


def edit_node(store: HubStore, node_id: str, **columns: Any) -> None:
    """Overwrite columns of a node's stored row, as a concurrent writer would."""
    if isinstance(store, EtcdStore):
        row = _etcd_rows(store, "node")[node_id]
        row.update(columns)
        store.client.txn([], [put(f"{store.state}node/{node_id}", json.dumps(row))])
        return
    assert isinstance(store, Store)
    sets = ", ".join(f"{c}=?" for c in columns)
    store.conn().execute(
        f"UPDATE nodes SET {sets} WHERE node_id=?",  # noqa: S608 - column names from the test
        (*columns.values(), node_id),
    )


def close_in_another_thread(store: HubStore) -> list[Exception]:
    """Close ``store`` from a thread that never used it; what that raised (nothing, if
    ``close`` is thread-safe and idempotent as the hub's shutdown needs)."""
    errors: list[Exception] = []

    def close_elsewhere() -> None:
        try:
            store.close()
        except Exception as exc:
            errors.append(exc)

    other = threading.Thread(target=close_elsewhere)
    other.start()
    other.join()
    return errors
