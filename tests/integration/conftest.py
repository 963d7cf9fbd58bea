"""Integration lane fixtures: one real single-member etcd for the whole session, for the
single-hub tests collected again on the etcd backend (tests/integration/backends.py)."""

from __future__ import annotations

import pytest
from etcd_lab import EtcdCluster, missing

from tests.support import hubstore


@pytest.fixture(scope="session")
def etcd_single(tmp_path_factory: pytest.TempPathFactory):
    """A single-member etcd (Debian's etcd-server) on a loopback port, started once; each
    test keeps its keys under its own prefix (tests/support/hubstore.py)."""
    if missing():
        pytest.skip(f"the etcd backend's tests need {missing()}")
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd-single"), members=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def on_etcd(etcd_single: EtcdCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stores and hubs built through tests/support/hubstore.py live in etcd for this test."""
    monkeypatch.setattr(hubstore, "ETCD", tuple(etcd_single.endpoints))
