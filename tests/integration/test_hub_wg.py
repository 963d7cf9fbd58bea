"""builder.hub.wg and the writer's per-peer fallback on a real WireGuard interface
(issue 18 finding 5).

Each test makes its own network namespace and moves this test's thread into it with
setns(2) for the duration (so ``ip``/``wg``/``wireguard-go`` that the product starts run
there); the interface is wireguard-go's (this kernel has no WireGuard module, which is the
fallback ``WgInterface.ensure`` is meant to take). Expected keys come from ``wg pubkey``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from enroll_lab import missing_tools, sh

from builder.errors import BuilderError, CommandFailed
from builder.hub import config as hub_config
from builder.hub import wg as hub_wg
from builder.hub.enroll import EnrollRequest
from builder.hub.pki import init_hub
from builder.hub.wg import WgInterface
from builder.hub.writer import WriterCore

pytestmark = pytest.mark.integration

_missing = missing_tools()
if _missing:
    pytest.skip(f"needs {', '.join(_missing)}", allow_module_level=True)

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(ns: str):
    """This thread (and every program it starts) in namespace ``ns``; back afterwards."""
    home = f"/proc/self/task/{threading.get_native_id()}/ns/net"
    keep = os.open(home, os.O_RDONLY)
    try:
        _setns(f"/run/netns/{ns}")
        try:
            yield
        finally:
            if _libc.setns(keep, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(keep)


def pubkey(private: str) -> str:
    return subprocess.run(
        ["wg", "pubkey"], input=private + "\n", capture_output=True, text=True, check=True
    ).stdout.strip()


def genkey() -> str:
    return subprocess.run(
        ["wg", "genkey"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def ns(request):
    name = f"nfwg{os.getpid() % 100000}"
    sh(["ip", "netns", "add", name])
    sh(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
    try:
        yield name
    finally:
        for pid in sh(["ip", "netns", "pids", name], check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGTERM)  # the wireguard-go we started in there
        sh(["ip", "netns", "del", name], check=False)


def iface_name() -> str:
    return f"nfw{os.getpid() % 100000}"  # wireguard-go's UAPI socket path is host-wide


def test_ensure_creates_with_wireguard_go_and_leaves_an_existing_interface(ns, tmp_path):
    key = tmp_path / "wg.key"
    key.write_text(genkey() + "\n")
    name = iface_name()
    wg = WgInterface(name, key, 51820)
    with inside(ns):
        assert not wg.exists()
        assert wg.ensure("10.9.0.1", 16, 1380) is True
        assert wg.exists()
        link = sh(["ip", "-j", "address", "show", "dev", name]).stdout
        info = json.loads(link)[0]
        assert info["mtu"] == 1380 and "UP" in info["flags"]
        v4 = [(a["local"], a["prefixlen"]) for a in info["addr_info"] if a["family"] == "inet"]
        assert v4 == [("10.9.0.1", 16)]
        assert sh(["ip", "-d", "link", "show", "dev", name]).stdout.count("tun") >= 1
        # an existing interface is left exactly as it is
        assert wg.ensure("10.9.0.77", 24, 1420) is False
        again = json.loads(sh(["ip", "-j", "address", "show", "dev", name]).stdout)[0]
        assert again["mtu"] == 1380
        assert [a["local"] for a in again["addr_info"] if a["family"] == "inet"] == ["10.9.0.1"]
        assert wg.public_key() == "(none)"  # what `wg show IF public-key` prints before a key
        wg.syncconf([])
        assert wg.public_key() == pubkey(key.read_text().strip())


def test_no_kernel_module_and_no_wireguard_go_is_a_clear_error(ns, tmp_path, monkeypatch):
    key = tmp_path / "wg.key"
    key.write_text(genkey() + "\n")
    monkeypatch.setattr(hub_wg, "which", lambda prog: None)
    wg = WgInterface(iface_name(), key, 51820)
    with inside(ns), pytest.raises(BuilderError) as exc:
        wg.ensure("10.9.0.1", 16, 1420)
    assert exc.value.message.startswith(f"cannot create WireGuard interface {iface_name()}: ")
    assert exc.value.hint == "load the wireguard kernel module or install wireguard-go"
    with inside(ns):
        assert not wg.exists()


def test_syncconf_dump_allowed_ips_apply_and_remove(ns, tmp_path):
    key = tmp_path / "wg.key"
    key.write_text(genkey() + "\n")
    name = iface_name()
    wg = WgInterface(name, key, 51999)
    keys = [pubkey(genkey()) for _ in range(4)]
    a, b, c, d = keys
    with inside(ns):
        wg.ensure("10.9.0.1", 16, 1420)
        wg.syncconf([(a, "10.9.0.2"), (b, "10.9.0.3")])
        raw = sh(["wg", "show", name, "dump"]).stdout.splitlines()
        assert raw[0].split("\t")[1:3] == [pubkey(key.read_text().strip()), "51999"]
        peers = {p.pubkey: p for p in wg.dump()}
        assert set(peers) == {a, b}
        assert peers[a].allowed_ips == ["10.9.0.2/32"] and peers[a].latest_handshake == 0
        assert peers[a].endpoint == "(none)" and peers[a].rx == peers[a].tx == 0
        assert wg.allowed_ips() == {"10.9.0.2/32": a, "10.9.0.3/32": b}
        assert wg.held == {"10.9.0.2/32": a, "10.9.0.3/32": b}
        # c takes b's address (the database gave it to c): b is removed in the same call
        wg.apply([(c, "10.9.0.3"), (d, "10.9.0.4")])
        assert wg.allowed_ips() == {"10.9.0.2/32": a, "10.9.0.3/32": c, "10.9.0.4/32": d}
        assert b not in {p.pubkey for p in wg.dump()}
        assert wg.held == wg.allowed_ips()
        # a key that moves drops its old address; an explicit removal in the same batch
        wg.apply([(a, "10.9.0.5")], remove=[d])
        assert wg.allowed_ips() == {"10.9.0.5/32": a, "10.9.0.3/32": c}
        assert wg.held == wg.allowed_ips()
        # held is our view: without it (after a failure) the interface is read again
        wg.held = None
        wg.apply([(b, "10.9.0.6")])
        assert wg.allowed_ips()["10.9.0.6/32"] == b and wg.held == wg.allowed_ips()
        wg.remove([b, c])
        assert wg.held is None and {p.pubkey for p in wg.dump()} == {a}
        wg.remove([])  # nothing to do: no `wg set` at all
        # syncconf makes the interface exactly the list: a is gone, d is back
        wg.syncconf([(d, "10.9.0.4")])
        assert wg.allowed_ips() == {"10.9.0.4/32": d}
        # a failed `wg set` forgets the view (the interface may be half applied)
        sh(["ip", "link", "del", "dev", name])
        with pytest.raises(CommandFailed):
            wg.apply([(a, "10.9.0.2")])
        assert wg.held is None
        assert wg.public_key() == ""  # no interface: wg fails, "" (not an exception)


def core_on(ns: str, tmp_path: Path) -> WriterCore:
    d = tmp_path / "hub"
    init_hub(
        d,
        endpoint="hub.example:51820",
        url="https://hub.example:8443",
        overlay_cidr="10.9.0.0/24",
    )
    raw = json.loads((d / "hub.json").read_text())
    raw["wireguard"].update(interface=iface_name(), forward=False, listen_port=51998)
    (d / "hub.json").write_text(json.dumps(raw))
    core = WriterCore(hub_config.load(d / "hub.json"))
    with inside(ns):
        core.start()  # creates the interface (wireguard-go) and reconciles the empty database
    return core


class FailingWgSet:
    """Fault injection around the real ``run``: ``wg set`` fails (as on a netlink error)
    when ``fail(argv)`` says so; everything else, and every other ``wg set``, runs for real."""

    def __init__(self, fail) -> None:
        self.fail = fail
        self.sets: list[list[str]] = []
        self.real = hub_wg.run

    def __call__(self, argv, **kw):
        argv = [str(a) for a in argv]
        if argv[:2] == ["wg", "set"]:
            self.sets.append(argv)
            if self.fail(argv):
                raise CommandFailed("wg set failed (injected)", 1, "Cannot allocate memory")
        return self.real(argv, **kw)


def test_a_failed_batch_is_applied_peer_by_peer(ns, tmp_path, monkeypatch):
    core = core_on(ns, tmp_path)
    token, _ = core.store.create_token("lab", 10, 3600, False)
    keys = [pubkey(genkey()) for _ in range(3)]
    inj = FailingWgSet(lambda argv: argv.count("peer") > 1)  # only the batch call fails
    monkeypatch.setattr(hub_wg, "run", inj)
    with inside(ns):
        res = core.process(
            [EnrollRequest(token, "lab", f"n{i}", k, f"h{i}") for i, k in enumerate(keys)]
        )
        assert [o.status for o in res.outcomes] == [200, 200, 200] and res.wg_errors == 0
        assert len(inj.sets) == 4 and [s.count("peer") for s in inj.sets] == [3, 1, 1, 1]
        ips = {k: o.node["ip"] for k, o in zip(keys, res.outcomes, strict=True)}
        on_iface = core.wg.allowed_ips()
    assert on_iface == {f"{ip}/32": k for k, ip in ips.items()}


def test_one_bad_peer_fails_alone_and_its_retry_applies_it(ns, tmp_path, monkeypatch):
    core = core_on(ns, tmp_path)
    token, _ = core.store.create_token("lab", 10, 3600, False)
    keys = [pubkey(genkey()) for _ in range(3)]
    bad = keys[1]
    inj = FailingWgSet(lambda argv: bad in argv)
    monkeypatch.setattr(hub_wg, "run", inj)
    reqs = [EnrollRequest(token, "lab", f"n{i}", k, f"h{i}") for i, k in enumerate(keys)]
    with inside(ns):
        res = core.process(reqs)
        assert [o.status for o in res.outcomes] == [200, 503, 200] and res.wg_errors == 1
        assert res.outcomes[1].error == "WireGuard apply failed"
        assert res.outcomes[1].retry_after == 5
        held = core.wg.allowed_ips()
        assert set(held.values()) == {keys[0], keys[2]}
        # the node retries: a replay of its committed enrollment, applied this time
        inj.fail = lambda argv: False
        again = core.process([reqs[1]])
        assert again.outcomes[0].status == 200 and again.outcomes[0].replay
        assert core.wg.allowed_ips()[f"{again.outcomes[0].node['ip']}/32"] == bad
