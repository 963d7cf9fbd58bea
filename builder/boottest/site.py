"""Boot tests: render a site for the lab (test hub + stand-in repository) and build its disk."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import rootfs, standins

from .checks import Expect, expectations
from .constants import HUB_HOST, HUB_PORT, REPO_IN_ROOT, ROOTFS_EXTRA, WG_PORT, log
from .disk import NodeDisk, build_node_disk
from .lab import HubIdentity, hub_identity

_PREP_LOCK = threading.Lock()


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
    k8s = profile.spec.kubernetes.version
    crio = profile.spec.crio.version
    vers = {
        "kubernetes": f"{k8s}-1.1",
        "crio": f"{crio}.0-1.1" if crio.count(".") == 1 else f"{crio}-1.1",
    }
    if profile.spec.gpu.enabled:
        branch = profile.spec.gpu.nvidia.driver_branch
        vers["nvidia_driver_branch"] = branch
        vers["nvidia_driver"] = f"{branch}.195.03-0ubuntu0.24.04.1"
        vers["nvidia_toolkit"] = f"{profile.spec.gpu.nvidia.container_toolkit_version}-1"
    return {**standins.DEFAULT_VERSIONS, **vers}


# -- a site ready to boot ----------------------------------------------------------------
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
    from builder.site.profile import load_profile
    from builder.site.render import render_site

    t0 = time.monotonic()
    base = load_profile(site, profiles_dir, list(overrides))
    cidr = base.spec.wireguard.overlay_cidr
    hub_ip = base.spec.wireguard.hub_overlay_ip
    with _PREP_LOCK:  # shared cache entries: one builder at a time in this process
        ident = hub_identity(cidr, hub_ip)
        rootfs.build_rootfs(ROOTFS_EXTRA)
    extra = lab_overrides(ident) + (gpu_overrides() if base.spec.gpu.enabled else [])
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
