"""builder.hub.admin: what `builder hub …` computes (token status, ids, init from a site)."""

from __future__ import annotations

import json
from pathlib import Path

from builder.hub import admin
from tests.support.hubstore import store_json


def row(**kw: object) -> dict[str, object]:
    return {"revoked_at": None, "expires_at": 2000.0, "used": 0, "max_uses": 1, **kw}


def test_token_status() -> None:
    assert admin.token_status(row(), now=1000) == "valid"
    assert admin.token_status(row(used=1), now=1000) == "used up"
    assert admin.token_status(row(expires_at=1000.0), now=1000) == "expired"  # at expiry: gone
    assert admin.token_status(row(revoked_at=900.0, used=1, expires_at=10.0), now=1000) == (
        "revoked"  # revocation wins over the rest
    )


def test_token_id_from_a_whole_token_or_an_id() -> None:
    tid = "0123456789abcdef"
    assert admin.token_id(f"nf1.{tid}.{'s' * 43}") == tid
    assert admin.token_id(tid) == tid


def test_init_options_win_over_the_site_profile(workdir: Path) -> None:
    admin.init(
        workdir / "h",
        site="onprem",
        endpoint="other.example:51999",
        overlay_cidr="10.66.0.0/24",
        hub_ip="10.66.0.9",
    )
    cfg = json.loads((workdir / "h" / "hub.json").read_text())
    from builder.site.profile import load_profile

    prof = load_profile("onprem")
    assert cfg["wireguard"]["endpoint"] == "other.example:51999"
    assert cfg["wireguard"]["listen_port"] == 51999
    assert cfg["wireguard"]["overlay_cidr"] == "10.66.0.0/24"
    assert cfg["wireguard"]["hub_overlay_ip"] == "10.66.0.9"
    assert cfg["url"] == prof.get("enrollment.url")  # not given: the profile's
    assert cfg["wireguard"]["mtu"] == prof.get("wireguard.mtu")


def test_revoke_without_the_interface_leaves_the_peer_to_the_reconcile(workdir: Path) -> None:
    d = workdir / "h"
    admin.init(d, endpoint="hub.example:51820", url="https://hub.example:8443")
    cfg = json.loads((d / "hub.json").read_text())
    cfg["wireguard"]["apply"] = False  # touch no interface
    cfg["store"] = store_json(d)  # SQLite; etcd when the integration lane runs it again
    (d / "hub.json").write_text(json.dumps(cfg))
    from builder.hub.store import EnrollRequest

    token, _ = admin.create_token(d / "hub.json", "lab", 1, "1h", False, "")
    _, store = admin.open_store(d / "hub.json")
    assert store.enroll(EnrollRequest(token, "lab", "n1", "A" * 43 + "=", "h1")).status == 200
    res = admin.revoke_node(d / "hub.json", "n1")
    assert res == admin.Revoked("n1", "A" * 43 + "=", "wg0", peer_removed=False)
    assert [n["state"] for n in admin.list_nodes(d / "hub.json")] == ["revoked"]


def test_route_text_shows_the_hub_and_the_age_of_the_report():
    from builder.hub.admin import route_text

    assert route_text(None) == "-"
    assert route_text({"hub": "hub-b", "age": 12.4, "stale": False}) == "hub-b 12s"
    assert route_text({"hub": "hub-a", "age": 300, "stale": True}) == "hub-a stale 5m"


def test_list_nodes_marks_a_route_report_stale_after_three_missed_reports(monkeypatch):
    from builder.hub import admin

    class FakeStore:
        def list_nodes(self):
            return [{"node_id": "n1"}, {"node_id": "n2"}, {"node_id": "n3"}]

        def routes(self):
            return {"n1": {"hub": "hub-b", "at": 1000.0}, "n2": {"hub": "hub-a", "at": 900.0}}

    monkeypatch.setattr(admin, "open_store", lambda cfg: (None, FakeStore()))
    rows = {r["node_id"]: r["route"] for r in admin.list_nodes(None, now=1010.0)}
    assert rows["n1"] == {"hub": "hub-b", "at": 1000.0, "age": 10.0, "stale": False}
    assert rows["n2"]["stale"] is True and rows["n2"]["age"] == 110.0  # > 90 s: 3 reports missed
    assert rows["n3"] is None
