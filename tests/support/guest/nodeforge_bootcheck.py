#!/usr/bin/python3
"""nodeforge-bootcheck: TEST-ONLY (tests/support/guest/), never part of a product image.

Installed into the stand-in node disks of the boot tests as
``/usr/lib/nodeforge-test/nodeforge-bootcheck`` and started by
``nodeforge-bootcheck.service`` once the boot is over. Waits (bounded) until
``/var/lib/nodeforge/joined`` exists or ``nodeforge-enroll`` failed for good, then prints ONE
line ``NODEFORGE-BOOTCHECK sha=<12 hex> <json>`` to the serial console and powers the guest
off. Kernel argument ``nodeforge.bootcheck.wait=N`` changes the bound (seconds),
``nodeforge.bootcheck.stay=1`` keeps the guest running.

Runs on the guest's own python3 (standard library only); tests/support/bootcheck.py parses
the report and tests/support/reportchecks.py checks it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import threading
import time
from typing import Any

MARKER = "NODEFORGE-BOOTCHECK"
DEFAULT_WAIT = 600.0  # seconds (TCG on a loaded host is slow)
JOINED = "/var/lib/nodeforge/joined"
ENROLL = "nodeforge-enroll.service"
FAILOVER = "nodeforge-failover.service"
ENROLL_PROPS = (
    "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts", "ConditionResult",
    "ConditionTimestampMonotonic", "ExecMainStartTimestampMonotonic", "UnitFileState",
)  # fmt: skip
REQUIRED_SYSCTLS = (
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.ip_forward",
)
STANDIN_LOG = "/var/log/nodeforge-standins.log"
STANDIN_JOIN_CONFIG = "/var/log/nodeforge-standins-kubeadm-join.yaml"
FILES = (
    "/etc/nodeforge/enroll-token",
    "/var/lib/nodeforge/wg.key",
    "/var/lib/nodeforge/enrollment.json",
    "/etc/wireguard/wg0.conf",
    "/var/lib/nodeforge/node_id",
)


def sh(*argv: str, timeout: float = 30) -> tuple[int, str, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return p.returncode, p.stdout, p.stderr


def show(unit: str, *props: str) -> dict[str, str]:
    _, out, _ = sh("systemctl", "show", unit, "-p", ",".join(props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def read(path: str, default: str = "") -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return default


def read_opt(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def uptime() -> float:
    return float(read("/proc/uptime", "0 0").split()[0])


def options() -> dict[str, str]:
    args = read("/proc/cmdline").split()
    return dict(a.split("=", 1) for a in args if a.startswith("nodeforge.bootcheck.") and "=" in a)


def wait_for_outcome(wait: float) -> tuple[str, float]:
    """``joined``, ``enroll-failed`` or ``timeout``; and when the wait started."""
    start, joined_seen, last_show = time.monotonic(), 0.0, 0.0
    while time.monotonic() - start < wait:
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
                return "joined", start
        if st.get("ActiveState") == "failed" and st.get("ExecMainStatus") == "78":
            return "enroll-failed", start
        time.sleep(0.5)
    return "timeout", start


def node_config(rep: dict[str, Any]) -> None:
    """Modules, sysctls, swap, units, packages and holds."""
    loaded = {line.split()[0] for line in read("/proc/modules").splitlines() if line}
    wanted = ["overlay", "br_netfilter"]
    mdir = "/etc/modules-load.d"
    for f in sorted(os.listdir(mdir)) if os.path.isdir(mdir) else []:
        for line in read(os.path.join(mdir, f)).splitlines():
            name = line.split("#")[0].strip()
            if name and name not in wanted:
                wanted.append(name)
    rep["modules"] = {m: m in loaded or os.path.isdir("/sys/module/" + m) for m in wanted}
    keys = list(REQUIRED_SYSCTLS)
    for line in read("/etc/sysctl.d/90-nodeforge.conf").splitlines():
        k = line.split("#")[0].split("=")[0].strip()
        if k and k not in keys:
            keys.append(k)
    rep["sysctls"] = {k: read("/proc/sys/" + k.replace(".", "/")).strip() or None for k in keys}
    rep["swaps"] = read("/proc/swaps").splitlines()[1:]
    rep["units"] = {}
    for u in ("crio.service", "kubelet.service", ENROLL, "wg-quick@wg0.service", FAILOVER):
        _, en, _ = sh("systemctl", "is-enabled", u)
        _, ac, _ = sh("systemctl", "is-active", u)
        rep["units"][u] = {"enabled": en.strip(), "active": ac.strip()}
    _, out, _ = sh("dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\n")
    rep["packages"] = {}
    pkg_rx = re.compile(r"(kube(adm|let|ctl)|cri-o|nvidia-.*)$")
    for line in out.splitlines():
        p = line.split()
        # db:Status-Abbrev: "ii " installed, "hi " installed and held
        if len(p) >= 3 and pkg_rx.match(p[0]) and p[2][1:2] == "i":
            rep["packages"][p[0]] = p[1]
    _, out, _ = sh("apt-mark", "showhold")
    rep["held"] = sorted(out.split())


def tunnel(rep: dict[str, Any]) -> None:
    """wg0: its addresses and peers (with their latest handshake)."""
    addresses: list[str] = []
    peers: list[dict[str, Any]] = []
    rc, out, _ = sh("ip", "-j", "address", "show", "dev", "wg0")
    if rc == 0 and out.strip():
        for link in json.loads(out):
            for a in link.get("addr_info", []):
                addresses.append(a["local"] + "/" + str(a["prefixlen"]))
    rc, out, _ = sh("wg", "show", "wg0", "dump")
    for line in out.splitlines()[1:] if rc == 0 else []:
        f = line.split("\t")
        peers.append({"pubkey": f[0], "endpoint": f[2], "allowed_ips": f[3],
                      "latest_handshake": int(f[4]), "rx": int(f[5]), "tx": int(f[6])})  # fmt: skip
    conf = os.path.exists("/etc/wireguard/wg0.conf")
    rep["wg"] = {"conf_exists": conf, "addresses": addresses, "peers": peers}
    # the machine's own IPv4 addresses (the NICs: not loopback, not the tunnel)
    rep["addresses"] = {}
    rc, out, _ = sh("ip", "-j", "-4", "address", "show")
    for link in json.loads(out) if rc == 0 and out.strip() else []:
        if link.get("ifname") not in ("lo", "wg0"):
            rep["addresses"][link.get("ifname")] = [
                a["local"] + "/" + str(a["prefixlen"]) for a in link.get("addr_info", [])
            ]


def enrollment(rep: dict[str, Any]) -> None:
    """The enrollment unit, its journal, the stand-in kubeadm's log, files and markers."""
    rep["enroll"] = show(ENROLL, *ENROLL_PROPS)
    _, out, _ = sh("journalctl", "-b", "-u", ENROLL, "-o", "cat", "--no-pager")
    rep["enroll_journal"] = [x for x in out.splitlines() if x.strip()][-60:]
    rep["enroll_starts_this_boot"] = sum(1 for x in out.splitlines() if "step=start" in x)
    rep["standin_log"] = read(STANDIN_LOG).splitlines()[-40:]
    jc = read_opt(STANDIN_JOIN_CONFIG)
    if jc is not None:  # the bootstrap token never leaves the guest
        jc = re.sub(r"(?m)^(\s*token:\s*).*$", r'\1"<masked>"', jc)
    rep["join_config"] = jc
    rep["joined_marker"] = read(JOINED).strip() or None
    rep["files"] = {p: (oct(os.stat(p).st_mode & 0o777) if os.path.exists(p) else None)
                    for p in FILES}  # fmt: skip
    rep["node_id"] = read("/var/lib/nodeforge/node_id").strip() or None


def system(rep: dict[str, Any], now: float) -> None:
    """cloud-init's result, the release file, the slowest units, ordering cycles."""
    try:
        rep["cloud_init"] = json.loads(read("/run/cloud-init/result.json", "null"))
    except ValueError:
        rep["cloud_init"] = None
    rep["release"] = read_opt("/etc/nodeforge-release")
    _, out, _ = sh("systemd-analyze", "blame", "--no-pager")
    rep["systemd_blame"] = [" ".join(x.split()) for x in out.splitlines()[:12]]
    try:
        status = json.loads(read("/run/cloud-init/status.json", "{}"))
        finished = status["v1"]["modules-final"]["finished"]
        rep["cloud_init_finished_uptime"] = finished - (now - rep["uptime"])
    except (ValueError, KeyError, TypeError):
        rep["cloud_init_finished_uptime"] = None
    _, out, _ = sh("journalctl", "-b", "-o", "cat", "--no-pager", "-g", "ordering cycle")
    rep["ordering_cycles"] = [x for x in out.splitlines() if "cycle" in x][:10]


def containers(rep: dict[str, Any]) -> None:
    """Start containers through the configured runtime chain (stand-in crio's
    run-container: conmon -> the handler's runtime_path, for nvidia
    nvidia-container-runtime -> crun), the way every pod and a RuntimeClass nvidia pod would."""
    _, active, _ = sh("systemctl", "is-active", "crio.service")
    rep["crio_active"] = active.strip()
    runs: dict[str, Any] = {}
    cases = {
        "default": ("crio", "run-container"),
        "nvidia": ("crio", "run-container", "--runtime-handler", "nvidia"),
        "nvidia-gpu": ("crio", "run-container", "--runtime-handler", "nvidia",
                       "--env", "NVIDIA_VISIBLE_DEVICES=all"),
    }  # fmt: skip
    for name, argv in cases.items():
        rc, out, err = sh(*argv)
        runs[name] = {"rc": rc, "out": out[-400:], "err": err[-400:]}
    rep["containers"] = runs


GPU_CHECK = "nodeforge-gpu-check.service"
STANDIN_GPU = "nodeforge.standin.gpu="  # the TEST-ONLY stand-in GPU (nodeforge_standin_gpu.sh)


def gpu(rep: dict[str, Any]) -> None:
    """The image's GPU check (packer/scripts/install-nvidia.sh): its unit, what it said,
    and what it left for the kubelet (KUBELET_EXTRA_ARGS in /etc/default/kubelet, which
    kubeadm's drop-in hands to the kubelet); the CDI spec; what nvidia-smi says; and
    whether the TEST-ONLY stand-in GPU was asked for on the kernel command line."""
    props = ("LoadState", "ActiveState", "Result", "ExecMainStatus", "UnitFileState")
    g: dict[str, Any] = {"check": show(GPU_CHECK, *props)}
    _, out, _ = sh("journalctl", "-b", "-u", GPU_CHECK, "-o", "cat", "--no-pager")
    g["check_journal"] = [x for x in out.splitlines() if x.startswith("gpu-check:")][-5:]
    extra = ""
    for line in read("/etc/default/kubelet").splitlines():
        if line.startswith("KUBELET_EXTRA_ARGS="):
            extra = line.split("=", 1)[1].strip().strip('"')
    g["kubelet_extra_args"] = extra
    g["cdi_spec"] = any(os.path.exists(p) for p in ("/var/run/cdi/nvidia.yaml",
                                                    "/run/cdi/nvidia.yaml"))  # fmt: skip
    rc, out, err = sh("nvidia-smi", "-L")
    g["nvidia_smi"] = {"rc": rc, "out": (out + err)[-300:]}
    args = [a.split("=", 1)[1] for a in read("/proc/cmdline").split() if a.startswith(STANDIN_GPU)]
    g["standin"] = args[-1] if args else None
    g["standin_unit"] = show("nodeforge-standin-gpu.service", "ActiveState", "ConditionResult")
    rep["gpu"] = g


PEER_PORT = 7946
PEERS_CHECKED = "/var/lib/nodeforge-bootcheck/peers-checked"


def peers(rep: dict[str, Any], want: int, wait: float = 240, linger: float = 5) -> None:
    """Node <-> node traffic through the hub (issue 13): serve a TCP port on our overlay
    address and connect to the other nodes' on theirs. Nodes route the whole overlay to
    the hub (AllowedIPs), and the hub forwards between its peers."""
    try:
        enr = json.loads(read("/var/lib/nodeforge/enrollment.json", "{}"))
        net = ipaddress.ip_network(enr["overlay_cidr"])
        hub = ipaddress.ip_address(enr["hub"]["overlay_ip"])
        mine = ipaddress.ip_address(enr["address"].split("/")[0])
    except (ValueError, KeyError, TypeError) as exc:
        rep["peers"] = {"error": f"no enrollment: {exc}"}
        return
    name = read("/etc/hostname").strip().encode()
    srv = socket.create_server((str(mine), PEER_PORT))
    served: set[str] = set()  # the peers that reached us: stay until they all have

    def serve() -> None:
        while True:
            try:
                conn, addr = srv.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"nodeforge-peer " + name + b"\n")
                served.add(addr[0])

    threading.Thread(target=serve, daemon=True).start()
    candidates = [str(h) for h in list(net.hosts())[:16] if h not in (hub, mine)]
    found: dict[str, str] = {}
    deadline = time.monotonic() + wait
    while (len(found) < want - 1 or len(served) < want - 1) and time.monotonic() < deadline:
        for ip in candidates:
            if ip in found:
                continue
            try:
                with socket.create_connection((ip, PEER_PORT), timeout=1) as c:
                    c.settimeout(3)
                    line = c.recv(200).decode(errors="replace").strip()
            except OSError:
                continue
            if line.startswith("nodeforge-peer "):
                found[ip] = line.split(" ", 1)[1]
        time.sleep(1)
    rep["peers"] = found
    rep["peers_served"] = sorted(served)
    time.sleep(linger)
    srv.close()


def report(outcome: str, start: float) -> dict[str, Any]:
    now = time.time()
    rep: dict[str, Any] = {
        "outcome": outcome,
        "uptime": uptime(),
        "waited": round(time.monotonic() - start, 1),
        "now": now,
        "boot_id": read("/proc/sys/kernel/random/boot_id").strip(),
        "machine_id": read("/etc/machine-id").strip(),
        "hostname": read("/etc/hostname").strip(),
    }
    try:  # when the node became joined, in seconds since boot
        rep["joined_at_uptime"] = round(os.stat(JOINED).st_mtime - (now - rep["uptime"]), 1)
    except OSError:
        rep["joined_at_uptime"] = None
    node_config(rep)
    tunnel(rep)
    enrollment(rep)
    system(rep, now)
    containers(rep)
    gpu(rep)
    return rep


def emit(rep: dict[str, Any]) -> None:
    """One marker line on the serial console (checksummed: the console may garble it)."""
    body = json.dumps(rep, separators=(",", ":"), sort_keys=True)
    sha = hashlib.sha256(body.encode()).hexdigest()[:12]
    data = f"\n{MARKER} sha={sha} {body}\n".encode()
    sh("dmesg", "-n", "1")
    fd = os.open("/dev/ttyS0", os.O_WRONLY | os.O_NOCTTY)
    try:
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


def main() -> None:
    opts = options()
    outcome, start = wait_for_outcome(float(opts.get("nodeforge.bootcheck.wait", DEFAULT_WAIT)))
    # let cloud-init finish too (its result is part of the report)
    deadline = time.monotonic() + 60
    while not os.path.exists("/run/cloud-init/result.json") and time.monotonic() < deadline:
        time.sleep(1)
    rep = report(outcome, start)
    if outcome == "joined" and opts.get("nodeforge.bootcheck.peers"):
        # once per machine: after a reboot the other nodes are off (boot-test powers them
        # off), and waiting for them cost the reboot 240 s (2026-11-30)
        if os.path.exists(PEERS_CHECKED):
            rep["peers_skipped"] = "checked on this machine's first boot"
        else:
            peers(rep, int(opts["nodeforge.bootcheck.peers"]))
            os.makedirs(os.path.dirname(PEERS_CHECKED), exist_ok=True)
            with open(PEERS_CHECKED, "w") as fh:
                fh.write(rep.get("boot_id", "") + "\n")
    emit(rep)
    if opts.get("nodeforge.bootcheck.stay") != "1":
        time.sleep(1)
        sh("systemctl", "poweroff", "--no-block")


if __name__ == "__main__":
    main()
