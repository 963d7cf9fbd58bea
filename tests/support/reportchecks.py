"""Checks over the TEST-ONLY guest report (``bootcheck.parse_report``) of a stand-in node.

What the product decides from the hub's side ("joined": hub DB state + a WireGuard
handshake) these checks prove from inside the guest: modules, sysctls, swap, pinned and held
packages, the tunnel, the JoinConfiguration the stand-in kubeadm saw, the enrollment unit,
cloud-init's result. ``check_hub`` ties the reports to the hub's database.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from builder.boottest.constants import API_SERVER
from builder.boottest.lab import HubIdentity, Lab
from tests.support import standins
from tests.support.guest.nodeforge_bootcheck import REQUIRED_SYSCTLS


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
    for k, v in profile.spec.kernel.sysctls.items():
        sysctls[str(k)] = str(v)
    modules = ("overlay", "br_netfilter", *profile.spec.kernel.modules)
    taints = tuple((t.key, t.value, t.effect) for t in profile.spec.kubernetes.taints)
    return Expect(
        site=profile.site,
        modules=modules,
        sysctls=sysctls,
        swap_off=not profile.spec.swap.enabled,
        k8s_version=profile.spec.kubernetes.version,
        crio_minor=profile.spec.crio.version,
        standin_versions=dict(standins.DEFAULT_VERSIONS),
        labels=dict(profile.spec.kubernetes.labels),
        taints=taints,
        overlay_cidr=ident.overlay_cidr,
        hub_ip=ident.hub_ip,
        hub_pubkey=ident.public_key,
        gpu=profile.spec.gpu.enabled,
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
    # hub failover (issue 16): enabled in every image; with the lab's single hub the loop
    # has nothing to do and ends at once ("inactive"), but it must never be "failed"
    fo = r.get("units", {}).get("nodeforge-failover.service")
    if fo is not None and (fo.get("enabled") != "enabled" or fo.get("active") == "failed"):
        p.append(f"nodeforge-failover.service is not enabled or failed: {fo}")
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
    # the one-time token is removed once it was traded for the node secret (issue 14)
    token_mode = (r.get("files") or {}).get("/etc/nodeforge/enroll-token")
    if token_mode is not None:
        p.append(f"the used enrollment token is still on the node (mode {token_mode})")
    p += check_containers(r, e)
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


def check_containers(r: dict[str, Any], e: Expect) -> list[str]:
    """A container starts through the runtime chain on every node (issue 11); on a GPU
    image without an NVIDIA device the nvidia handler still runs GPU-less containers and
    refuses a GPU request the way the real runtime does (NVML)."""
    p: list[str] = []
    if r.get("crio_active") != "active":
        p.append(f"crio.service is {r.get('crio_active')!r}, not active")
    runs = r.get("containers") or {}
    default = runs.get("default") or {}
    if default.get("rc") != 0 or "crun: container" not in default.get("out", ""):
        p.append(f"no container started through the default runtime: {default}")
    if e.gpu:
        nv = runs.get("nvidia") or {}
        if nv.get("rc") != 0 or "crun: container" not in nv.get("out", ""):
            p.append(f"no container started through the nvidia handler: {nv}")
        gpu = runs.get("nvidia-gpu") or {}
        if gpu.get("rc") == 0 or "failed to initialize NVML" not in gpu.get("err", ""):
            p.append(f"a GPU request without a GPU did not fail like the real runtime: {gpu}")
    return p
