"""Boot tests: N nodes from one image join at once, then a reboot must not enroll again."""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from builder.errors import BuilderError, UsageError
from builder.targets import seed

from .constants import HUB_HOST
from .lab import Lab
from .node import BootImage, Node, NodeBoot, boot_node, make_node, node_user_data
from .site import LabSite


def _boot(lab: Lab, node: Node, image: BootImage, **kw: Any) -> NodeBoot | str:
    """A boot, or the reason it failed (one node's failure must not hide the others')."""
    try:
        return boot_node(lab, node, image, **kw)
    except BuilderError as exc:
        return exc.message


def static_address(i: int) -> str:
    """Node ``i``'s static address on QEMU's user network (10.0.2.0/24: the host, i.e. the
    hub, is 10.0.2.2, the DNS 10.0.2.3, DHCP hands out from 10.0.2.15)."""
    return f"10.0.2.{100 + i}/24"


def user_seed_files(lab_site: LabSite, name: str, token: str, user_seed: Mapping[str, bytes]
                    ) -> dict[str, bytes]:  # fmt: skip
    """A node seed from the user's own seed volume (``--seed``): its meta-data (instance-id,
    host name) and network-config as they are; its user-data replaced by the lab's (the
    site's rendered user-data + host name + a one-time token of the lab hub: a token of the
    user's hub means nothing to the lab's)."""
    files = {"meta-data": user_seed["meta-data"]}
    files["user-data"] = node_user_data(lab_site.user_data, site=lab_site.site, hostname=name,
                                        token=token)  # fmt: skip
    if "network-config" in user_seed:
        files["network-config"] = user_seed["network-config"]
    return files


def node_files(
    lab_site: LabSite, name: str, token: str, i: int, node_seed_only: bool, static: bool
) -> dict[str, bytes]:
    """The NoCloud files of node ``i``'s seed (see ``run_boot_test``)."""
    per_node = seed.node_seed(
        site=lab_site.site,
        hostname=name,
        token=token,
        ip=static_address(i) if static else None,
        gateway=HUB_HOST if static else None,
        dns=["10.0.2.3"] if static else None,
        interface_match="e*",  # predictable (en*) and kernel (eth*) names
    )
    if node_seed_only:
        return per_node
    ud = node_user_data(lab_site.user_data, site=lab_site.site, hostname=name, token=token)
    meta = f"instance-id: nodeforge-{lab_site.site}-{name}-{os.urandom(4).hex()}\n"
    meta += f"local-hostname: {name}\n"
    files = {"user-data": ud, "meta-data": meta.encode()}
    if "network-config" in per_node:
        files["network-config"] = per_node["network-config"]
    return files


def hub_problems(lab: Lab, boots: Sequence[NodeBoot], site: str) -> list[str]:
    """The hub's database: one node per boot, each joined for this site, distinct addresses."""
    p: list[str] = []
    rows = lab.nodes()
    by_name = {r.get("hostname"): r for r in rows}
    for b in boots:
        r = by_name.get(b.node)
        if r is None:
            p.append(f"hub has no node named {b.node}")
            continue
        if r.get("state") != "joined":
            p.append(f"hub: {b.node} is {r.get('state')}, not joined")
        if r.get("site") != site:
            p.append(f"hub: {b.node} is enrolled for site {r.get('site')}, want {site}")
    if len(rows) != len(boots):
        p.append(f"hub has {len(rows)} nodes, want {len(boots)}")
    ips = [r.get("ip") for r in rows]
    if len(set(ips)) != len(ips) or None in ips:
        p.append(f"hub handed out missing or duplicate addresses: {ips}")
    return p


def run_boot_test(
    lab_site: LabSite,
    image: BootImage,
    workdir: Path,
    *,
    nodes: int = 1,
    reboot: bool = True,
    console: Sequence[str] = (),
    timeout: float = 900,
    node_seed_only: bool = False,
    static: bool = False,
    user_seed: Mapping[str, bytes] | None = None,
    user_seed_name: str | None = None,
) -> dict[str, Any]:
    """N nodes at once to "joined" (as the hub sees it), then a reboot of the first.

    ``console``: regexes that must also show on each node's serial console before it is
    powered off (e.g. the report of a check program the image carries). Each node's seed
    carries the site's rendered user-data plus the per-node entries, or, with
    ``node_seed_only``, only what ``builder seed`` writes (an image installed from the
    site's ISO carries its node config); ``static`` gives each node a static address
    (``static_address``) through its seed; ``user_seed`` (one node, named
    ``user_seed_name``): a seed made from the user's own (``user_seed_files``). The
    result's ``problems`` lists every failed check (empty: passed).
    """
    if nodes < 1:
        raise UsageError("--nodes: must be at least 1")
    if user_seed is not None and nodes != 1:
        raise UsageError("--seed: one seed is one machine (use --nodes 1)")
    site = lab_site.site
    result: dict[str, Any] = {"site": site, "image": str(image.path), "nodes": [],
                              "problems": [], "timings": dict(lab_site.seconds),
                              "uefi": image.firmware == "uefi", "reboot": None}  # fmt: skip
    opts: dict[str, Any] = {"console": tuple(console), "timeout": timeout}
    with Lab(workdir, lab_site.ident) as lab:
        t0 = time.monotonic()
        lab.start_hub()
        result["timings"]["hub_start"] = round(time.monotonic() - t0, 1)
        vms = []
        for i in range(nodes):
            name = f"{site}-node{i + 1}"
            if user_seed is not None:
                name = user_seed_name or name
                files = user_seed_files(lab_site, name, lab.token(site), user_seed)
            else:
                files = node_files(lab_site, name, lab.token(site), i, node_seed_only, static)
            vms.append(make_node(name, image, workdir, b"", site, files=files))
            if static:
                result.setdefault("static_addresses", {})[name] = static_address(i)
        t1 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=nodes) as pool:
            futs = [pool.submit(_boot, lab, n, image, **opts) for n in vms]
            outcomes = [f.result() for f in futs]
        result["timings"]["first_boot"] = round(time.monotonic() - t1, 1)
        boots = [b for b in outcomes if isinstance(b, NodeBoot)]
        for n, b in zip(vms, outcomes, strict=True):
            if isinstance(b, str):
                result["problems"].append(f"{n.name}: not joined: {b}")
                result["nodes"].append({"node": n.name, "joined": False,
                                        "console": str(n.workdir / "console-1.log")})  # fmt: skip
            else:
                result["nodes"].append(b.as_dict())
        if len(boots) == nodes:
            result["problems"] += hub_problems(lab, boots, site)
            used = sum(int(t.get("used", 0)) for t in lab.tokens())
            if used != nodes:
                result["problems"].append(f"hub tokens used {used} times, want {nodes} (once each)")
        if reboot and not result["problems"]:
            before = {r["node_id"]: r for r in lab.nodes()}
            t2 = time.monotonic()
            again = _boot(lab, vms[0], image, **opts)
            result["timings"]["reboot"] = round(time.monotonic() - t2, 1)
            if isinstance(again, str):
                result["problems"].append(f"{vms[0].name} reboot: not joined: {again}")
            else:
                result["reboot"] = again.as_dict()
                result["problems"] += reboot_problems(lab, boots[0], again, before)
        if result["problems"]:
            result["hub_log_tail"] = lab.hub_log()
    return result


def reboot_problems(
    lab: Lab, first: NodeBoot, again: NodeBoot, before: dict[str, dict[str, Any]]
) -> list[str]:
    """A second boot of the same disk: same identity and address, no new enrollment."""
    p: list[str] = []
    after = {r["node_id"]: r for r in lab.nodes()}
    if set(after) != set(before):
        p.append("the reboot enrolled again (the hub has new nodes)")
    if again.node_id != first.node_id or again.pubkey != first.pubkey:
        p.append(f"after reboot the node is {again.node_id}, was {first.node_id}")
    if again.address != first.address:
        p.append(f"address changed across reboot: {first.address} -> {again.address}")
    row = after.get(first.node_id or "", {})
    if row.get("joined_at") != before.get(first.node_id or "", {}).get("joined_at"):
        p.append("the hub saw the node join again on its reboot")
    return p
