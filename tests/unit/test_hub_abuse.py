"""Abuse of the real hub process over real HTTPS on loopback (issue 14 findings 5-8).

`builder hub serve` runs as a child process on 127.0.0.1 with WireGuard off (no interface
is needed to refuse bad input); requests come from several loopback source addresses
(127.0.0.x) as if from different clients.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from builder.hub.pki import init_hub
from tests.support.hubstore import store_json
from tests.support.ports import free_port

pytestmark = pytest.mark.allow_subprocess

REPO = Path(__file__).resolve().parents[2]
SRC = "127.0.0.99"
P = 2**255 - 19
# Curve25519 strings to reject, from https://cr.yp.to/ecdh.html (D. J. Bernstein, read
# 2026-11-30): 0, 1, two points of order 8, p-1, p, p+1, p+each order-8 point, 2p-1, 2p, 2p+1.
U8A = 325606250916557431795983626356110631294008115727848805560023387167927233504
U8B = 39382357235489614581723060781553021112529911719440698176882885853963445705823
SMALL = [0, 1, U8A, U8B, P - 1, P, P + 1, P + U8A, P + U8B, 2 * P - 1, 2 * P, 2 * P + 1]


def b64(u: int) -> str:
    return base64.b64encode(u.to_bytes(32, "little")).decode()


class LiveHub:
    def __init__(self, d: Path, **limits: float) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        info = init_hub(
            d,
            endpoint="127.0.0.1:51999",
            url=self.url,
            overlay_cidr="10.77.0.0/24",
            hub_ip=None,
            listen=f"127.0.0.1:{self.port}",
            extra_names=["127.0.0.1"],
        )
        self.pubkey = info["hub_public_key"]
        self.config = d / "hub.json"
        cfg = json.loads(self.config.read_text())
        cfg["wireguard"]["apply"] = False
        cfg["join"] = {"provider": "static", "token": "abcdef.0123456789abcdef"}
        cfg["limits"] = {"per_ip_rate": 0, **limits}
        cfg["store"] = store_json(d)  # SQLite; etcd when the integration lane runs these again
        self.config.write_text(json.dumps(cfg))
        self.ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
        self.log = d / "hub.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from builder.cli import main; main()"]
            + ["hub", "serve", "--config", str(self.config)],
            cwd=REPO,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            if self.call("GET", "/healthz")[0] == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"hub not healthy:\n{self.log.read_text()}")

    def call(self, method, path, body=b"", token=None, bind="127.0.0.1", timeout=10.0):
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.ctx, timeout=timeout, source_address=(bind, 0)
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            conn.request(method, path, body=body or None, headers=headers)
            r = conn.getresponse()
            data = r.read()
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = data.decode(errors="replace")
            return r.status, dict(r.getheaders()), parsed
        except (OSError, http.client.HTTPException) as exc:
            return 0, {}, str(exc)
        finally:
            conn.close()

    def token(self, uses: int = 10, approve: bool = False) -> str:
        argv = [
            "hub",
            "token",
            "create",
            "--config",
            str(self.config),
            "--site",
            "lab",
            "--new-site",
        ]
        argv += ["--uses", str(uses)] + (["--approve"] if approve else [])
        p = subprocess.run(
            [sys.executable, "-c", "from builder.cli import main; main()", *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        return p.stdout.strip()

    def nodes(self) -> int:
        from builder.hub import admin

        _, store = admin.open_store(self.config)  # the stored rows, read afresh
        try:
            return len(store.list_nodes())
        finally:
            store.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in writer_pids(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def writer_pids(pid: int) -> list[int]:
    """The hub's writer processes (multiprocessing children; not its resource tracker)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    out.append(int(child))
    return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = LiveHub(tmp_path_factory.mktemp("abuse") / "hub")
    yield h
    h.close()


def body(node_id: str, pub: str, **extra: str) -> bytes:
    return json.dumps({"site": "lab", "node_id": node_id, "wg_pubkey": pub, **extra}).encode()


def good_key() -> str:
    return b64(
        int.from_bytes(x25519.X25519PrivateKey.generate().public_key().public_bytes_raw(), "little")
    )


def test_small_order_all_zero_and_the_hubs_own_key_are_refused(hub):
    """Finding 5: they were answered 200 with an address allocated."""
    token = hub.token(uses=50)
    me = x25519.X25519PrivateKey.generate()
    bad = []
    for u in SMALL:
        raw = u.to_bytes(32, "little")
        bad.append(base64.b64encode(raw).decode())
        if u < 2**255:
            # independent check that the point is of small order: the shared secret is
            # all zeros, which OpenSSL refuses to return; the same with bit 255 set
            hi = raw[:31] + bytes([raw[31] | 0x80])
            for r in (raw, hi):
                with pytest.raises(ValueError):
                    me.exchange(x25519.X25519PublicKey.from_public_bytes(r))
            bad.append(base64.b64encode(hi).decode())
    assert len(bad) == 19
    before = hub.nodes()
    for i, pub in enumerate([*bad, hub.pubkey]):
        status, _, answer = hub.call("POST", "/v1/enroll", body(f"low-{i}", pub), token)
        assert status == 400, (pub, status, answer)
        assert "wg_pubkey" in answer["error"]
    assert hub.nodes() == before
    status, _, _ = hub.call("POST", "/v1/enroll", body("fine", good_key()), token)
    assert status == 200


def test_deeply_nested_json_is_400(hub):
    """Finding 7: 2,000 levels in 4 KB gave 500 (RecursionError)."""
    token = hub.token()
    for payload in (b"[" * 2000 + b"]" * 2000, b'{"a":' + b"[" * 1900 + b"]" * 1900 + b"}"):
        assert len(payload) <= 4096
        status, _, answer = hub.call("POST", "/v1/enroll", payload, token)
        assert status == 400, (status, answer)
    assert hub.call("GET", "/healthz")[0] == 200


def test_a_dead_writer_is_not_healthy_and_is_restarted(hub):
    """Finding 6: with the writer killed, /healthz said 200 writer:true and the next
    enrollment got a connection reset."""
    token = hub.token(uses=100)
    pids = writer_pids(hub.proc.pid)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    # a signal is delivered when the process next runs: wait until it is really dead (gone,
    # or a zombie not yet reaped), or a loaded machine answers the first healthz before that
    stat_file = Path(f"/proc/{pids[0]}/stat")
    dead_by = time.monotonic() + 10
    while time.monotonic() < dead_by:
        try:
            if stat_file.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
        except (OSError, IndexError):
            break
        time.sleep(0.02)
    seen = []
    deadline = time.monotonic() + 20
    i = 0
    while time.monotonic() < deadline:
        st, hd, answer = hub.call("GET", "/healthz")
        if st == 200:
            assert answer.get("writer") is True and answer.get("writer_pid") != pids[0]
        else:
            assert st == 503 and hd.get("Retry-After"), (st, hd, answer)
        i += 1
        est, ehd, _ = hub.call("POST", "/v1/enroll", body(f"w-{i}", good_key()), token)
        assert est in (200, 503), est  # never a reset
        if est == 503:
            assert ehd.get("Retry-After")
        seen.append((st, est))
        if st == 200 and est == 200:
            break
        time.sleep(0.05)
    assert seen[-1] == (200, 200), seen
    assert hub.proc.poll() is None
    assert writer_pids(hub.proc.pid) not in ([], pids)
    _, _, m = hub.call("GET", "/metrics")
    assert "nodeforge_hub_writer_restarts_total 1" in m


def test_guessing_tokens_from_many_addresses_hits_a_site_wide_budget(tmp_path):
    """Finding 8: 375 guesses from 15 addresses were never rate-limited."""
    h = LiveHub(tmp_path / "hub", failed_auth_rate=0.2, failed_auth_burst=50)
    try:
        good, other = h.token(uses=5), h.token(uses=5)
        tid = good.split(".")[1]
        counts: dict[int, int] = {}
        for i in range(375):
            src = f"127.0.0.{10 + i % 15}"
            guess = f"nf1.{tid if i % 2 else os.urandom(8).hex()}.{'A' * 43}"
            st, hd, _ = h.call("POST", "/v1/enroll", body(f"g{i}", good_key()), guess, bind=src)
            counts[st] = counts.get(st, 0) + 1
            if st == 429:
                assert int(hd["Retry-After"]) >= 1
        assert counts.get(429, 0) >= 250, counts
        # evaluated: the site-wide burst, then only guesses naming the usable token until
        # that token's own failure budget (the same burst) is spent, plus a little refill
        assert 50 <= counts.get(401, 0) <= 120, counts
        # a node with another good token is still let in while the budget is spent; the
        # token whose id the guesses named is throttled too (429 + Retry-After: it waits)
        st, _, answer = h.call("POST", "/v1/enroll", body("real", good_key()), other, bind=SRC)
        assert st == 200, answer
        st, _, _ = h.call("POST", "/v1/enroll", body("real2", good_key()), good, bind=SRC)
        assert st == 429
        _, _, m = h.call("GET", "/metrics")
        failures = [
            line for line in m.splitlines() if line.startswith("nodeforge_hub_auth_failures_total ")
        ]
        throttled = [
            line
            for line in m.splitlines()
            if line.startswith("nodeforge_hub_auth_throttled_total ")
        ]
        assert failures and float(failures[0].split()[1]) == counts[401]
        assert throttled and float(throttled[0].split()[1]) >= 250
    finally:
        h.close()
