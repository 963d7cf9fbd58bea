"""Boot tests: the hub identity (cached) and the lab: a private network namespace with the
real hub (``builder hub serve`` + wireguard-go) in it, and what the hub sees."""

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

from builder import paths
from builder.errors import BuilderError
from builder.fsutil import atomic_write
from builder.run import popen, require, run, stop

from . import qemu
from .constants import (
    API_SERVER,
    BUILDER,
    FORMAT,
    HUB_HOST,
    HUB_PORT,
    HUB_URL,
    STATIC_CA_HASH,
    STATIC_JOIN_TOKEN,
    WG_PORT,
    log,
)


def cache_root() -> Path:
    return paths.cache_dir() / "boot-test"


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
        "--url", HUB_URL,
        "--overlay-cidr", overlay_cidr,
        "--hub-ip", hub_ip,
        "--listen", f"0.0.0.0:{HUB_PORT}", "--json",
    )  # fmt: skip
    info = json.loads(out)
    ident = {"ca_pin": info["ca_pin"], "public_key": info["hub_public_key"]}
    atomic_write(tmp / "identity.json", json.dumps(ident, indent=1) + "\n")
    shutil.rmtree(d, ignore_errors=True)
    os.replace(tmp, d)
    return HubIdentity(d, ident["ca_pin"], ident["public_key"], overlay_cidr, hub_ip)


def hub_overrides(ident: HubIdentity, retry_max_seconds: int = 15) -> list[str]:
    """``--set`` overrides pointing a site's node config at the lab's hub."""
    return [
        f"enrollment.url={HUB_URL}",
        f"enrollment.ca_cert=file:{ident.ca_cert}",
        f"enrollment.ca_pin={ident.ca_pin}",
        f"enrollment.retry_max_seconds={retry_max_seconds}",
        f"wireguard.hub_endpoint={HUB_HOST}:{WG_PORT}",
        f"wireguard.hub_public_key={ident.public_key}",
        f"wireguard.overlay_cidr={ident.overlay_cidr}",
        f"wireguard.hub_overlay_ip={ident.hub_ip}",
    ]


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
            "--new-site",  # the lab's own hub: the site was checked when the image was rendered
        )  # fmt: skip
        return out.strip().splitlines()[-1].strip()

    def nodes(self) -> list[dict[str, Any]]:
        return json.loads(builder_cli("hub", "nodes", "--config", str(self.config), "--json"))  # type: ignore[no-any-return]

    def tokens(self) -> list[dict[str, Any]]:
        out = builder_cli("hub", "token", "list", "--config", str(self.config), "--json")
        return json.loads(out)  # type: ignore[no-any-return]

    def hub_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def handshakes(self) -> dict[str, int]:
        """The hub's WireGuard peers: public key -> latest handshake (epoch s, 0: never)."""
        res = run(self.exec_argv(["wg", "show", self.iface, "dump"]), check=False, timeout=30)
        out: dict[str, int] = {}
        for line in res.stdout.splitlines()[1:] if res.returncode == 0 else []:
            f = line.split("\t")
            if len(f) >= 5 and f[4].isdigit():
                out[f[0]] = int(f[4])
        return out

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc, 10)
        # what is left in the namespace was started here (wireguard-go, QEMU): end it by pid
        pids = run(["ip", "netns", "pids", self.ns], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", self.ns], check=False)
