"""The in-process hub API tests (tests/unit/test_hub_routes.py, test_hub_route_report.py)
on an etcd-backed hub: enrollment, join, complete, revoke and the route report through a
running ``Hub`` whose store is a real etcd (single member, one key prefix per test)."""

from __future__ import annotations

import sys
from pathlib import Path

from backends import on_etcd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import test_hub_route_report as report  # noqa: E402 - the unit lane's tests, run here on etcd
import test_hub_routes as routes  # noqa: E402

TAKEN = on_etcd(routes, globals(), fixtures=("hub",)) + on_etcd(report, globals(), fixtures=())


def test_these_run_on_etcd(hub):
    from builder.hub.stores.etcd import EtcdStore

    assert isinstance(hub.store, EtcdStore)
    assert len(TAKEN) >= 11  # 11 when written: every test of the two modules builds a hub
