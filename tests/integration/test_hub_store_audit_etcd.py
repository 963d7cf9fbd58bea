"""tests/unit/test_hub_store_audit.py on the etcd backend: every enrollment rule's answer,
the node row it leaves and the audit trail it writes, word for word, against a real etcd."""

from __future__ import annotations

import sys
from pathlib import Path

from backends import on_etcd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import test_hub_store_audit as base  # noqa: E402 - the unit lane's tests, run here on etcd

TAKEN = on_etcd(base, globals(), fixtures=("store", "clock"))


def test_these_run_on_etcd(store):
    from builder.hub.stores.etcd import EtcdStore

    assert isinstance(store, EtcdStore)
    assert len(TAKEN) >= 18  # 21 when written: two are sqlite_only, test_pool_edges builds none
