"""The store's batch rules pinned (issue 18, round 5: survivors of the run of
``builder.hub.store.*``/``builder.hub.enroll.*`` to the end). A real SQLite store; the
statements it runs are watched with ``sqlite3``'s own trace callback, and what another
connection can see is read with a second, independent connection."""

from __future__ import annotations

import ipaddress
import logging
import sqlite3

import pytest
from test_hub_store import Clock
from test_hub_store import key as pub

from builder.hub.store import EnrollRequest, Pool, Store

KEY = b"s" * 32


@pytest.fixture
def store(tmp_path) -> Store:
    pool = Pool(ipaddress.IPv4Network("10.50.0.0/24"), ipaddress.IPv4Address("10.50.0.1"))
    s = Store(tmp_path / "hub.db", pool, 3600, clock=Clock(), secret_key=KEY)
    yield s
    s.close()


def reqs(token: str, n: int) -> list[EnrollRequest]:
    return [EnrollRequest(token, "lab", f"n{i}", pub(f"k{i}"), f"h{i}") for i in range(n)]


def test_the_taken_addresses_are_read_once_per_batch(store) -> None:
    token, _ = store.create_token("lab", 10, 3600, False)
    seen: list[str] = []
    store.conn().set_trace_callback(seen.append)
    try:
        out = store.enroll_many(reqs(token, 4))
    finally:
        store.conn().set_trace_callback(None)
    assert [o.node["ip"] for o in out] == ["10.50.0.2", "10.50.0.3", "10.50.0.4", "10.50.0.5"]
    scans = [s for s in seen if s.startswith("SELECT ip FROM nodes")]
    assert scans == ["SELECT ip FROM nodes WHERE ip IS NOT NULL"]


def test_audit_lines_are_logged_only_once_the_rows_are_committed(store, caplog) -> None:
    """Another connection sees every row an audit line names at the time it is logged."""
    token, _ = store.create_token("lab", 10, 3600, False)
    seen_then: list[int] = []

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            other = sqlite3.connect(store.path)
            try:
                seen_then.append(
                    other.execute("SELECT count(*) FROM audit WHERE event='enroll.ok'").fetchone()[
                        0
                    ]
                )
            finally:
                other.close()

    h = Probe()
    logging.getLogger("nodeforge.hub.audit").addHandler(h)
    try:
        with caplog.at_level(logging.INFO, logger="nodeforge.hub.audit"):
            out = store.enroll_many(reqs(token, 2))
    finally:
        logging.getLogger("nodeforge.hub.audit").removeHandler(h)
    assert [o.status for o in out] == [200, 200]
    assert seen_then == [2, 2]


def test_a_request_that_breaks_fails_alone_and_is_logged(store, monkeypatch, caplog) -> None:
    token, _ = store.create_token("lab", 10, 3600, False)
    real = store._enroll_one

    def breaking(c, r, ctx):
        if r.node_id == "n0":
            raise RuntimeError("boom")
        return real(c, r, ctx)

    monkeypatch.setattr(store, "_enroll_one", breaking)
    with caplog.at_level(logging.ERROR, logger="nodeforge.hub"):
        out = store.enroll_many(reqs(token, 2))  # n0 breaks before any address was taken
    assert [(o.status, o.error) for o in out] == [(500, "internal error: RuntimeError"), (200, "")]
    assert out[1].node["ip"] == "10.50.0.2"
    assert [
        (r.getMessage(), r.exc_info[0]) for r in caplog.records if r.name == "nodeforge.hub"
    ] == [("enrollment of n0 failed", RuntimeError)]


def test_audit_events_lists_the_last_hundred(store) -> None:
    for _ in range(101):
        store.create_token("lab", 1, 3600, False)
    events = store.audit_events()
    assert len(events) == 100
    assert len(store.audit_events(101)) == 101
    assert events[0]["id"] == 101 and events[-1]["id"] == 2


def test_store_defaults_and_a_new_directory(tmp_path) -> None:
    pool = Pool(ipaddress.IPv4Network("10.50.0.0/24"), ipaddress.IPv4Address("10.50.0.1"))
    s = Store(tmp_path / "a" / "b" / "hub.db", pool)  # parents made as needed
    try:
        assert (s.quarantine_seconds, s.replay_grace_seconds, s.secret_key) == (86400, 120, b"")
        s.create_token("lab", 1, 60, False)
        assert [t["description"] for t in s.list_tokens()] == [""]
    finally:
        s.close()


def test_audit_detail_and_log_line_are_sorted_json(store, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="nodeforge.hub.audit"):
        _, tid = store.create_token("lab", 10, 3600, False)
    other = sqlite3.connect(store.path)
    try:
        detail = other.execute("SELECT detail FROM audit").fetchall()
    finally:
        other.close()
    # keys in sorted order, as json.dumps(sort_keys=True) writes them (not call order)
    assert detail == [('{"approve": false, "site": "lab", "ttl": 3600, "uses": 10}',)]
    assert [r.getMessage() for r in caplog.records if r.name == "nodeforge.hub.audit"] == [
        '{"approve": false, "event": "token.create", "node_id": null, "remote": null,'
        f' "site": "lab", "token_id": "{tid}", "ts": 1800000000.0, "ttl": 3600, "uses": 10}}'
    ]


def test_a_claimed_replacement_names_the_node_it_replaces(store) -> None:
    token, tid = store.create_token("lab", 10, 3600, False)
    a = EnrollRequest(token, "lab", "old", pub("a"), "h", fingerprint="dmi:1", remote="r1")
    assert store.enroll(a).status == 200
    b = EnrollRequest(token, "lab", "new", pub("b"), "h", fingerprint="dmi:1", remote="r2")
    out = store.enroll(b)
    assert (out.status, out.error) == (202, "hardware of active node old: pending approval")
    assert out.node is not None and out.node["replaces"] == "old"
    last = store.audit_events(1)[0]
    assert (last["event"], last["node_id"], last["remote"]) == ("enroll.pending", "new", "r2")
    assert last["detail"] == '{"hostname": "h", "ip": null, "replaces": "old"}'
