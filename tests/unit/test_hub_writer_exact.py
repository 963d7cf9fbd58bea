"""The hub's writer pinned to exact behaviour (issue 18, round 5: the mutants of
``builder/hub/writer.py``). A real WriterCore on a real SQLite store, with the real
``WgInterface`` building every ``wg`` command line; only the program runner is replaced by
a recorder (``wg`` would need root and an interface, tested in tests/integration/test_hub_wg.py)
that answers like ``wg``: 0 on success, a non-zero exit for a peer named as failing."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import threading
import time
from multiprocessing import Pipe
from pathlib import Path

import pytest

from builder.errors import CommandFailed
from builder.hub import config as hub_config
from builder.hub import wg as hub_wg
from builder.hub import writer as hub_writer
from builder.hub.pki import init_hub
from builder.hub.store import EnrollRequest
from builder.hub.writer import BatchResult, WriterCore, store_counts

# `wg genkey | wg pubkey` (wireguard-tools, 2026-11-30): real Curve25519 public keys
KEYS = [
    "pNmPrevcsL89VIQH12HanG/H0X/MykOE71H8cpAD8HY=",
    "cZ1ulPfB1AEPQL6EK5sP2OXluZQWMUV0E+utSVuh7nk=",
    "cvOV1+VQLOdmOR4Tr/inihnQT0K1zPJhTFmHct+4+Fk=",
]


class WgRecorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.confs: list[str] = []
        self.failing: set[str] = set()
        self.fail_batches = False

    def __call__(self, argv, **kw):
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        if argv[:2] == ["wg", "syncconf"]:
            self.confs.append(Path(argv[3]).read_text())
        elif argv[:2] == ["wg", "show"] and argv[3] == "allowed-ips":
            return subprocess.CompletedProcess(argv, 0, "", "")
        elif argv[:2] == ["wg", "set"]:
            peers = [argv[i + 1] for i, a in enumerate(argv) if a == "peer"]
            adds = argv.count("allowed-ips")
            if (self.fail_batches and adds > 1) or self.failing & set(peers):
                raise CommandFailed("wg set: Invalid argument", 1)
        elif argv[:3] == ["ip", "link", "show"]:
            return subprocess.CompletedProcess(argv, 1, "", "Device does not exist.")
        elif argv[0] == "ip":
            pass
        else:
            raise AssertionError(f"unexpected program {argv}")
        return subprocess.CompletedProcess(argv, 0, "", "")


def config(tmp_path: Path, **wg: object) -> hub_config.HubConfig:
    d = tmp_path / "hub"
    init_hub(
        d,
        endpoint="hub.example:51820",
        url="https://hub.example:8443",
        overlay_cidr="10.9.0.0/24",
        hub_ip="10.9.0.1",
    )
    raw = json.loads((d / "hub.json").read_text())
    raw["wireguard"].update({"create_interface": False, "forward": False, **wg})
    raw["reconcile_seconds"] = 30
    (d / "hub.json").write_text(json.dumps(raw))
    return hub_config.load(d / "hub.json")


@pytest.fixture
def wg(monkeypatch) -> WgRecorder:
    rec = WgRecorder()
    monkeypatch.setattr(hub_wg, "run", rec)
    return rec


@pytest.fixture
def core(tmp_path, wg) -> WriterCore:
    c = WriterCore(config(tmp_path))
    yield c
    c.store.close()


def reqs(core: WriterCore, n: int) -> list[EnrollRequest]:
    token, _ = core.store.create_token("lab", 10, 3600, False)
    return [EnrollRequest(token, "lab", f"n{i}", KEYS[i], f"h{i}") for i in range(n)]


def test_store_counts_of_a_store_without_counters() -> None:
    class Counting:
        conflicts, giveups = 3, 4

    assert store_counts(object()) == (0, 0)  # type: ignore[arg-type]
    assert store_counts(Counting()) == (3, 4)  # type: ignore[arg-type]


def test_batch_result_defaults() -> None:
    r = BatchResult([])
    assert (r.db_seconds, r.wg_seconds, r.wg_errors) == (0.0, 0.0, 0)
    assert (r.store_conflicts, r.store_giveups, r.notes) == (0, 0, [])


def test_start_reconciles_the_database_into_the_interface(core, wg) -> None:
    assert (core.watching, core.last_reconcile, core.next_reconcile) == (False, 0.0, 0.0)
    core.process(reqs(core, 2))
    wg.calls.clear()
    before = time.monotonic()
    core.start()
    after = time.monotonic()
    assert wg.calls[0][:3] == ["wg", "syncconf", "wg0"]
    key = (core.cfg.wg.private_key_file).read_text().strip()
    assert wg.confs == [
        "[Interface]\n"
        f"PrivateKey = {key}\n"
        "ListenPort = 51820\n\n"
        f"[Peer]\nPublicKey = {KEYS[0]}\nAllowedIPs = 10.9.0.2/32\n\n"
        f"[Peer]\nPublicKey = {KEYS[1]}\nAllowedIPs = 10.9.0.3/32\n"
    ]
    assert before <= core.last_reconcile <= after
    assert before + 30 <= core.next_reconcile <= after + 30
    assert core.watching is False
    # reconcile_seconds 30, not watching: wait until the next reconcile
    assert 29 < core.idle_seconds() <= 30


def test_start_without_apply_touches_nothing(tmp_path, wg) -> None:
    c = WriterCore(config(tmp_path, apply=False))
    try:
        c.start()
        c.maybe_reconcile()
        assert wg.calls == [] and c.next_reconcile == 0.0
        assert c.idle_seconds() == 1.0
        res = c.process(reqs(c, 1))
        assert [o.status for o in res.outcomes] == [200] and wg.calls == []
    finally:
        c.store.close()


def test_idle_seconds(core) -> None:
    core.next_reconcile = time.monotonic() - 100
    assert core.idle_seconds() == 0.05  # overdue: poll again soon, not a negative wait
    core.next_reconcile = time.monotonic() + 10
    assert 9 < core.idle_seconds() <= 10
    core.cfg = dataclasses.replace(core.cfg, reconcile_seconds=0)
    assert core.idle_seconds() == 1.0
    core.watching = True
    assert core.idle_seconds() == 0.2


def test_maybe_reconcile_when_due_or_told(core, wg) -> None:
    core.next_reconcile = time.monotonic() + 100
    core.maybe_reconcile()
    assert wg.calls == []  # not due
    core.next_reconcile = time.monotonic()
    core.maybe_reconcile()
    assert [c[1] for c in wg.calls] == ["syncconf"]
    # another hub changed the store: reconcile at once, but not twice within 0.5 s
    core.changed.set()
    core.maybe_reconcile()
    assert len(wg.calls) == 1 and core.changed.is_set()
    core.last_reconcile = time.monotonic() - 0.5
    core.maybe_reconcile()
    assert len(wg.calls) == 2 and not core.changed.is_set()
    # reconcile_seconds 0: only a change makes it due
    core.cfg = dataclasses.replace(core.cfg, reconcile_seconds=0)
    core.next_reconcile = 0.0
    core.maybe_reconcile()
    assert len(wg.calls) == 2


def test_a_failed_reconcile_is_retried_in_five_seconds(core, wg, monkeypatch, caplog) -> None:
    def fail(argv, **kw):
        raise CommandFailed("wg syncconf: No such device", 1)

    monkeypatch.setattr(hub_wg, "run", fail)
    core.next_reconcile = 0.0
    before = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="nodeforge.hub"):
        core.maybe_reconcile()
    assert before + 5 <= core.next_reconcile <= time.monotonic() + 5
    assert [r.getMessage() for r in caplog.records if r.name == "nodeforge.hub"] == [
        "reconcile failed: wg syncconf: No such device"
    ]


def test_one_wg_set_for_a_batch(core, wg) -> None:
    res = core.process(reqs(core, 3))
    assert [o.status for o in res.outcomes] == [200, 200, 200]
    sets = [c for c in wg.calls if c[1] == "set"]
    assert sets == [
        ["wg", "set", "wg0"]
        + ["peer", KEYS[0], "allowed-ips", "10.9.0.2/32"]
        + ["peer", KEYS[1], "allowed-ips", "10.9.0.3/32"]
        + ["peer", KEYS[2], "allowed-ips", "10.9.0.4/32"]
    ]
    assert res.wg_errors == 0 and res.store_conflicts == 0 and res.store_giveups == 0
    assert 0 <= res.db_seconds < 5 and 0 <= res.wg_seconds < 5
    # refused requests and replays add no peer: no wg set at all
    wg.calls.clear()
    token, _ = core.store.create_token("lab", 1, 3600, False)
    res = core.process([EnrollRequest("nf1.0000000000000000.x", "lab", "z", KEYS[0])])
    assert [o.status for o in res.outcomes] == [401] and wg.calls == []


def test_a_failed_batch_is_applied_peer_by_peer(core, wg, caplog) -> None:
    wg.fail_batches = True
    wg.failing = {KEYS[1]}
    with caplog.at_level(logging.ERROR, logger="nodeforge.hub"):
        res = core.process(reqs(core, 3))
    assert [(o.status, o.error, o.retry_after) for o in res.outcomes] == [
        (200, "", None),
        (503, "WireGuard apply failed", 5),
        (200, "", None),
    ]
    assert res.wg_errors == 1
    singles = [c for c in wg.calls if c[1] == "set" and c.count("peer") == 1]
    assert [c[4] for c in singles] == KEYS
    assert [r.getMessage() for r in caplog.records if r.name == "nodeforge.hub"] == [
        "wg set for a batch of 3 failed: wg set: Invalid argument",
        f"wg set for {KEYS[1]} failed: wg set: Invalid argument",
    ]


def test_every_peer_failing_counts_each(core, wg) -> None:
    wg.failing = set(KEYS)
    res = core.process(reqs(core, 2))
    assert res.wg_errors == 2
    assert [o.status for o in res.outcomes] == [503, 503]


def test_database_trouble_fails_the_whole_batch(core, wg, monkeypatch, caplog) -> None:
    batch = reqs(core, 2)

    def broken(reqs):
        raise OSError("disk I/O error")

    monkeypatch.setattr(core.store, "enroll_many", broken)
    with caplog.at_level(logging.ERROR, logger="nodeforge.hub"):
        res = core.process(batch)
    assert [(o.status, o.error, o.retry_after) for o in res.outcomes] == [
        (503, "database unavailable", 5),
        (503, "database unavailable", 5),
    ]
    assert wg.calls == []
    assert [r.getMessage() for r in caplog.records if r.name == "nodeforge.hub"] == [
        "enrollment batch failed: disk I/O error"
    ]


def test_a_watching_writer_reconciles_after_a_batch(core, wg) -> None:
    core.watching = True
    core.changed.set()
    core.last_reconcile = 0.0
    core.next_reconcile = time.monotonic() + 100
    core.process(reqs(core, 1))
    assert [c[1] for c in wg.calls] == ["show", "set", "syncconf"]
    assert not core.changed.is_set()


class FrozenTime:
    """``time`` as the writer sees it, stopped at ``now`` (the exact edges of its waits)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


def test_reconcile_logs_the_count(core, wg, caplog) -> None:
    core.process(reqs(core, 2))
    with caplog.at_level(logging.INFO, logger="nodeforge.hub"):
        core.reconcile()
    assert [r.getMessage() for r in caplog.records if r.name == "nodeforge.hub"] == [
        "reconciled 2 peers into wg0"
    ]


def test_maybe_reconcile_at_its_exact_edges(core, wg, monkeypatch) -> None:
    clock = FrozenTime(1000.0)
    monkeypatch.setattr(hub_writer, "time", clock)
    core.next_reconcile = 1000.0  # due at exactly now
    core.maybe_reconcile()
    assert len(wg.calls) == 1 and core.next_reconcile == 1030.0
    assert core.last_reconcile == 1000.0
    # a change told exactly 0.5 s after the last reconcile: due
    clock.now = 1000.5
    core.changed.set()
    core.maybe_reconcile()
    assert len(wg.calls) == 2 and not core.changed.is_set()
    # reconcile_seconds under one second still reconciles on time
    core.cfg = dataclasses.replace(core.cfg, reconcile_seconds=0.25)
    core.next_reconcile = 1000.5
    core.maybe_reconcile()
    assert len(wg.calls) == 3 and core.next_reconcile == 1000.75


def test_store_conflict_counts_are_per_batch(core, wg, monkeypatch) -> None:
    """An etcd store counts compare failures and give-ups; a batch reports its own."""
    core.store.conflicts, core.store.giveups = 5, 3
    real = core.store.enroll_many

    def counting(batch):
        time.sleep(0.02)
        core.store.conflicts += 2
        core.store.giveups += 1
        return real(batch)

    monkeypatch.setattr(core.store, "enroll_many", counting)
    res = core.process(reqs(core, 1))
    assert (res.store_conflicts, res.store_giveups) == (2, 1)
    assert 0.02 <= res.db_seconds < 5


def test_a_refused_outcome_is_never_applied(core, wg, monkeypatch) -> None:
    from builder.hub.store import Outcome

    def crafted(batch):
        return [Outcome(500, "internal error", add_peer=(KEYS[0], "10.9.0.9"),
                        remove_peers=[KEYS[1]])]  # fmt: skip

    monkeypatch.setattr(core.store, "enroll_many", crafted)
    res = core.process(reqs(core, 1))
    assert [o.status for o in res.outcomes] == [500] and wg.calls == []


def rekey_batch(tmp_path, wg) -> tuple[WriterCore, list[EnrollRequest]]:
    """node n0 enrolled with KEYS[0] (10.9.0.2) by an earlier writer; a new writer (no
    view of the interface: `wg show` lists nothing) gets its re-key to KEYS[2] with its
    node secret, between two new nodes."""
    first = WriterCore(config(tmp_path))
    batch = reqs(first, 1)
    res = first.process(batch)
    from builder.hub import tokens as tok

    node = res.outcomes[0].node
    assert node is not None
    s = tok.node_secret(first.cfg.secret_key(), node["node_id"], node["pubkey"], node["generation"])
    first.store.close()
    core = WriterCore(first.cfg)
    token, _ = core.store.create_token("lab", 10, 3600, False)
    wg.calls.clear()
    return core, [
        EnrollRequest(token, "lab", "n1", KEYS[1], "h1"),
        EnrollRequest("", "lab", "n0", KEYS[2], "h0", node_secret=s),
        EnrollRequest("nf1.0000000000000000." + "A" * 43, "lab", "n9", KEYS[0]),
    ]


def test_a_rekey_removes_the_old_key_the_interface_does_not_show(tmp_path, wg) -> None:
    core, batch = rekey_batch(tmp_path, wg)
    try:
        res = core.process(batch)
        assert [o.status for o in res.outcomes] == [200, 200, 401]
        sets = [c for c in wg.calls if c[1] == "set"]
        assert sets == [
            ["wg", "set", "wg0", "peer", KEYS[0], "remove"]
            + ["peer", KEYS[1], "allowed-ips", "10.9.0.3/32"]
            + ["peer", KEYS[2], "allowed-ips", "10.9.0.2/32"]
        ]
    finally:
        core.store.close()


def test_peer_by_peer_skips_refusals_and_keeps_removals(tmp_path, wg) -> None:
    core, batch = rekey_batch(tmp_path, wg)
    batch = [batch[2], *batch[:2]]  # the refusal first
    wg.fail_batches = True
    try:
        res = core.process(batch)
        assert [o.status for o in res.outcomes] == [401, 200, 200]
        assert res.wg_errors == 0
        singles = [c for c in wg.calls if c[1] == "set" and c.count("allowed-ips") == 1]
        assert singles == [
            ["wg", "set", "wg0", "peer", KEYS[1], "allowed-ips", "10.9.0.3/32"],
            ["wg", "set", "wg0", "peer", KEYS[0], "remove"]
            + ["peer", KEYS[2], "allowed-ips", "10.9.0.2/32"],
        ]
    finally:
        core.store.close()


@pytest.fixture
def root_logging():
    """writer_main sets up logging for its own process (``basicConfig``): put the root
    logger back as it was, whatever the test runner had there."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield root
    root.handlers = saved[0]
    root.setLevel(saved[1])


class Conn:
    """The writer's end of the pipe, recording what it sends."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, m: object) -> None:
        self.sent.append(m)


def test_writer_main_reports_a_bad_config(tmp_path, root_logging) -> None:
    p = Conn()
    missing = tmp_path / "missing.json"
    hub_writer.writer_main(str(missing), p)
    assert p.sent == [
        ("error", f"{missing}: hub config not found\nhint: create one with `builder hub init DIR`")
    ]
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    p = Conn()
    hub_writer.writer_main(str(listed), p)
    assert p.sent == [("error", f"{listed}: top level must be a mapping")]


def test_writer_main_sets_up_logging_for_its_process(tmp_path, root_logging) -> None:
    root = root_logging
    root.handlers = []
    root.setLevel(logging.WARNING)
    hub_writer.writer_main(str(tmp_path / "missing.json"), Conn())
    assert root.level == logging.INFO
    assert len(root.handlers) == 1
    h = root.handlers[0]
    assert isinstance(h, logging.StreamHandler) and h.stream is sys.stderr
    assert h.formatter is not None and h.formatter._fmt == "%(message)s"


def test_writer_main_serves_batches_until_told_to_stop(tmp_path, wg, root_logging) -> None:
    cfg = config(tmp_path, apply=False)
    maker = WriterCore(cfg)
    token, _ = maker.store.create_token("lab", 10, 3600, False)
    maker.store.close()
    parent, child = Pipe()
    t = threading.Thread(target=hub_writer.writer_main, args=(str(cfg.path), child), daemon=True)
    t.start()
    try:
        assert parent.poll(10) and parent.recv() == ("ready", None)
        time.sleep(1.2)  # one idle poll (1 s without WireGuard) goes by: it keeps serving
        parent.send([EnrollRequest(token, "lab", "n0", KEYS[0], "h0")])
        assert parent.poll(10)
        res = parent.recv()
        assert isinstance(res, BatchResult) and [o.status for o in res.outcomes] == [200]
        assert res.outcomes[0].node["ip"] == "10.9.0.2"
        parent.send([EnrollRequest(token, "lab", "n1", KEYS[1], "h1")])
        assert parent.poll(10) and [o.node["ip"] for o in parent.recv().outcomes] == ["10.9.0.3"]
        parent.send(None)
        t.join(10)
        assert not t.is_alive()
    finally:
        parent.close()


def test_writer_main_ends_when_the_server_goes(tmp_path, wg, root_logging) -> None:
    cfg = config(tmp_path, apply=False)
    parent, child = Pipe()
    t = threading.Thread(target=hub_writer.writer_main, args=(str(cfg.path), child), daemon=True)
    t.start()
    assert parent.poll(10) and parent.recv() == ("ready", None)
    parent.close()
    t.join(10)
    assert not t.is_alive()


def test_idle_seconds_with_a_short_reconcile_period(core, monkeypatch) -> None:
    monkeypatch.setattr(hub_writer, "time", FrozenTime(50.0))
    core.cfg = dataclasses.replace(core.cfg, reconcile_seconds=0.5)
    core.next_reconcile = 50.3
    assert core.idle_seconds() == pytest.approx(0.3)


def test_start_watches_a_shared_store_creates_the_interface_and_forwards(
    tmp_path, wg, monkeypatch, caplog
) -> None:
    """A store shared by several hubs (etcd) has ``watch``: here a recording stand-in on the
    SQLite store. The interface is created through ``ip`` (recorded) and forwarding turned
    on through builder.hub.routing (recorded: tested in test_hub_routing*)."""
    c = WriterCore(config(tmp_path, create_interface=True, forward=True))
    watched: list[tuple[object, ...]] = []
    done = threading.Event()

    def watch(on_change, stop):
        watched.append((on_change, stop, threading.current_thread()))
        done.set()

    forwarded: list[str] = []

    def enable_forwarding(interface):
        forwarded.append(interface)
        return ["net.ipv4.ip_forward 0 -> 1"]

    c.store.watch = watch
    monkeypatch.setattr(hub_writer.routing, "enable_forwarding", enable_forwarding)
    try:
        with caplog.at_level(logging.INFO, logger="nodeforge.hub"):
            c.start()
        assert done.wait(5)
        on_change, stop, thread = watched[0]
        assert on_change == c.changed.set and stop is c.stop_watch
        assert isinstance(stop, threading.Event)
        assert thread.name == "store-watch" and thread.daemon is True
        assert c.watching is True and c.idle_seconds() == 0.2
        assert [a for a in wg.calls if a[0] == "ip"] == [
            ["ip", "link", "show", "dev", "wg0"],
            ["ip", "link", "add", "dev", "wg0", "type", "wireguard"],
            ["ip", "address", "add", "10.9.0.1/24", "dev", "wg0"],
            ["ip", "link", "set", "dev", "wg0", "mtu", "1420", "up"],
        ]
        assert forwarded == ["wg0"]
        assert [r.getMessage() for r in caplog.records if r.name == "nodeforge.hub"] == [
            "created interface wg0",
            "routing: net.ipv4.ip_forward 0 -> 1",
            "reconciled 0 peers into wg0",
        ]
    finally:
        c.store.close()


def test_writer_main_reconciles_while_idle(tmp_path, wg, root_logging) -> None:
    """Between batches the writer wakes up after ``idle_seconds`` and reconciles when due."""
    d = tmp_path / "hub"
    cfg = config(tmp_path)
    raw = json.loads(cfg.path.read_text())
    raw["reconcile_seconds"] = 0.2
    (d / "hub.json").write_text(json.dumps(raw))
    parent, child = Pipe()
    t = threading.Thread(target=hub_writer.writer_main, args=(str(cfg.path), child), daemon=True)
    t.start()
    try:
        assert parent.poll(10) and parent.recv() == ("ready", None)
        deadline = time.monotonic() + 10
        while sum(c[1] == "syncconf" for c in wg.calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(c[1] == "syncconf" for c in wg.calls) >= 3  # at start, then while idle
        parent.send(None)
        t.join(10)
        assert not t.is_alive()
    finally:
        parent.close()
