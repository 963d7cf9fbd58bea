"""Boot tests: the scenarios (N nodes join + reboot, hub late, expired token)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path
from typing import Any

from builder.errors import UsageError

from .checks import check_hub, check_joined, check_not_configured, check_reboot
from .disk import build_uefi_disk
from .lab import HubOutage, Lab
from .node import boot_node, make_node, node_user_data
from .site import SiteSetup


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


# -- negative boots -------------------------------------------------------------------------


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
