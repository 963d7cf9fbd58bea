"""Boot tests: the hub identity (cached) and the lab: a private network namespace with the
real hub in it, or a stand-in for a hub that is down."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import BuilderError
from builder.fsutil import atomic_write
from builder.run import PIPE, popen, require, run, stop

from . import qemu
from .constants import (
    API_SERVER,
    BUILDER,
    FORMAT,
    HUB_HOST,
    HUB_PORT,
    STATIC_CA_HASH,
    STATIC_JOIN_TOKEN,
    WG_PORT,
    log,
)
from .disk import cache_root


# -- hub identity and the lab (network namespace + real hub) --------------------------------
@dataclass(frozen=True)
class HubIdentity:
    """A hub made by ``builder hub init`` once and cached (CA, server cert, keys)."""

    dir: Path
    ca_pin: str
    public_key: str
    overlay_cidr: str
    hub_ip: str

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.pem"


def builder_cli(*args: str, timeout: float = 120) -> str:
    """Run our own CLI (``builder …``) as a separate process; return its stdout."""
    return run([*BUILDER, *args], timeout=timeout).stdout


def hub_identity(overlay_cidr: str, hub_ip: str) -> HubIdentity:
    key = hashlib.sha256(f"{FORMAT}|{overlay_cidr}|{hub_ip}|{HUB_HOST}".encode()).hexdigest()
    d = cache_root() / f"hub-{key[:16]}"
    info_file = d / "identity.json"
    if info_file.exists():
        info = json.loads(info_file.read_text())
        return HubIdentity(d, info["ca_pin"], info["public_key"], overlay_cidr, hub_ip)
    tmp = d.with_name(d.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    out = builder_cli(
        "hub", "init", str(tmp),
        "--endpoint", f"{HUB_HOST}:{WG_PORT}",
        "--url", f"https://{HUB_HOST}:{HUB_PORT}",
        "--overlay-cidr", overlay_cidr,
        "--hub-ip", hub_ip,
        "--listen", f"0.0.0.0:{HUB_PORT}",
    )  # fmt: skip
    info = dict(line.split(": ", 1) for line in out.strip().splitlines() if ": " in line)
    ident = {"ca_pin": info["enrollment.ca_pin"], "public_key": info["wireguard.hub_public_key"]}
    atomic_write(tmp / "identity.json", json.dumps(ident, indent=1) + "\n")
    shutil.rmtree(d, ignore_errors=True)
    os.replace(tmp, d)
    return HubIdentity(d, ident["ca_pin"], ident["public_key"], overlay_cidr, hub_ip)


_NS_COUNTER = iter(range(1, 1_000_000))
_NS_LOCK = threading.Lock()


class Lab:
    """A private network namespace with the real hub in it. Use as a context manager."""

    def __init__(self, workdir: Path, ident: HubIdentity) -> None:
        for tool in ("ip", "wg", "wireguard-go", qemu.QEMU):
            require(tool)
        if os.geteuid() != 0:
            raise BuilderError("boot tests need root (network namespaces, chroot)")
        with _NS_LOCK:
            n = next(_NS_COUNTER)
        self.tag = f"{os.getpid() % 100000}x{n}"
        self.ns = f"nfboot{self.tag}"
        self.workdir = workdir
        self.ident = ident
        self.dir = workdir / "hub"
        self.log = workdir / "hub.log"
        self.proc: Any = None
        self.hub_started_at: float | None = None
        shutil.copytree(ident.dir, self.dir, ignore=shutil.ignore_patterns("hub.db*"))
        cfg = json.loads((self.dir / "hub.json").read_text())
        cfg["wireguard"]["interface"] = f"nfw{self.tag}"[:15]
        cfg["reconcile_seconds"] = 5
        cfg["join"] = {
            "provider": "static",
            "token": STATIC_JOIN_TOKEN,
            "ca_cert_hashes": [STATIC_CA_HASH],
            "api_server": API_SERVER,
            "cri_socket": "unix:///var/run/crio/crio.sock",
            "labels": {},
            "taints": [],
        }
        atomic_write(self.dir / "hub.json", json.dumps(cfg, indent=1) + "\n", 0o600)
        self.config = self.dir / "hub.json"
        self.iface = cfg["wireguard"]["interface"]

    def __enter__(self) -> Lab:
        run(["ip", "netns", "add", self.ns])
        run(["ip", "-n", self.ns, "link", "set", "lo", "up"])
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exec_argv(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *[os.fspath(a) for a in argv]]

    def start_hub(self) -> None:
        fh = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = popen(
            self.exec_argv([*BUILDER, "hub", "serve", "--config", str(self.config)]),
            stdout=fh,
            stderr=fh,
            stdin=None,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        fh.close()
        self.hub_started_at = time.monotonic()
        deadline = time.monotonic() + 30
        probe = (
            "import socket,sys\n"
            f"try:\n socket.create_connection(('127.0.0.1', {HUB_PORT}), 1).close()\n"
            "except OSError: sys.exit(1)\n"
        )
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BuilderError(f"the hub exited ({self.proc.returncode}):\n{self.hub_log()}")
            up = run(self.exec_argv([sys.executable, "-c", probe]), check=False).returncode == 0
            wg = run(["ip", "-n", self.ns, "link", "show", self.iface], check=False)
            if up and wg.returncode == 0:
                log.info("hub up in %s (%s, wireguard-go %s)", self.ns, HUB_PORT, self.iface)
                return
            time.sleep(0.3)
        raise BuilderError(f"the hub did not come up in 30 s:\n{self.hub_log()}")

    def hub_log(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def token(self, site: str, uses: int = 1, ttl: str = "1h") -> str:
        out = builder_cli(
            "hub", "token", "create", "--config", str(self.config),
            "--site", site, "--uses", str(uses), "--ttl", ttl,
            "--description", "boot test",
        )  # fmt: skip
        return out.strip().splitlines()[-1].strip()

    def nodes(self) -> list[dict[str, Any]]:
        return json.loads(builder_cli("hub", "nodes", "--config", str(self.config), "--json"))  # type: ignore[no-any-return]

    def tokens(self) -> list[dict[str, Any]]:
        out = builder_cli("hub", "token", "list", "--config", str(self.config), "--json")
        return json.loads(out)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc, 10)
        # what is left in the namespace was started here (wireguard-go, QEMU): end it by pid
        pids = run(["ip", "netns", "pids", self.ns], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", self.ns], check=False)


# -- a hub that is down (negative boots) ---------------------------------------------------
_REFUSER = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
while True:
    c, _ = s.accept()
    print("refused", time.time(), flush=True)
    c.close()
"""


class HubOutage:
    """Stands in for a hub that is down: in the lab's namespace, accepts each connection
    on the hub's port and closes it at once (the node sees a failed TLS handshake), counting
    the attempts. ``stop()`` frees the port for the real hub."""

    def __init__(self, lab: Lab) -> None:
        self.attempts: list[float] = []
        self.proc = popen(
            lab.exec_argv([sys.executable, "-c", _REFUSER, str(HUB_PORT)]),
            stdout=PIPE,
            stderr=None,
            stdin=None,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if raw.startswith(b"refused"):
                self.attempts.append(time.time())

    def stop(self) -> None:
        stop(self.proc, 0, sig=signal.SIGKILL)
