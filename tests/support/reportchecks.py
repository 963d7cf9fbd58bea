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


def check_joined(
    r: dict[str, Any], e: Expect, *, max_handshake_age: float = 180, gpu_device: bool = False
) -> list[str]:
    """Problems with a first boot that should have joined (empty list: all good).
    ``gpu_device``: the machine has a (stand-in) NVIDIA GPU with its driver loaded."""
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
    # a GPU image on a machine without a usable GPU joins without the profile's GPU taints
    # (the agent reads the image's gpu-check verdict): they would keep ordinary pods off it
    want_taints = tuple(
        t for t in e.taints if not (e.gpu and not gpu_device and t[0].startswith("nvidia.com/gpu"))
    )
    if sorted(got_taints, key=str) != sorted(want_taints, key=str):
        p.append(f"JoinConfiguration taints {got_taints} != {want_taints} (profile {e.taints})")
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
    p += check_containers(r, e, gpu_device=gpu_device)
    p += check_gpu(r, e, device=gpu_device)
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


GPU_LABEL = "--node-labels=nvidia.com/gpu.present=true"  # install-nvidia.sh's gpu-check


def check_containers(r: dict[str, Any], e: Expect, *, gpu_device: bool = False) -> list[str]:
    """A container starts through the runtime chain on every node (issue 11): every pod
    through CRI-O's default handler, crun (kubelet -> CRI-O -> conmon -> crun), on a GPU
    image too. The "nvidia" handler (RuntimeClass nvidia: -> nvidia-container-runtime ->
    crun) exists on GPU images only; it runs GPU-less containers everywhere, injects the
    devices of a GPU request where a GPU and its driver are, and refuses a GPU request
    without them the way the real runtime does (NVML)."""
    p: list[str] = []
    if r.get("crio_active") != "active":
        p.append(f"crio.service is {r.get('crio_active')!r}, not active")
    runs = r.get("containers") or {}
    default = runs.get("default") or {}
    out = default.get("out", "")
    if default.get("rc") != 0 or "crun: container" not in out:
        p.append(f"no container started through the default runtime: {default}")
    elif not re.search(r"\bhandler crun\b", out):
        p.append(f"the default runtime handler is not crun: {default}")
    nv = runs.get("nvidia") or {}
    gpu = runs.get("nvidia-gpu") or {}
    if not e.gpu:
        if nv.get("rc") == 0 or "failed to find runtime handler nvidia" not in nv.get("err", ""):
            p.append(f"a CPU image has an nvidia runtime handler: {nv}")
        return p
    if nv.get("rc") != 0 or "crun: container" not in nv.get("out", ""):
        p.append(f"no container started through the nvidia handler: {nv}")
    if gpu_device:
        got = gpu.get("out", "")
        if gpu.get("rc") != 0 or "devices all injected" not in got or "crun: container" not in got:
            p.append(f"a GPU container on a GPU node did not get its devices: {gpu}")
    elif gpu.get("rc") == 0 or "failed to initialize NVML" not in gpu.get("err", ""):
        p.append(f"a GPU request without a GPU did not fail like the real runtime: {gpu}")
    return p


def check_gpu(r: dict[str, Any], e: Expect, *, device: bool) -> list[str]:
    """The image's GPU check ran before the kubelet and left the GPU label for it exactly
    when an NVIDIA GPU and its driver are there; a CPU image has no GPU check at all."""
    p: list[str] = []
    g = r.get("gpu") or {}
    check = g.get("check") or {}
    labelled = GPU_LABEL in (g.get("kubelet_extra_args") or "").split()
    said = " | ".join(g.get("check_journal") or [])
    smi = g.get("nvidia_smi") or {}
    if not e.gpu:
        if check.get("LoadState") != "not-found":
            p.append(f"a CPU image has a GPU check unit: {check}")
        if labelled:
            p.append("a CPU node carries the GPU label")
        return p
    if device and g.get("standin") is not None and g.get("standin") != "1":
        p.append(f"the stand-in GPU was asked for as {g.get('standin')!r}, not '1'")
    if check.get("Result") != "success" or not said:
        p.append(f"the GPU check did not run (or failed) this boot: {check} {said!r}")
    if device:
        if "gpu-check: NVIDIA GPU present" not in said:
            p.append(f"the GPU check did not find the GPU: {said!r}")
        if not labelled:
            p.append(f"a GPU node without the GPU label: {g.get('kubelet_extra_args')!r}")
        if not g.get("cdi_spec"):
            p.append("no CDI spec for the GPU (nvidia-ctk cdi generate)")
        if smi.get("rc") != 0 or "GPU 0:" not in smi.get("out", ""):
            p.append(f"nvidia-smi does not list the GPU: {smi}")
    else:
        if "gpu-check: no usable NVIDIA GPU" not in said:
            p.append(f"the GPU check did not report 'no GPU': {said!r}")
        if labelled:
            p.append("a node without a GPU carries the GPU label")
        if smi.get("rc") == 0:
            p.append(f"nvidia-smi answers on a machine without a GPU: {smi}")
    return p
