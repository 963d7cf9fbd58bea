"""NoCloud seed volume: a small ISO 9660 image labelled ``CIDATA`` (pycdlib).

cloud-init's NoCloud datasource reads ``user-data``, ``meta-data`` and optionally
``network-config`` from a filesystem labelled ``cidata``/``CIDATA``. The image has Rock
Ridge and Joliet names so every reader sees the real file names.

Deterministic bytes: pycdlib stamps volume and directory records with ``time.time()`` in
the local time zone and has no SOURCE_DATE_EPOCH support, so while it builds we pin its
clock to the epoch (SOURCE_DATE_EPOCH, else 0) in UTC. Same inputs, same bytes.

``node_seed(...)`` makes the per-node content (hostname, static network, a one-time
enrollment token written 0600 to the token file) and ``write_seed`` writes the image.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import threading
import time as _time
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pycdlib
import yaml

from builder import TOOL
from builder.errors import UsageError
from builder.fsutil import atomic_output

VOLUME_ID = "CIDATA"
FILES = ("user-data", "meta-data", "network-config")
TOKEN_PATH = f"/etc/{TOOL}/enroll-token"
_CLOCK_LOCK = threading.Lock()


def _short(name: str) -> str:
    """ISO 9660 level-1 name for a NoCloud file (``user-data`` -> ``USERDATA.;1``)."""
    return "/" + name.replace("-", "").upper()[:8] + ".;1"


class _FixedTime(types.ModuleType):
    """Stands in for the ``time`` module inside pycdlib: fixed now, UTC local time."""

    def __init__(self, epoch: float) -> None:
        super().__init__("time")
        self._epoch = epoch

    def time(self) -> float:
        return self._epoch

    def localtime(self, secs: float | None = None) -> _time.struct_time:
        return _time.gmtime(self._epoch if secs is None else secs)

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


@contextlib.contextmanager
def _pinned_clock(epoch: int) -> Iterator[None]:
    import pycdlib.dates
    import pycdlib.headervd
    import pycdlib.pycdlib
    import pycdlib.udf

    mods = [pycdlib.pycdlib, pycdlib.headervd, pycdlib.dates, pycdlib.udf]
    fake = _FixedTime(epoch)
    with _CLOCK_LOCK:
        saved = [m.time for m in mods]  # type: ignore[attr-defined]
        try:
            for m in mods:
                m.time = fake  # type: ignore[attr-defined]
            yield
        finally:
            for m, t in zip(mods, saved, strict=True):
                m.time = t  # type: ignore[attr-defined]


def _epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    try:
        return int(raw) if raw else 0
    except ValueError as exc:
        raise UsageError(f"SOURCE_DATE_EPOCH: not an integer: {raw!r}") from exc


def seed_bytes(files: Mapping[str, bytes], epoch: int | None = None) -> bytes:
    """The CIDATA ISO image holding ``files`` (names from FILES) as bytes."""
    unknown = sorted(set(files) - set(FILES))
    if unknown:
        raise UsageError(f"seed: unknown NoCloud file(s) {unknown} (allowed: {list(FILES)})")
    for required in ("user-data", "meta-data"):
        if required not in files:
            raise UsageError(f"seed: {required} is required")
    when = _epoch() if epoch is None else epoch
    out = io.BytesIO()
    with _pinned_clock(when):
        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_ID)
        for name in FILES:
            if name in files:
                data = files[name]
                iso.add_fp(
                    io.BytesIO(data),
                    len(data),
                    _short(name),
                    rr_name=name,
                    joliet_path="/" + name,
                )
        iso.write_fp(out)
        iso.close()
    return out.getvalue()


def write_seed(out: Path, files: Mapping[str, bytes], epoch: int | None = None) -> Path:
    """Write the seed image atomically (0600: it may carry an enrollment token)."""
    data = seed_bytes(files, epoch)
    with atomic_output(out, mode=0o600) as tmp:
        tmp.write_bytes(data)
    return out


def _dump(data: Any) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).encode()


def node_seed(
    *,
    site: str,
    hostname: str | None = None,
    ip: str | None = None,
    gateway: str | None = None,
    dns: list[str] | None = None,
    token: str | None = None,
    interface_match: str = "en*",
    site_lan: str | None = None,
) -> dict[str, bytes]:
    """Per-node NoCloud files: meta-data, user-data (hostname, token) and network-config.

    ``site_lan`` (the profile's ``network.site_lan``): a static ``ip`` must lie in it.
    """
    problems: list[str] = []
    iface = None
    if hostname is not None and not _valid_hostname(hostname):
        problems.append(f"--hostname: {hostname!r} is not a valid host name")
    if ip is not None:
        try:
            iface = ipaddress.ip_interface(ip)
            if iface.network.prefixlen == iface.max_prefixlen:
                problems.append(f"--ip: {ip!r} needs a prefix length, e.g. 192.168.50.10/24")
        except ValueError:
            problems.append(f"--ip: {ip!r} is not an address with prefix (CIDR)")
        if iface is not None and site_lan:
            lan = ipaddress.ip_network(site_lan, strict=False)
            if iface.ip not in lan:
                problems.append(f"--ip: {iface.ip} is not in the site LAN {lan} (network.site_lan)")
            elif iface.ip in (lan.network_address, lan.broadcast_address) and lan.prefixlen < 31:
                problems.append(f"--ip: {iface.ip} is the network or broadcast address of {lan}")
    if gateway is not None:
        if ip is None:
            problems.append("--gateway: needs --ip")
        try:
            gw = ipaddress.ip_address(gateway)
            if iface is not None and gw not in iface.network:
                problems.append(f"--gateway: {gateway} is not in {iface.network}")
        except ValueError:
            problems.append(f"--gateway: {gateway!r} is not an IP address")
    for d in dns or []:
        try:
            ipaddress.ip_address(d)
        except ValueError:
            problems.append(f"--dns: {d!r} is not an IP address")
    if dns and ip is None:
        problems.append("--dns: needs --ip")
    if token is not None and (not token.strip() or any(c.isspace() for c in token.strip())):
        problems.append("--token-file: the token must be one non-empty word")
    if problems:
        raise UsageError("\n".join(sorted(problems)))

    instance = f"{TOOL}-{site}-{hostname or 'node'}"
    meta: dict[str, Any] = {"instance-id": instance}
    if hostname:
        meta["local-hostname"] = hostname
    user: dict[str, Any] = {}
    if hostname:
        user["hostname"] = hostname
        user["fqdn"] = hostname
    if token is not None:
        user["write_files"] = [
            {
                "path": TOKEN_PATH,
                "permissions": "0600",
                "owner": "root:root",
                "content": token.strip() + "\n",
            }
        ]
    files = {
        "meta-data": _dump(meta),
        "user-data": b"#cloud-config\n" + (_dump(user) if user else b""),
    }
    if iface is not None:
        eth: dict[str, Any] = {
            "match": {"name": interface_match},
            "addresses": [str(iface)],
        }
        if gateway:
            eth["routes"] = [{"to": "default", "via": gateway}]
        if dns:
            eth["nameservers"] = {"addresses": list(dns)}
        files["network-config"] = _dump({"version": 2, "ethernets": {"primary": eth}})
    return files


def _valid_hostname(name: str) -> bool:
    if len(name) > 253:
        return False
    labels = name.split(".")
    return all(
        0 < len(lab) <= 63
        and lab[0].isalnum()
        and lab[-1].isalnum()
        and all(c.isalnum() or c == "-" for c in lab)
        and lab.isascii()
        for lab in labels
    )


def read_seed(path: Path) -> tuple[str, dict[str, bytes]]:
    """(volume label, NoCloud files by their Rock Ridge names) of a seed image."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        found: dict[str, bytes] = {}
        for name in FILES:
            buf = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(buf, rr_path="/" + name)
            except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                continue
            found[name] = buf.getvalue()
        label = iso.pvd.volume_identifier.decode().strip()
    finally:
        iso.close()
    return label, found
