"""Boot tests: a site rendered for the lab (its node config pointed at the lab's hub)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.site.profile import load_profile
from builder.site.render import render_site

from .constants import log
from .lab import HubIdentity, hub_identity, hub_overrides

_IDENT_LOCK = threading.Lock()


@dataclass
class LabSite:
    """A site ready for the lab: profile, rendered tree, the hub identity it trusts."""

    site: str
    profile: Any
    tree: Path
    ident: HubIdentity
    seconds: dict[str, float]

    @property
    def user_data(self) -> bytes:
        return (self.tree / "cloud-init/user-data").read_bytes()


def lab_identity(site: str, profiles_dir: Path | None, overrides: Sequence[str]) -> HubIdentity:
    """The cached lab hub for the site's overlay network (``builder hub init`` once)."""
    base = load_profile(site, profiles_dir, list(overrides))
    cidr = base.spec.wireguard.overlay_cidr
    hub_ip = base.spec.wireguard.hub_overlay_ip
    with _IDENT_LOCK:  # one cache entry per network: one maker at a time in this process
        return hub_identity(cidr, hub_ip)


def prepare(
    site: str,
    workdir: Path,
    *,
    profiles_dir: Path | None = None,
    overrides: Sequence[str] = (),
) -> LabSite:
    """Render ``site`` with its enrollment and WireGuard settings pointing at the lab hub.

    The node's enrollment config (``/etc/nodeforge/node.json``, the hub CA) is baked into
    the image (the rendered user-data does not carry it): an image enrolls with the lab when
    it was built from a render with these overrides.
    ``overrides`` (``--set``) come last and win.
    """
    t0 = time.monotonic()
    ident = lab_identity(site, profiles_dir, overrides)
    profile = load_profile(site, profiles_dir, [*hub_overrides(ident), *overrides])
    tree = workdir / "build" / site
    render_site(profile, tree)
    secs = {"render": round(time.monotonic() - t0, 1)}
    log.info("%s: rendered for the lab hub in %.1f s", site, secs["render"])
    return LabSite(site, profile, tree, ident, secs)
