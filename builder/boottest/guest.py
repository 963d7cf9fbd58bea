"""Boot tests: the TEST-ONLY check unit shipped into node disks, and its console report."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from builder.errors import BuilderError

from .constants import BOOTCHECK_WAIT, MARKER

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
