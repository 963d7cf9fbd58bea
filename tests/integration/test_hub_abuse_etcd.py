"""tests/unit/test_hub_abuse.py on etcd: the real `builder hub serve` process over HTTPS on
loopback, its store in a real etcd: bad keys, deep JSON, a killed writer process that comes
back, token guessing from many addresses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from backends import on_etcd

from tests.support import hubstore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import test_hub_abuse as base  # noqa: E402 - the unit lane's tests, run here on etcd

TAKEN = on_etcd(base, globals(), fixtures=())


@pytest.fixture(scope="module")
def hub(etcd_single, tmp_path_factory):
    """The unit module's shared hub (module scope: set up before ``on_etcd``), on etcd."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hubstore, "ETCD", tuple(etcd_single.endpoints))
        h = base.LiveHub(tmp_path_factory.mktemp("abuse-etcd") / "hub")
    yield h
    h.close()


def test_these_run_on_etcd(hub):
    assert json.loads(hub.config.read_text())["store"]["kind"] == "etcd"
    assert len(TAKEN) >= 4  # 4 when written: every test of the module starts a hub
