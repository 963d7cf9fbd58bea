"""Boot tests: power a node made by this tool on in QEMU and prove it joins on its own.

What ``builder boot-test SITE`` does:

1. **Stand-in node disk** (cached, keyed by the hash of everything that goes into it): the
   Debian bookworm root from ``rootfs.build_rootfs()`` — a STAND-IN for the installed
   Ubuntu system, which is unreachable here — provisioned in a chroot by OUR REAL scripts
   (``scripts/provision.sh`` of the site's rendered build tree, with its ``provision.env``)
   against the STAND-IN apt repository of ``standins.build_standin_repo()`` (``file://``
   URLs inside the root). A TEST-ONLY unit, ``nodeforge-bootcheck.service``, is added: it
   waits (bounded) for ``/var/lib/nodeforge/joined`` or a permanent enrollment failure,
   prints one ``NODEFORGE-BOOTCHECK`` line with a JSON report to the serial console and
   powers off. The root becomes an ext4 image with ``mkfs.ext4 -d`` (no mounts) → qcow2,
   booted by direct kernel boot (``root=/dev/vda``) on virtio; ``--uefi`` assembles a GPT
   disk instead (ESP from ``mkfs.vfat -C`` + mtools holding a ``grub-mkimage`` x86_64-efi
   loader, the same ext4 as partition 2; ``sfdisk`` + ``dd``, no loop devices) for OVMF.
2. Every boot runs on its own qcow2 overlay (backing file): the base stays clean and two
   nodes from one image get different machine-ids. The site's real rendered cloud-init
   user-data goes on a NoCloud seed (``seed.write_seed``) with the per-node entries
   ``builder seed`` would add (hostname, a one-time token from ``builder hub token create``).
3. In a private network namespace (``ip netns add``, loopback up) runs the REAL hub
   (``builder hub serve``, wireguard-go interface); QEMU user networking inside that
   namespace lets the guest reach it at 10.0.2.2 (the namespace's loopback), for HTTPS and
   for WireGuard over UDP. Nothing leaves the namespace.
4. Checks from the guest's report and the hub's database (``builder hub nodes --json``).

The hub's identity (CA, keys) is made once with ``builder hub init`` and cached, so the
rendered tree, and with it the disk, stay cache hits between runs; each run gets a fresh
hub database.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import qemu, rootfs, seed, standins
from .errors import BuilderError, UsageError
from .fsutil import atomic_output, atomic_write
from .run import popen, require, run

log = logging.getLogger("builder.boottest")

FORMAT = 1  # bump when the disk recipe below changes in a way the inputs do not show
MARKER = "NODEFORGE-BOOTCHECK"
HUB_HOST = "10.0.2.2"  # QEMU user networking: the host side, i.e. the namespace's loopback
HUB_PORT = 8443
WG_PORT = 51820
REPO_IN_ROOT = "/srv/nodeforge-standin-repo"
BUILD_IN_ROOT = "/var/tmp/nodeforge-build"
# a bootstrap token for the hub's `static` join provider: no cluster here, the stand-in
# kubeadm only records what it was given
STATIC_JOIN_TOKEN = "nfboot.0123456789abcdef"
STATIC_CA_HASH = "sha256:" + "ab" * 32
API_SERVER = "10.200.0.1:6443"
BUILDER = [sys.executable, "-c", "from builder.cli import main; main()"]
APPEND = "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.show_status=1"
APPEND_UEFI = "root=/dev/vda2 rw console=ttyS0 net.ifnames=0 systemd.show_status=1"
BOOTCHECK_WAIT = 600  # seconds the check unit waits for "joined" (TCG on a loaded host is slow)
# an Ubuntu cloud image has e2fsprogs (cloud-init's resizefs needs resize2fs)
ROOTFS_EXTRA = ("e2fsprogs",)
REQUIRED_SYSCTLS = (
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.ip_forward",
)

# -- the TEST-ONLY check unit shipped into the stand-in disk --------------------------------
BOOTCHECK_UNIT = """[Unit]
Description=nodeforge TEST-ONLY boot check (boot tests; never in product images)
Documentation=file:///usr/lib/nodeforge-test/nodeforge-bootcheck
# Start once the boot is over (multi-user.target waits for nodeforge-enroll), so the check
# does not compete with the boot it measures. DefaultDependencies=no: otherwise the target
# would be ordered after this unit (it wants it), a cycle.
DefaultDependencies=no
Requires=sysinit.target
After=basic.target multi-user.target
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=simple
ExecStart=/usr/bin/python3 /usr/lib/nodeforge-test/nodeforge-bootcheck
StandardOutput=journal

[Install]
WantedBy=multi-user.target
"""

BOOTCHECK_SCRIPT = r'''#!/usr/bin/python3
"""nodeforge-bootcheck: TEST-ONLY (builder/boottest.py), never part of a product image.

Waits (bounded) until /var/lib/nodeforge/joined exists or nodeforge-enroll failed for
good, then prints ONE line "NODEFORGE-BOOTCHECK sha=<12 hex> <json>" to the serial console
and powers the guest off. Kernel argument nodeforge.bootcheck.wait=N changes the bound,
nodeforge.bootcheck.stay=1 keeps the guest running.
"""
import hashlib, json, os, re, subprocess, time

JOINED = "/var/lib/nodeforge/joined"
ENROLL = "nodeforge-enroll.service"
cmdline = open("/proc/cmdline").read().split()
opts = dict(a.split("=", 1) for a in cmdline if a.startswith("nodeforge.bootcheck.") and "=" in a)
WAIT = float(opts.get("nodeforge.bootcheck.wait", "__WAIT__"))


def sh(*argv, timeout=30):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return p.returncode, p.stdout, p.stderr


def show(unit, *props):
    _, out, _ = sh("systemctl", "show", unit, "-p", ",".join(props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def read(path, default=None):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return default


def uptime():
    return float(read("/proc/uptime", "0 0").split()[0])


ENROLL_PROPS = ("ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts",
                "ConditionResult", "ConditionTimestampMonotonic",
                "ExecMainStartTimestampMonotonic", "UnitFileState")
outcome, start, joined_seen, last_show = "timeout", time.monotonic(), None, 0.0
while time.monotonic() - start < WAIT:
    # cheap until something happens: a stat every 0.5 s, systemctl only every 5 s (each
    # systemctl call costs real time in an emulated guest, and we must not slow the boot)
    if not os.path.exists(JOINED) and time.monotonic() - last_show < 5:
        time.sleep(0.5)
        continue
    last_show = time.monotonic()
    st = show(ENROLL, *ENROLL_PROPS)
    settled = st.get("ActiveState") not in ("activating", "deactivating")
    if os.path.exists(JOINED):
        joined_seen = joined_seen or time.monotonic()
        # on a reboot the unit is skipped by its condition: give systemd a moment to get
        # there, so the report shows it
        considered = st.get("ConditionTimestampMonotonic", "0") != "0"
        if settled and (considered or time.monotonic() - joined_seen > 30):
            outcome = "joined"
            break
    if st.get("ActiveState") == "failed" and st.get("ExecMainStatus") == "78":
        outcome = "enroll-failed"
        break
    time.sleep(0.5)
# let cloud-init finish too (its result is part of the report)
deadline = time.monotonic() + 60
while not os.path.exists("/run/cloud-init/result.json") and time.monotonic() < deadline:
    time.sleep(1)
now = time.time()
rep = {"outcome": outcome, "uptime": uptime(), "waited": round(time.monotonic() - start, 1),
       "now": now, "boot_id": read("/proc/sys/kernel/random/boot_id", "").strip(),
       "machine_id": read("/etc/machine-id", "").strip(),
       "hostname": read("/etc/hostname", "").strip()}
try:  # when the node became joined, in seconds since boot
    rep["joined_at_uptime"] = round(os.stat(JOINED).st_mtime - (now - rep["uptime"]), 1)
except OSError:
    rep["joined_at_uptime"] = None
loaded = {line.split()[0] for line in read("/proc/modules", "").splitlines() if line}
wanted = ["overlay", "br_netfilter"]
for f in sorted(os.listdir("/etc/modules-load.d")) if os.path.isdir("/etc/modules-load.d") else []:
    for line in read(os.path.join("/etc/modules-load.d", f), "").splitlines():
        line = line.split("#")[0].strip()
        if line and line not in wanted:
            wanted.append(line)
rep["modules"] = {m: m in loaded or os.path.isdir("/sys/module/" + m) for m in wanted}
keys = ["net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
        "net.ipv4.ip_forward"]
for line in read("/etc/sysctl.d/90-nodeforge.conf", "").splitlines():
    k = line.split("#")[0].split("=")[0].strip()
    if k and k not in keys:
        keys.append(k)
rep["sysctls"] = {k: (read("/proc/sys/" + k.replace(".", "/"), "") or "").strip() or None
                  for k in keys}
rep["swaps"] = read("/proc/swaps", "").splitlines()[1:]
rep["units"] = {}
for u in ("crio.service", "kubelet.service", ENROLL, "wg-quick@wg0.service"):
    _, en, _ = sh("systemctl", "is-enabled", u)
    _, ac, _ = sh("systemctl", "is-active", u)
    rep["units"][u] = {"enabled": en.strip(), "active": ac.strip()}
_, out, _ = sh("dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n")
rep["packages"] = {}
for line in out.splitlines():
    p = line.split()
    # db:Status-Abbrev: "ii " installed, "hi " installed and held
    if len(p) >= 3 and re.match(r"(kube(adm|let|ctl)|cri-o|nvidia-.*)$", p[0]) and p[2][1:2] == "i":
        rep["packages"][p[0]] = p[1]
_, out, _ = sh("apt-mark", "showhold")
rep["held"] = sorted(out.split())
wg = {"conf_exists": os.path.exists("/etc/wireguard/wg0.conf"), "addresses": [], "peers": []}
rc, out, _ = sh("ip", "-j", "address", "show", "dev", "wg0")
if rc == 0 and out.strip():
    for link in json.loads(out):
        for a in link.get("addr_info", []):
            wg["addresses"].append(a["local"] + "/" + str(a["prefixlen"]))
rc, out, _ = sh("wg", "show", "wg0", "dump")
for line in out.splitlines()[1:] if rc == 0 else []:
    f = line.split("\t")
    wg["peers"].append({"pubkey": f[0], "endpoint": f[2], "allowed_ips": f[3],
                        "latest_handshake": int(f[4]), "rx": int(f[5]), "tx": int(f[6])})
rep["wg"] = wg
rep["enroll"] = show(ENROLL, *ENROLL_PROPS)
_, out, _ = sh("journalctl", "-b", "-u", ENROLL, "-o", "cat", "--no-pager")
rep["enroll_journal"] = [l for l in out.splitlines() if l.strip()][-60:]
rep["enroll_starts_this_boot"] = sum(1 for l in out.splitlines() if "step=start" in l)
rep["standin_log"] = (read("/var/log/nodeforge-standins.log", "") or "").splitlines()[-40:]
jc = read("/var/log/nodeforge-standins-kubeadm-join.yaml")
if jc is not None:  # the bootstrap token never leaves the guest
    jc = re.sub(r'(?m)^(\s*token:\s*).*$', r'\1"<masked>"', jc)
rep["join_config"] = jc
rep["joined_marker"] = (read(JOINED, "") or "").strip() or None
rep["files"] = {p: (oct(os.stat(p).st_mode & 0o777) if os.path.exists(p) else None)
                for p in ("/etc/nodeforge/enroll-token", "/var/lib/nodeforge/wg.key",
                          "/var/lib/nodeforge/enrollment.json", "/etc/wireguard/wg0.conf",
                          "/var/lib/nodeforge/node_id")}
rep["node_id"] = (read("/var/lib/nodeforge/node_id", "") or "").strip() or None
try:
    rep["cloud_init"] = json.loads(read("/run/cloud-init/result.json", "null"))
except ValueError:
    rep["cloud_init"] = None
rep["release"] = read("/etc/nodeforge-release")
_, out, _ = sh("systemd-analyze", "blame", "--no-pager")
rep["systemd_blame"] = [" ".join(x.split()) for x in out.splitlines()[:12]]
try:
    rep["cloud_init_finished_uptime"] = json.loads(read("/run/cloud-init/status.json", "{}"))[
        "v1"]["modules-final"]["finished"] - (now - rep["uptime"])
except (ValueError, KeyError, TypeError):
    rep["cloud_init_finished_uptime"] = None
_, out, _ = sh("journalctl", "-b", "-o", "cat", "--no-pager", "-g", "ordering cycle")
rep["ordering_cycles"] = [l for l in out.splitlines() if "cycle" in l][:10]
body = json.dumps(rep, separators=(",", ":"), sort_keys=True)
sha = hashlib.sha256(body.encode()).hexdigest()[:12]
line = "\nNODEFORGE-BOOTCHECK sha=" + sha + " " + body + "\n"
sh("dmesg", "-n", "1")
fd = os.open("/dev/ttyS0", os.O_WRONLY | os.O_NOCTTY)
data = line.encode()
while data:
    data = data[os.write(fd, data):]
os.close(fd)
if opts.get("nodeforge.bootcheck.stay") != "1":
    time.sleep(1)
    sh("systemctl", "poweroff", "--no-block")
'''


def bootcheck_script(wait: float = BOOTCHECK_WAIT) -> str:
    return BOOTCHECK_SCRIPT.replace("__WAIT__", str(int(wait)))


def parse_report(console: str) -> dict[str, Any]:
    """The guest's JSON report from its console (the last complete marker line)."""
    found = None
    for m in re.finditer(rf"^{MARKER} sha=([0-9a-f]{{12}}) (\{{.*\}})\s*$", console, re.M):
        found = m
    if found is None:
        raise BuilderError(f"no {MARKER} report on the serial console")
    body = found.group(2)
    if hashlib.sha256(body.encode()).hexdigest()[:12] != found.group(1):
        raise BuilderError(f"{MARKER} report garbled on the serial console (checksum mismatch)")
    return json.loads(body)  # type: ignore[no-any-return]


# -- cache ----------------------------------------------------------------------------------
def cache_root() -> Path:
    return rootfs.cache_dir() / "boot-test"


def _hash_tree(h: Any, base: Path, rel: str) -> None:
    root = base / rel
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(base)}\0{p.stat().st_mode & 0o777:o}\0".encode())
            h.update(p.read_bytes())


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


_PREP_LOCK = threading.Lock()
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
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - TimeoutExpired
                self.proc.kill()
                self.proc.wait()
        # what is left in the namespace was started here (wireguard-go, QEMU): end it by pid
        pids = run(["ip", "netns", "pids", self.ns], check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", self.ns], check=False)


# -- the stand-in node disk -----------------------------------------------------------------
@dataclass(frozen=True)
class NodeDisk:
    site: str
    qcow2: Path
    kernel: Path
    initrd: Path
    key: str
    kernel_name: str  # e.g. vmlinuz-6.1.0-28-cloud-amd64 (for the UEFI loader)
    initrd_name: str
    cached: bool = False
    seconds: float = 0.0


def lab_overrides(ident: HubIdentity, retry_max_seconds: int = 15) -> list[str]:
    """``--set`` overrides pointing a site at the test hub and the stand-in repository."""
    url = f"file://{REPO_IN_ROOT}/"
    key = f"file://{REPO_IN_ROOT}/Release.key"
    return [
        f"enrollment.url=https://{HUB_HOST}:{HUB_PORT}",
        f"enrollment.ca_cert=file:{ident.ca_cert}",
        f"enrollment.ca_pin={ident.ca_pin}",
        f"enrollment.retry_max_seconds={retry_max_seconds}",
        f"wireguard.hub_endpoint={HUB_HOST}:{WG_PORT}",
        f"wireguard.hub_public_key={ident.public_key}",
        f"wireguard.overlay_cidr={ident.overlay_cidr}",
        f"wireguard.hub_overlay_ip={ident.hub_ip}",
        f"kubernetes.apt.url={url}",
        f"kubernetes.apt.key_url={key}",
        f"crio.apt.url={url}",
        f"crio.apt.key_url={key}",
    ]


def gpu_overrides() -> list[str]:
    url = f"file://{REPO_IN_ROOT}/"
    return [f"gpu.nvidia.apt.url={url}", f"gpu.nvidia.apt.key_url={url}Release.key"]


def standin_versions(profile: Any) -> dict[str, str]:
    """Stand-in package versions matching what the profile pins (Debian revisions as the
    real repositories use them); the repository adds newer decoys of each."""
    k8s = str(profile.get("kubernetes.version"))
    crio = str(profile.get("crio.version"))
    vers = {
        "kubernetes": f"{k8s}-1.1",
        "crio": f"{crio}.0-1.1" if crio.count(".") == 1 else f"{crio}-1.1",
    }
    if profile.get("gpu.enabled"):
        branch = str(profile.get("gpu.nvidia.driver_branch"))
        vers["nvidia_driver_branch"] = branch
        vers["nvidia_driver"] = f"{branch}.195.03-0ubuntu0.24.04.1"
        vers["nvidia_toolkit"] = f"{profile.get('gpu.nvidia.container_toolkit_version')}-1"
    return {**standins.DEFAULT_VERSIONS, **vers}


def disk_key(tarball: Path, tree: Path, versions: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(f"{FORMAT}|{tarball.name}|{APPEND}\n".encode())
    _hash_tree(h, tree, "files")
    _hash_tree(h, tree, "scripts")
    h.update(json.dumps(versions, sort_keys=True).encode())
    h.update(Path(standins.__file__).read_bytes())
    h.update(bootcheck_script().encode() + BOOTCHECK_UNIT.encode())
    return h.hexdigest()[:20]


def _chroot_provision(root: Path) -> None:
    """Run the real provision.sh in ``root`` (proc mounted in a private mount namespace)."""
    script = (
        'set -e; r="$1"; mount -t proc proc "$r/proc"; '
        'exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root '
        f"LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive bash {BUILD_IN_ROOT}/scripts/provision.sh"
    )
    try:
        run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", root],
            timeout=900)  # fmt: skip
    except BuilderError as exc:
        raise BuilderError(
            f"provisioning the stand-in node disk failed: {exc.message}",
            hint="the real packer/scripts/*.sh ran in a chroot; see their log above",
        ) from exc


def build_node_disk(
    site: str,
    tree: Path,
    versions: dict[str, str] | None = None,
    *,
    size_gb: int = 4,
    rebuild: bool = False,
) -> NodeDisk:
    """Build (or reuse) the stand-in node disk for a rendered build tree ``tree``."""
    t0 = time.monotonic()
    tarball = rootfs.build_rootfs(ROOTFS_EXTRA)
    versions = versions or dict(standins.DEFAULT_VERSIONS)
    key = disk_key(tarball, tree, versions)
    d = cache_root() / "disk" / f"{site}-{key}"
    info_file = d / "disk.json"
    if info_file.exists() and not rebuild:
        info = json.loads(info_file.read_text())
        return NodeDisk(site, d / "disk.qcow2", d / "vmlinuz", d / "initrd.img", key,
                        info["kernel_name"], info["initrd_name"], True,
                        time.monotonic() - t0)  # fmt: skip
    log.info("building the stand-in node disk for %s (rootfs + real provisioning)…", site)
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nf-disk-", dir=d) as tmp:
        root = rootfs.extract_rootfs(tarball, Path(tmp) / "root")
        standins.build_standin_repo(root / REPO_IN_ROOT.lstrip("/"), **versions)
        build = root / BUILD_IN_ROOT.lstrip("/")
        shutil.copytree(tree / "scripts", build / "scripts")
        shutil.copytree(tree / "files", build / "files")
        fstab = root / "etc/fstab"  # one fstab for both layouts (whole-disk ext4 and GPT)
        fstab.write_text(fstab.read_text().replace("/dev/vda ", "LABEL=root "))
        _chroot_provision(root)
        shutil.rmtree(build, ignore_errors=True)  # cleanup.sh may have emptied /var/tmp
        with contextlib.suppress(FileNotFoundError):
            (root / standins.STANDIN_LOG.lstrip("/")).unlink()
        # the TEST-ONLY check unit
        tdir = root / "usr/lib/nodeforge-test"
        tdir.mkdir(parents=True, exist_ok=True)
        (tdir / "nodeforge-bootcheck").write_text(bootcheck_script())
        (tdir / "nodeforge-bootcheck").chmod(0o755)
        unit = root / "etc/systemd/system/nodeforge-bootcheck.service"
        unit.write_text(BOOTCHECK_UNIT)
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / "nodeforge-bootcheck.service"
        if not link.is_symlink():
            link.symlink_to("/etc/systemd/system/nodeforge-bootcheck.service")
        mid = root / "etc/machine-id"
        if mid.exists() and mid.stat().st_size:
            raise BuilderError(f"{site}: provisioning left /etc/machine-id filled in")
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            raise BuilderError(f"{tarball}: no kernel/initrd in /boot")
        for src, dest in ((kernels[-1], d / "vmlinuz"), (initrds[-1], d / "initrd.img")):
            with atomic_output(dest) as t:
                shutil.copyfile(src, t)
        raw = Path(tmp) / "root.img"
        run(["truncate", "-s", f"{size_gb}G", raw])
        run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, "-E", "root_owner=0:0", raw],
            env={"E2FSPROGS_FAKE_TIME": "0"}, timeout=900)  # fmt: skip
        shutil.rmtree(root)
        with atomic_output(d / "disk.qcow2") as t:
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, t], timeout=900)
    info = {"site": site, "key": key, "kernel_name": kernels[-1].name,
            "initrd_name": initrds[-1].name, "built": int(time.time())}  # fmt: skip
    atomic_write(info_file, json.dumps(info, indent=1) + "\n")
    prune_disks(site, keep=d)
    secs = time.monotonic() - t0
    log.info("stand-in node disk for %s built in %.0f s: %s", site, secs, d / "disk.qcow2")
    return NodeDisk(site, d / "disk.qcow2", d / "vmlinuz", d / "initrd.img", key,
                    info["kernel_name"], info["initrd_name"], False, secs)  # fmt: skip


def prune_disks(site: str, keep: Path, newest: int = 2) -> None:
    """Keep the ``newest`` node disks of ``site`` (every commit renders a new one)."""
    entries = sorted(
        (p for p in keep.parent.glob(f"{site}-*") if p.is_dir() and p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[max(0, newest - 1) :]:
        log.debug("pruning old node disk %s", old)
        shutil.rmtree(old, ignore_errors=True)


ESP_MIB = 32
GRUB_MODULES = (
    "part_gpt", "part_msdos", "fat", "ext2", "normal", "linux", "search", "search_label",
    "configfile", "echo", "serial", "terminal", "gzio", "efi_gop", "all_video",
)  # fmt: skip


def build_uefi_disk(disk: NodeDisk) -> Path:
    """GPT image for OVMF: ESP (GRUB x86_64-efi, loads the kernel from partition 2) + ext4."""
    out = disk.qcow2.with_name("disk-uefi.qcow2")
    if out.exists():
        return out
    for tool in ("grub-mkimage", "mkfs.vfat", "mcopy", "sfdisk"):
        require(tool)
    log.info("assembling the GPT (UEFI) variant of %s…", disk.qcow2.name)
    with tempfile.TemporaryDirectory(prefix="nf-uefi-", dir=out.parent) as tmp_s:
        tmp = Path(tmp_s)
        cfg = tmp / "grub-embedded.cfg"
        cfg.write_text(
            "serial --unit=0 --speed=115200\n"
            "terminal_input serial console\n"
            "terminal_output serial console\n"
            "search --no-floppy --label root --set=root\n"
            'echo "nodeforge: GRUB (UEFI) loading the kernel from the ext4 partition"\n'
            f"linux /boot/{disk.kernel_name} {APPEND_UEFI}\n"
            f"initrd /boot/{disk.initrd_name}\n"
            "boot\n"
        )
        efi = tmp / "BOOTX64.EFI"
        run(["grub-mkimage", "-O", "x86_64-efi", "-o", efi, "-p", "/EFI/BOOT", "-c", cfg,
             *GRUB_MODULES])  # fmt: skip
        esp = tmp / "esp.img"
        run(["mkfs.vfat", "-C", "-n", "ESP", esp, str(ESP_MIB * 1024)])
        run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"])
        run(["mcopy", "-i", esp, efi, "::/EFI/BOOT/BOOTX64.EFI"])
        raw_root = tmp / "root.img"
        run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk.qcow2, raw_root], timeout=600)
        root_sectors = raw_root.stat().st_size // 512
        esp_start, esp_sectors = 2048, ESP_MIB * 2048
        root_start = esp_start + esp_sectors
        total = (root_start + root_sectors + 2048) * 512
        gpt = tmp / "gpt.img"
        run(["truncate", "-s", str(total), gpt])
        layout = (
            "label: gpt\n"
            f"start={esp_start}, size={esp_sectors}, "
            'type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="ESP"\n'
            f"start={root_start}, size={root_sectors}, "
            'type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"\n'
        )
        run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", gpt], input=layout)
        run(["dd", f"if={esp}", f"of={gpt}", "bs=512", f"seek={esp_start}", "conv=notrunc",
             "status=none"])  # fmt: skip
        run(["dd", f"if={raw_root}", f"of={gpt}", "bs=1M", f"seek={root_start * 512}",
             "oflag=seek_bytes", "conv=notrunc,sparse", "status=none"], timeout=600)  # fmt: skip
        with atomic_output(out) as t:
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", gpt, t], timeout=600)
    return out


# -- one node -------------------------------------------------------------------------------
def node_user_data(site_user_data: bytes, *, site: str, hostname: str, token: str) -> bytes:
    """The site's rendered user-data with the per-node seed entries (hostname, token) added.

    ``seed.node_seed`` makes those entries, as ``builder seed`` does for a second volume;
    here both go into one NoCloud user-data (mappings merged, ``write_files`` appended).
    """
    doc = yaml.safe_load(site_user_data)
    if not isinstance(doc, dict):
        raise BuilderError("rendered cloud-init/user-data is not a mapping")
    per_node = yaml.safe_load(
        seed.node_seed(site=site, hostname=hostname, token=token)["user-data"]
    )
    merged = dict(doc)
    for k, v in per_node.items():
        if k == "write_files":
            merged["write_files"] = list(doc.get("write_files") or []) + list(v)
        else:
            merged[k] = v
    header = site_user_data.split(b"\n", 1)[0]
    if header.strip() != b"#cloud-config":
        raise BuilderError("rendered cloud-init/user-data does not start with #cloud-config")
    body = yaml.safe_dump(merged, sort_keys=False, default_flow_style=False, width=1000)
    return b"#cloud-config\n" + body.encode()


@dataclass
class Node:
    """One guest: its overlay disk, its seed and its console log."""

    name: str
    workdir: Path
    overlay: Path
    seed: Path
    log: Path
    boots: list[dict[str, Any]] = field(default_factory=list)
    # a machine's identity (kept across its reboots): two QEMU guests otherwise share the
    # default MAC and have no SMBIOS UUID, i.e. look like ONE machine to the hub
    mac: str = field(
        default_factory=lambda: "52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3))
    )
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))


def make_node(name: str, base: Path, workdir: Path, user_data: bytes, site: str) -> Node:
    wd = workdir / name
    wd.mkdir(parents=True, exist_ok=True)
    overlay = wd / "disk.qcow2"
    fmt = "qcow2" if base.suffix == ".qcow2" else "raw"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", base.resolve(), overlay])
    meta = f"instance-id: nodeforge-{site}-{name}-{os.urandom(4).hex()}\nlocal-hostname: {name}\n"
    sd = seed.write_seed(wd / "seed.iso", {"user-data": user_data, "meta-data": meta.encode()})
    return Node(name, wd, overlay, sd, wd / "console.log")


def machine_identity(argv: list[str], node: Node) -> list[str]:
    """Give the guest's NIC the node's own MAC (qemu.build_argv leaves QEMU's default)."""
    nic = "virtio-net-pci,netdev=net0"
    return [f"{a},mac={node.mac}" if a == nic else a for a in argv]


def boot_node(
    lab: Lab,
    node: Node,
    disk: NodeDisk,
    *,
    uefi: bool = False,
    timeout: float = 900,
    wait: float = BOOTCHECK_WAIT,
    extra_append: str = "",
) -> dict[str, Any]:
    """Boot ``node`` once (in ``lab``'s namespace); return the guest's report + timings."""
    n = len(node.boots) + 1
    console = node.workdir / f"console-{n}.log"
    opts = f" nodeforge.bootcheck.wait={int(wait)}" + (f" {extra_append}" if extra_append else "")
    vm = qemu.VM(memory_mb=1024, cpus=1, disk=node.overlay, seeds=[node.seed], network=True)
    if uefi:
        vm.firmware = "uefi"
        # GRUB's embedded config carries the kernel arguments; extra ones are not passed here
    elif disk.kernel is None:
        pass  # a real cloud image (--base-image): its own boot loader, BIOS
    else:
        vm.kernel, vm.initrd, vm.append = disk.kernel, disk.initrd, APPEND + opts
    vm.extra = ["-uuid", node.uuid]
    argv = lab.exec_argv(machine_identity(qemu.build_argv(vm, node.workdir / f"fw-{n}"), node))
    t0 = time.monotonic()
    res = qemu.boot(
        argv,
        console,
        success=[rf"^{MARKER} sha="],
        failure=[r"Kernel panic", r"end Kernel panic"],
        timeout=timeout,
        wait_exit=20,
    )
    report = parse_report(res.console)
    report["_seconds_to_report"] = round(res.seconds, 1)
    if report.get("joined_at_uptime") is not None and report.get("uptime"):
        # host-observed seconds from QEMU start to the joined marker
        lag = max(0.0, float(report["uptime"]) - float(report["joined_at_uptime"]))
        report["_seconds_to_joined"] = round(res.seconds - lag, 1)
    report["_powered_off"] = res.exited
    report["_console"] = str(console)
    node.boots.append(report)
    log.info("%s boot %d: %s after %.1f s (guest uptime %.1f s)", node.name, n,
             report["outcome"], res.seconds, report.get("uptime", 0))  # fmt: skip
    del t0
    return report


# -- checks ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expect:
    """What a node of this site must show (from the profile and the stand-in pins)."""

    site: str
    modules: tuple[str, ...]
    sysctls: dict[str, str]
    swap_off: bool
    k8s_version: str  # 1.35.0
    crio_minor: str  # 1.35
    standin_versions: dict[str, str]
    labels: dict[str, str]
    taints: tuple[tuple[str, str | None, str], ...]
    overlay_cidr: str
    hub_ip: str
    hub_pubkey: str
    gpu: bool


def expectations(profile: Any, ident: HubIdentity) -> Expect:
    sysctls = {k: "1" for k in REQUIRED_SYSCTLS}
    for k, v in (profile.get("kernel.sysctls") or {}).items():
        sysctls[str(k)] = str(v)
    modules = ("overlay", "br_netfilter", *[str(m) for m in profile.get("kernel.modules") or []])
    taints = tuple(
        (str(t["key"]), None if t.get("value") is None else str(t["value"]),
         str(t.get("effect", "NoSchedule")))
        for t in profile.get("kubernetes.taints") or []
    )  # fmt: skip
    return Expect(
        site=profile.site if hasattr(profile, "site") else str(profile.get("site")),
        modules=modules,
        sysctls=sysctls,
        swap_off=not bool(profile.get("swap.enabled")),
        k8s_version=str(profile.get("kubernetes.version")),
        crio_minor=str(profile.get("crio.version")),
        standin_versions=dict(standins.DEFAULT_VERSIONS),
        labels={str(k): str(v) for k, v in (profile.get("kubernetes.labels") or {}).items()},
        taints=taints,
        overlay_cidr=ident.overlay_cidr,
        hub_ip=ident.hub_ip,
        hub_pubkey=ident.public_key,
        gpu=bool(profile.get("gpu.enabled")),
    )


def _join_config(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    doc = yaml.safe_load(text)
    return doc if isinstance(doc, dict) else {}


def check_joined(r: dict[str, Any], e: Expect, *, max_handshake_age: float = 180) -> list[str]:
    """Problems with a first boot that should have joined (empty list: all good)."""
    p: list[str] = []
    if r.get("outcome") != "joined":
        p.append(f"outcome is {r.get('outcome')!r}, not 'joined'; enroll journal tail: "
                 + " | ".join(r.get("enroll_journal", [])[-5:]))  # fmt: skip
    for m in e.modules:
        if not r.get("modules", {}).get(m):
            p.append(f"kernel module {m} not loaded")
    for k, v in e.sysctls.items():
        got = r.get("sysctls", {}).get(k)
        if got != v:
            p.append(f"sysctl {k} = {got!r}, want {v!r}")
    if e.swap_off and r.get("swaps"):
        p.append(f"swap is on: {r['swaps']}")
    for u in ("crio.service", "kubelet.service"):
        if r.get("units", {}).get(u, {}).get("enabled") != "enabled":
            p.append(f"{u} is not enabled: {r.get('units', {}).get(u)}")
    pk = r.get("packages", {})
    sv = e.standin_versions  # empty for a real image: then only the pinned prefix is checked
    for pkg in ("kubeadm", "kubelet", "kubectl"):
        got = pk.get(pkg, "")
        if not got.startswith(e.k8s_version + "-") or (sv and got != sv["kubernetes"]):
            want = sv.get("kubernetes", e.k8s_version + "-*")
            p.append(f"{pkg} {got or 'missing'}, want the pinned {want}")
    got = pk.get("cri-o", "")
    if not got.startswith(e.crio_minor + ".") or (sv and got != sv["crio"]):
        p.append(f"cri-o {got or 'missing'}, want the pinned {sv.get('crio', e.crio_minor)}")
    held = set(r.get("held", []))
    for pkg in ("kubeadm", "kubelet", "kubectl", "cri-o"):
        if pkg not in held:
            p.append(f"{pkg} is not held")
    if e.gpu:
        tk = pk.get("nvidia-container-toolkit", "")
        if not tk or (sv and tk != sv["nvidia_toolkit"]):
            want = sv.get("nvidia_toolkit", "the profile's")
            p.append(f"nvidia-container-toolkit {tk or 'missing'}, want the pinned {want}")
    mid = r.get("machine_id", "")
    if not re.fullmatch(r"[0-9a-f]{32}", mid or ""):
        p.append(f"/etc/machine-id is not a generated id: {mid!r}")
    # the tunnel
    net = ipaddress.ip_network(e.overlay_cidr)
    wg = r.get("wg", {})
    addrs = wg.get("addresses", [])
    addr = addrs[0].split("/")[0] if addrs else ""
    if not addr or ipaddress.ip_address(addr) not in net or addr == e.hub_ip:
        p.append(f"wg0 address {addrs} is not a node address in {net}")
    peers = [x for x in wg.get("peers", []) if x["pubkey"] == e.hub_pubkey]
    if not peers:
        p.append("wg0 has no peer with the hub's public key")
    else:
        hs = peers[0]["latest_handshake"]
        age = r.get("now", 0) - hs
        if hs <= 0 or age > max_handshake_age:
            p.append(f"no recent handshake with the hub (latest {hs}, {age:.0f} s ago)")
    # kubeadm (stand-in) and the JoinConfiguration it saw
    if not any(" kubeadm join --config " in line for line in r.get("standin_log", [])):
        p.append("the stand-in kubeadm was not called with `join --config`")
    jc = _join_config(r.get("join_config"))
    reg = jc.get("nodeRegistration") or {}
    extra = {a.get("name"): a.get("value") for a in reg.get("kubeletExtraArgs") or []}
    if jc.get("kind") != "JoinConfiguration":
        p.append("kubeadm did not get a JoinConfiguration")
    if extra.get("node-ip") != addr:
        p.append(f"JoinConfiguration node-ip {extra.get('node-ip')!r} != overlay address {addr!r}")
    got_labels = dict(kv.split("=", 1) for kv in (extra.get("node-labels") or "").split(",") if kv)
    if got_labels != e.labels:
        p.append(f"JoinConfiguration labels {got_labels} != profile {e.labels}")
    got_taints = tuple(
        (str(t.get("key")), None if t.get("value") is None else str(t.get("value")),
         str(t.get("effect")))
        for t in reg.get("taints") or []
    )  # fmt: skip
    if sorted(got_taints, key=str) != sorted(e.taints, key=str):
        p.append(f"JoinConfiguration taints {got_taints} != profile {e.taints}")
    if (jc.get("discovery") or {}).get("bootstrapToken", {}).get("apiServerEndpoint") != API_SERVER:
        p.append("JoinConfiguration apiServerEndpoint is not the hub's join material")
    # the enrollment unit
    en = r.get("enroll", {})
    if en.get("Result") != "success" or en.get("ExecMainStatus") != "0":
        p.append(f"nodeforge-enroll did not succeed: {en}")
    if r.get("enroll_starts_this_boot") != 1:
        p.append(f"nodeforge-enroll started {r.get('enroll_starts_this_boot')} times (want 1)")
    if (r.get("files") or {}).get("/etc/nodeforge/enroll-token") != "0o600":
        p.append(f"token file mode {(r.get('files') or {}).get('/etc/nodeforge/enroll-token')}")
    ci = ((r.get("cloud_init") or {}).get("v1") or {}).get("errors")
    if ci:
        p.append(f"cloud-init reported errors: {ci}")
    if r.get("ordering_cycles"):
        p.append(f"systemd found ordering cycles: {r['ordering_cycles']}")
    return p


def check_reboot(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """A second boot of the same disk must not enroll again."""
    p: list[str] = []
    if second.get("outcome") != "joined":
        p.append(f"after reboot: outcome {second.get('outcome')!r}")
    en = second.get("enroll", {})
    if en.get("ConditionResult") != "no" or en.get("ExecMainStartTimestampMonotonic") not in (
        "0",
        None,
    ):
        p.append(f"after reboot nodeforge-enroll ran again (it must be skipped): {en}")
    if second.get("enroll_starts_this_boot"):
        p.append("after reboot the enrollment agent started")
    if second.get("boot_id") == first.get("boot_id"):
        p.append("the second report is from the same boot")
    if second.get("machine_id") != first.get("machine_id"):
        p.append("machine-id changed across a reboot of the same disk")
    if second.get("joined_marker") != first.get("joined_marker"):
        p.append("the joined marker was rewritten")
    a1, a2 = first.get("wg", {}).get("addresses"), second.get("wg", {}).get("addresses")
    if a1 != a2:
        p.append(f"wg0 address changed across reboot: {a1} -> {a2}")
    if not a2:
        p.append("wg0 is not up after reboot (wg-quick@wg0 enabled?)")
    return p


def check_not_configured(r: dict[str, Any]) -> list[str]:
    """After a permanent enrollment failure: nothing half-configured."""
    p: list[str] = []
    if r.get("outcome") != "enroll-failed":
        p.append(f"outcome {r.get('outcome')!r}, want 'enroll-failed'")
    files = r.get("files") or {}
    if files.get("/etc/wireguard/wg0.conf") or (r.get("wg") or {}).get("conf_exists"):
        p.append("wg0.conf was written")
    if (r.get("wg") or {}).get("addresses"):
        p.append("wg0 is up")
    if files.get("/var/lib/nodeforge/enrollment.json"):
        p.append("an enrollment was saved")
    if r.get("joined_marker"):
        p.append("the node is marked joined")
    if any(" kubeadm join" in line for line in r.get("standin_log", [])):
        p.append("kubeadm join ran")
    en = r.get("enroll", {})
    if en.get("ExecMainStatus") != "78" or en.get("ActiveState") != "failed":
        p.append(f"nodeforge-enroll did not stop with exit 78: {en}")
    return p


def check_hub(lab: Lab, reports: Sequence[dict[str, Any]], site: str) -> list[str]:
    """The hub's DB: every node enrolled, joined, with the address the guest has."""
    p: list[str] = []
    nodes = {n["node_id"]: n for n in lab.nodes()}
    for r in reports:
        nid = r.get("node_id")
        n = nodes.get(nid or "")
        if n is None:
            p.append(f"hub has no node {nid}")
            continue
        addr = (r.get("wg", {}).get("addresses") or ["?/"])[0].split("/")[0]
        if n.get("state") != "joined":
            p.append(f"hub: node {nid} is {n.get('state')}, not joined")
        if n.get("ip") != addr:
            p.append(f"hub: node {nid} has {n.get('ip')}, the guest has {addr}")
        if n.get("site") != site:
            p.append(f"hub: node {nid} site {n.get('site')}, want {site}")
    if len(nodes) != len(reports):
        p.append(f"hub has {len(nodes)} nodes, want {len(reports)}")
    ips = [n.get("ip") for n in nodes.values()]
    if len(set(ips)) != len(ips):
        p.append(f"hub handed out duplicate addresses: {ips}")
    return p


# -- the whole run --------------------------------------------------------------------------
@dataclass
class SiteSetup:
    site: str
    profile: Any
    tree: Path
    ident: HubIdentity
    disk: NodeDisk
    expect: Expect
    seconds: dict[str, float]


def prepare_site(
    site: str,
    workdir: Path,
    *,
    profiles_dir: Path | None = None,
    overrides: Sequence[str] = (),
    rebuild: bool = False,
) -> SiteSetup:
    """Render the site for the test hub + stand-in repo and build (or reuse) its disk."""
    from .profile import load_profile
    from .render import render_site

    t0 = time.monotonic()
    base = load_profile(site, profiles_dir, list(overrides))
    cidr = str(base.get("wireguard.overlay_cidr"))
    hub_ip = str(base.get("wireguard.hub_overlay_ip"))
    with _PREP_LOCK:  # shared cache entries: one builder at a time in this process
        ident = hub_identity(cidr, hub_ip)
        rootfs.build_rootfs(ROOTFS_EXTRA)
    extra = lab_overrides(ident) + (gpu_overrides() if base.get("gpu.enabled") else [])
    profile = load_profile(site, profiles_dir, [*extra, *overrides])
    tree = workdir / "build" / site
    render_site(profile, tree)
    t1 = time.monotonic()
    versions = standin_versions(profile)
    disk = build_node_disk(site, tree, versions, rebuild=rebuild)
    t2 = time.monotonic()
    secs = {"render": round(t1 - t0, 1), "disk": round(t2 - t1, 1)}
    log.info("%s: rendered in %.1f s; disk %s in %.1f s", site, secs["render"],
             "reused from cache" if disk.cached else "built", secs["disk"])  # fmt: skip
    exp = expectations(profile, ident)
    exp = Expect(**{**exp.__dict__, "standin_versions": versions})
    return SiteSetup(site, profile, tree, ident, disk, exp, secs)


def run_boot_test(
    setup: SiteSetup,
    workdir: Path,
    *,
    nodes: int = 1,
    uefi: bool = False,
    reboot: bool = True,
    timeout: float = 900,
) -> dict[str, Any]:
    """N nodes at once to "joined", then a reboot of the first; return a result dict.

    ``result["problems"]`` lists every failed check (empty: passed).
    """
    if nodes < 1:
        raise UsageError("--nodes: must be at least 1")
    base = build_uefi_disk(setup.disk) if uefi and setup.disk.kernel else setup.disk.qcow2
    user_data = (setup.tree / "cloud-init/user-data").read_bytes()
    result: dict[str, Any] = {"site": setup.site, "nodes": [], "problems": [],
                              "timings": dict(setup.seconds), "uefi": uefi,
                              "disk": str(base), "disk_cached": setup.disk.cached}  # fmt: skip
    with Lab(workdir, setup.ident) as lab:
        t0 = time.monotonic()
        lab.start_hub()
        result["timings"]["hub_start"] = round(time.monotonic() - t0, 1)
        vms = []
        for i in range(nodes):
            name = f"{setup.site}-node{i + 1}"
            ud = node_user_data(user_data, site=setup.site, hostname=name,
                                token=lab.token(setup.site))  # fmt: skip
            vms.append(make_node(name, base, workdir, ud, setup.site))
        t1 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=nodes) as pool:
            futs = [pool.submit(boot_node, lab, n, setup.disk, uefi=uefi, timeout=timeout)
                    for n in vms]  # fmt: skip
            reports = [f.result() for f in futs]
        result["timings"]["first_boot"] = round(time.monotonic() - t1, 1)
        for n, r in zip(vms, reports, strict=True):
            probs = check_joined(r, setup.expect)
            result["problems"] += [f"{n.name}: {x}" for x in probs]
            result["nodes"].append({
                "name": n.name, "address": (r["wg"]["addresses"] or [None])[0],
                "machine_id": r["machine_id"], "node_id": r.get("node_id"),
                "outcome": r["outcome"],
                "seconds_to_joined": r.get("_seconds_to_joined", r["_seconds_to_report"]),
                "seconds_to_report": r["_seconds_to_report"],
                "guest_uptime": r["uptime"], "console": r["_console"],
            })  # fmt: skip
        result["reports"] = reports
        result["problems"] += check_hub(lab, reports, setup.site)
        mids = [r["machine_id"] for r in reports]
        if len(set(mids)) != len(mids):
            result["problems"].append(f"nodes share a machine-id: {mids}")
        used = sum(int(t.get("used", 0)) for t in lab.tokens())
        if used != nodes:
            result["problems"].append(f"hub tokens used {used} times, want {nodes} (once each)")
        if reboot:
            t2 = time.monotonic()
            again = boot_node(lab, vms[0], setup.disk, uefi=uefi, timeout=timeout)
            result["timings"]["reboot"] = round(time.monotonic() - t2, 1)
            result["reboot_report"] = again
            result["problems"] += [f"{vms[0].name} reboot: {x}"
                                   for x in check_reboot(reports[0], again)]  # fmt: skip
            used2 = sum(int(t.get("used", 0)) for t in lab.tokens())
            if used2 != used or len(lab.nodes()) != nodes:
                result["problems"].append("the reboot enrolled again (hub tokens/nodes changed)")
        if result["problems"]:
            result["hub_log_tail"] = lab.hub_log()
    return result


TOOLS = ("ip", "wg", "wireguard-go", "qemu-img", qemu.QEMU)
DISK_TOOLS = ("mmdebstrap", "mkfs.ext4", "unshare", "dpkg-deb", "dpkg-scanpackages", "gpg")
UEFI_TOOLS = ("grub-mkimage", "mkfs.vfat", "mmd", "mcopy", "sfdisk")


def preflight(*, uefi: bool = False, base_image: bool = False) -> None:
    """Fail early, with a hint, when a boot test cannot run here."""
    if os.geteuid() != 0:
        raise BuilderError(
            "boot tests need root (network namespaces for the hub, a chroot for the disk)",
            hint="run as root, e.g. sudo make boot-test SITE=…",
        )
    for tool in TOOLS + (() if base_image else DISK_TOOLS) + (UEFI_TOOLS if uefi else ()):
        require(tool)
    if uefi:
        qemu.ovmf()


@contextlib.contextmanager
def workspace(keep: bool, prefix: str = "nf-boot-") -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        if keep:
            log.info("kept the work directory: %s", d)
        else:
            shutil.rmtree(d, ignore_errors=True)


def boot_test(
    site: str,
    *,
    nodes: int = 1,
    uefi: bool = False,
    keep: bool = False,
    base_image: Path | None = None,
    profiles_dir: Path | None = None,
    overrides: Sequence[str] = (),
    reboot: bool = True,
) -> dict[str, Any]:
    """``builder boot-test SITE``: prepare (or reuse) the disk, boot, check; timings logged."""
    preflight(uefi=uefi, base_image=base_image is not None)
    with workspace(keep) as wd:
        t0 = time.monotonic()
        if base_image is not None:
            setup = prepare_from_base_image(site, base_image, wd, profiles_dir=profiles_dir,
                                            overrides=overrides, uefi=uefi)  # fmt: skip
        else:
            setup = prepare_site(site, wd, profiles_dir=profiles_dir, overrides=overrides)
        result = run_boot_test(setup, wd, nodes=nodes, uefi=uefi, reboot=reboot)
        result["timings"]["total"] = round(time.monotonic() - t0, 1)
        if keep:
            result["workdir"] = str(wd)
    t = result["timings"]
    log.info(
        "timings (s): render %s, disk %s (%s), hub %s, first boot %s (joined after %s), "
        "reboot %s, total %s",
        t.get("render"), t.get("disk"), "cached" if result["disk_cached"] else "built",
        t.get("hub_start"), t.get("first_boot"),
        "/".join(str(n["seconds_to_joined"]) for n in result["nodes"]),
        t.get("reboot", "-"), t.get("total"),
    )  # fmt: skip
    return result


# -- negative boots -------------------------------------------------------------------------
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
            stdout=-1,  # subprocess.PIPE
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
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_hub_late(
    setup: SiteSetup, workdir: Path, *, outage: float = 60.0, timeout: float = 900
) -> dict[str, Any]:
    """The hub is unreachable for ``outage`` seconds after the node's first attempt; the
    node must retry (backoff) and then enroll and join."""
    out: dict[str, Any] = {"problems": []}
    with Lab(workdir, setup.ident) as lab:
        user_data = (setup.tree / "cloud-init/user-data").read_bytes()
        name = f"{setup.site}-late"
        ud = node_user_data(user_data, site=setup.site, hostname=name, token=lab.token(setup.site))
        node = make_node(name, setup.disk.qcow2, workdir, ud, setup.site)
        down = HubOutage(lab)
        errors: list[BaseException] = []

        def later() -> None:
            try:
                deadline = time.monotonic() + timeout
                while not down.attempts and time.monotonic() < deadline:
                    time.sleep(0.5)
                if not down.attempts:
                    return
                time.sleep(max(0.0, down.attempts[0] + outage - time.time()))
                down.stop()
                out["hub_started"] = time.time()
                lab.start_hub()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        starter = threading.Thread(target=later, daemon=True)
        starter.start()
        try:
            report = boot_node(lab, node, setup.disk, timeout=timeout)
        finally:
            down.stop()
        starter.join(timeout=30)
        if errors:
            raise errors[0]
        out["report"] = report
        out["refused_attempts"] = len(down.attempts)
        p = out["problems"]
        if not down.attempts:
            p.append("the node never tried the hub while it was down")
        else:
            out["outage_seconds"] = round(out.get("hub_started", 0) - down.attempts[0], 1)
            if out["outage_seconds"] < outage - 1:
                p.append(f"the outage lasted only {out['outage_seconds']} s")
        waits = [
            x for x in report.get("enroll_journal", []) if "step=enroll" in x and "waiting" in x
        ]
        out["retries_logged"] = len(waits)
        if not waits:
            p.append("the agent logged no retry while the hub was down")
        p += check_joined(report, setup.expect)
        p += check_hub(lab, [report], setup.site)
        if p:
            out["hub_log_tail"] = lab.hub_log()
    return out


def run_expired_token(setup: SiteSetup, workdir: Path, *, timeout: float = 900) -> dict[str, Any]:
    """An expired one-time token: the node stops (exit 78) with a clear journal message and
    nothing half-configured (no wg0.conf, no tunnel, not joined); the hub records nothing."""
    out: dict[str, Any] = {"problems": []}
    with Lab(workdir, setup.ident) as lab:
        lab.start_hub()
        token = lab.token(setup.site, ttl="1s")
        time.sleep(2.5)  # let it expire
        user_data = (setup.tree / "cloud-init/user-data").read_bytes()
        name = f"{setup.site}-expired"
        ud = node_user_data(user_data, site=setup.site, hostname=name, token=token)
        node = make_node(name, setup.disk.qcow2, workdir, ud, setup.site)
        report = boot_node(lab, node, setup.disk, timeout=timeout)
        out["report"] = report
        p = out["problems"]
        p += check_not_configured(report)
        journal = report.get("enroll_journal", [])
        stop = [x for x in journal if "permanent failure" in x]
        out["journal_message"] = stop[-1] if stop else None
        if not stop or not any("401" in x or "expired" in x for x in stop):
            p.append(f"no clear journal message about the refused token: {journal[-5:]}")
        if lab.nodes():
            p.append(f"the hub recorded nodes for an expired token: {lab.nodes()}")
    return out


# -- baseline for the benchmark -------------------------------------------------------------
def build_bare_disk(size_gb: int = 4) -> Path:
    """The same Debian stand-in root as the node disk, WITHOUT our provisioning (cached):
    the baseline a benchmark boots to cloud-init's "finished" marker."""
    tarball = rootfs.build_rootfs(ROOTFS_EXTRA)
    key = hashlib.sha256(f"{FORMAT}|{tarball.name}|{size_gb}".encode()).hexdigest()[:16]
    out = cache_root() / "bare" / f"bare-{key}.qcow2"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nf-bare-", dir=out.parent) as tmp:
        root = rootfs.extract_rootfs(tarball, Path(tmp) / "root")
        fstab = root / "etc/fstab"
        fstab.write_text(fstab.read_text().replace("/dev/vda ", "LABEL=root "))
        raw = Path(tmp) / "root.img"
        run(["truncate", "-s", f"{size_gb}G", raw])
        run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", root, "-E", "root_owner=0:0", raw],
            env={"E2FSPROGS_FAKE_TIME": "0"}, timeout=900)  # fmt: skip
        with atomic_output(out) as t:
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, t], timeout=900)
    return out


CLOUD_INIT_DONE = r"Cloud-init v\. \S+ finished at"


def boot_bare(disk: NodeDisk, bare: Path, workdir: Path, timeout: float = 900) -> float:
    """Seconds from QEMU start to cloud-init's "finished" on the bare base (markers only:
    a NoCloud seed with an empty cloud-config, user networking, no hub, no enrollment)."""
    node = make_node("bare", bare, workdir, b"#cloud-config\n{}\n", "bare")
    vm = qemu.VM(memory_mb=1024, cpus=1, disk=node.overlay, seeds=[node.seed], network=True)
    vm.kernel, vm.initrd, vm.append = disk.kernel, disk.initrd, APPEND
    ns = f"nfbare{os.getpid() % 100000}"
    run(["ip", "netns", "add", ns])  # same isolation as the real boots: nothing leaves
    try:
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        argv = ["ip", "netns", "exec", ns, *qemu.build_argv(vm, node.workdir / "fw")]
        res = qemu.boot(argv, node.workdir / "console.log", success=[CLOUD_INIT_DONE],
                        timeout=timeout)  # fmt: skip
    finally:
        run(["ip", "netns", "del", ns], check=False)
    return res.seconds


# -- a real cloud image (--base-image) ------------------------------------------------------
PROVISIONED = "NODEFORGE-PROVISIONED"
PROVISION_FAILED = "NODEFORGE-PROVISION-FAILED"


def provision_user_data(tree: Path) -> bytes:
    """A cloud-config that provisions a REAL cloud image from inside (as Packer would):
    unpack scripts/ + files/ + the TEST-ONLY check unit, run provision.sh against the
    profile's real repositories, report on the console and power off."""
    import base64
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for part in ("scripts", "files"):
            tf.add(tree / part, arcname=part)
        for name, text, mode in (
            ("test/nodeforge-bootcheck", bootcheck_script(), 0o755),
            ("test/nodeforge-bootcheck.service", BOOTCHECK_UNIT, 0o644),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    payload = base64.b64encode(buf.getvalue()).decode()
    script = (
        "set -e; d=/var/tmp/nodeforge-build; mkdir -p $d; "
        "tar -C $d -xzf /var/lib/nodeforge-payload.tgz; rm -f /var/lib/nodeforge-payload.tgz; "
        "install -D -m 0755 $d/test/nodeforge-bootcheck "
        "/usr/lib/nodeforge-test/nodeforge-bootcheck; "
        "install -m 0644 $d/test/nodeforge-bootcheck.service /etc/systemd/system/; "
        "systemctl enable nodeforge-bootcheck.service; "
        f"if bash $d/scripts/provision.sh; then echo {PROVISIONED} >/dev/ttyS0; "
        f"else echo {PROVISION_FAILED} >/dev/ttyS0; fi"
    )
    doc = {
        "write_files": [
            {
                "path": "/var/lib/nodeforge-payload.tgz",
                "encoding": "b64",
                "content": payload,
                "permissions": "0600",
            }
        ],  # fmt: skip
        "runcmd": [["bash", "-c", script]],
        "power_state": {"mode": "poweroff", "condition": True, "timeout": 60},
    }
    return b"#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1000).encode()


def prepare_from_base_image(
    site: str,
    base_image: Path,
    workdir: Path,
    *,
    profiles_dir: Path | None = None,
    overrides: Sequence[str] = (),
    uefi: bool = False,
    timeout: float = 1800,
) -> SiteSetup:
    """``--base-image``: provision a real cloud image (e.g. Ubuntu's) by booting it once.

    Needs a machine with internet (the profile's real package repositories) and, to be
    quick, KVM. The provisioning boot uses QEMU user networking in the HOST namespace (it
    must reach the repositories); the test boots afterwards run in the private namespace
    with the test hub, like the stand-in disk. Result cached by the hash of the image and
    the rendered tree.
    """
    from .fsutil import sha256_file
    from .profile import load_profile
    from .render import render_site

    t0 = time.monotonic()
    base = load_profile(site, profiles_dir, list(overrides))
    cidr = str(base.get("wireguard.overlay_cidr"))
    hub_ip = str(base.get("wireguard.hub_overlay_ip"))
    with _PREP_LOCK:
        ident = hub_identity(cidr, hub_ip)
    hub_only = [o for o in lab_overrides(ident) if not o.startswith(("kubernetes.", "crio."))]
    profile = load_profile(site, profiles_dir, [*hub_only, *overrides])
    tree = workdir / "build" / site
    render_site(profile, tree)
    h = hashlib.sha256(f"{FORMAT}|real|{sha256_file(base_image)}|{uefi}\n".encode())
    _hash_tree(h, tree, "files")
    _hash_tree(h, tree, "scripts")
    h.update(bootcheck_script().encode() + BOOTCHECK_UNIT.encode())
    key = h.hexdigest()[:20]
    d = cache_root() / "real" / f"{site}-{key}"
    out = d / "disk.qcow2"
    cached = out.exists()
    if not cached:
        d.mkdir(parents=True, exist_ok=True)
        node = make_node("provision", base_image, workdir, provision_user_data(tree), site)
        vm = qemu.VM(memory_mb=2048, cpus=2, disk=node.overlay, seeds=[node.seed], network=True)
        vm.firmware = "uefi" if uefi else "bios"
        log.info("provisioning %s in a first boot (real repositories; needs internet)…",
                 base_image.name)  # fmt: skip
        qemu.boot(qemu.build_argv(vm, node.workdir / "fw"), node.log, success=[PROVISIONED],
                  failure=[PROVISION_FAILED, r"Kernel panic"], timeout=timeout,
                  wait_exit=120)  # fmt: skip
        with atomic_output(out) as t:
            run(["qemu-img", "convert", "-O", "qcow2", node.overlay, t], timeout=1800)
    no_kernel: Any = None  # boots from its own boot loader
    disk = NodeDisk(site, out, no_kernel, no_kernel, key, "", "", cached, time.monotonic() - t0)
    exp = expectations(profile, ident)
    exp = Expect(**{**exp.__dict__, "standin_versions": {}})
    secs = {"render": 0.0, "disk": round(time.monotonic() - t0, 1)}
    return SiteSetup(site, profile, tree, ident, disk, exp, secs)
