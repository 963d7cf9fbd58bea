"""The `builder hub …` admin commands (tests/unit/test_hub_cli.py, test_hub_admin.py) on a
hub whose hub.json names a real etcd: tokens, nodes, approve, revoke, the writer core."""

from __future__ import annotations

import sys
from pathlib import Path

from backends import on_etcd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import test_hub_admin as admin_tests  # noqa: E402 - the unit lane's tests, run here on etcd
import test_hub_cli as cli_tests  # noqa: E402

# the ones that reach the store (the others read or write only hub.json and keys)
CLI = (
    "test_token_lifecycle_and_nodes",
    "test_writer_core_in_process_without_an_interface",
    "test_a_request_that_gave_up_does_not_stop_the_writer_link",
    "test_token_create_checks_the_site_exists",
    "test_token_list_columns_json_and_revoke_twice",
)
ADMIN = ("test_revoke_without_the_interface_leaves_the_peer_to_the_reconcile",)
TAKEN = on_etcd(cli_tests, globals(), fixtures=("hubdir",), names=CLI)
TAKEN += on_etcd(admin_tests, globals(), fixtures=(), names=ADMIN)


def test_these_run_on_etcd(hubdir):
    from builder.hub import admin
    from builder.hub.stores.etcd import EtcdStore

    assert isinstance(admin.open_store(hubdir[0] / "hub.json")[1], EtcdStore)
    assert sorted(TAKEN) == sorted(CLI + ADMIN)
