"""The hub's WireGuard interface, driven with ``wg`` and ``ip`` (kernel or wireguard-go).

Rules: the database is the truth; peers are added with ``wg set`` after the transaction
commits (many peers per call); the whole database is reconciled with ``wg syncconf`` at
start and periodically. The interface is never restarted and nothing is ever saved back
to a config file (no SaveConfig).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuilderError, CommandFailed
from builder.run import run, which

log = logging.getLogger("nodeforge.hub.wg")


@dataclass
class Peer:
    pubkey: str
    endpoint: str
    allowed_ips: list[str]
    latest_handshake: int
    rx: int
    tx: int


class WgInterface:
    def __init__(self, name: str, private_key_file: Path, listen_port: int) -> None:
        self.name = name
        self.private_key_file = private_key_file
        self.listen_port = listen_port
        # our view of allowed-ips (``ip/32`` -> key), exact while only this process changes
        # peers; rebuilt by every syncconf, dropped (re-read with `wg show`) after a failure
        self.held: dict[str, str] | None = None

    def exists(self) -> bool:
        return run(["ip", "link", "show", "dev", self.name], check=False).returncode == 0

    def ensure(self, address: str, prefixlen: int, mtu: int) -> bool:
        """Create the interface when it is missing (kernel module, else wireguard-go).

        An existing interface is left exactly as it is. Returns True when it was created.
        """
        if self.exists():
            return False
        res = run(["ip", "link", "add", "dev", self.name, "type", "wireguard"], check=False)
        if res.returncode != 0:
            if which("wireguard-go") is None:
                raise BuilderError(
                    f"cannot create WireGuard interface {self.name}: {res.stderr.strip()}",
                    hint="load the wireguard kernel module or install wireguard-go",
                )
            log.info("no kernel WireGuard: starting wireguard-go %s", self.name)
            # no LOG_LEVEL: with it the daemon keeps our stdout pipe open
            run(["wireguard-go", self.name])
        run(["ip", "address", "add", f"{address}/{prefixlen}", "dev", self.name])
        run(["ip", "link", "set", "dev", self.name, "mtu", str(mtu), "up"])
        return True

    def dump(self) -> list[Peer]:
        out = run(["wg", "show", self.name, "dump"]).stdout.splitlines()
        peers = []
        for line in out[1:]:
            f = line.split("\t")
            if len(f) < 8:
                continue
            ips = [] if f[3] == "(none)" else f[3].split(",")
            peers.append(Peer(f[0], f[2], ips, int(f[4]), int(f[5]), int(f[6])))
        return peers

    def allowed_ips(self) -> dict[str, str]:
        """allowed-ip (``a.b.c.d/32``) → peer public key."""
        out = run(["wg", "show", self.name, "allowed-ips"]).stdout
        held: dict[str, str] = {}
        for line in out.splitlines():
            key, _, rest = line.partition("\t")
            for ip in rest.split():
                if ip != "(none)":
                    held[ip] = key
        return held

    def apply(self, add: Sequence[tuple[str, str]], remove: Iterable[str] = ()) -> None:
        """Add peers ``(pubkey, ip)`` with ``ip/32``; remove old keys and any other peer that
        still holds one of these /32s (the database already gave the address to ``pubkey``).
        One ``wg set`` for the whole batch."""
        if not add and not remove:
            return
        held = self.held if self.held is not None else self.allowed_ips()
        argv = ["wg", "set", self.name]
        gone = set(remove)
        for pubkey, ip in add:
            other = held.get(f"{ip}/32")
            if other and other != pubkey:
                log.warning("peer %s held %s/32; removing it", other, ip)
                gone.add(other)
        for pubkey in sorted(gone - {p for p, _ in add}):
            argv += ["peer", pubkey, "remove"]
        for pubkey, ip in add:
            argv += ["peer", pubkey, "allowed-ips", f"{ip}/32"]
        try:
            run(argv)
        except BuilderError:
            self.held = None
            raise
        gone |= {p for p, _ in add}  # a key that moved drops its old address
        held = {ip: k for ip, k in held.items() if k not in gone}
        held.update({f"{ip}/32": k for k, ip in add})
        self.held = held

    def remove(self, pubkeys: Iterable[str]) -> None:
        argv = ["wg", "set", self.name]
        for k in pubkeys:
            argv += ["peer", k, "remove"]
        if len(argv) > 3:
            self.held = None
            run(argv)

    def syncconf(self, peers: Sequence[tuple[str, str]]) -> None:
        """Make the interface's key, port and peers exactly the database's (no restart)."""
        key = self.private_key_file.read_text().strip()
        lines = ["[Interface]", f"PrivateKey = {key}", f"ListenPort = {self.listen_port}", ""]
        for pubkey, ip in peers:
            lines += ["[Peer]", f"PublicKey = {pubkey}", f"AllowedIPs = {ip}/32", ""]
        fd, name = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".conf")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write("\n".join(lines))
            self.held = None
            run(["wg", "syncconf", self.name, name])
            self.held = {f"{ip}/32": k for k, ip in peers}
        finally:
            os.unlink(name)

    def public_key(self) -> str:
        try:
            return run(["wg", "show", self.name, "public-key"]).stdout.strip()
        except CommandFailed:
            return ""
