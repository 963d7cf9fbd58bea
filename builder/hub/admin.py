"""What the ``builder hub …`` admin commands do, so the CLI only parses and prints.

``init`` (hub settings taken from a site profile), token create/list/revoke with each
token's status, node approve, and node revoke with its WireGuard peer removal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as hub_config
from . import stores
from .pki import init_hub
from .stores import HubStore
from .tokens import parse_duration
from .wg import WgInterface


# the profile keys `hub init --site` reads, as (init argument, profile key)
def open_store(config_file: Path | None) -> tuple[hub_config.HubConfig, HubStore]:
    """The hub's config (``config_file``, ``$NODEFORGE_HUB_CONFIG`` or the default) and store."""
    cfg = hub_config.load(config_file)
    return cfg, stores.open_store(cfg, secret=False)


def init(
    directory: Path,
    *,
    site: str | None = None,
    profiles_dir: Path | None = None,
    endpoint: str | None = None,
    url: str | None = None,
    overlay_cidr: str | None = None,
    hub_ip: str | None = None,
    listen: str = "",
    extra_names: list[str] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Create a hub directory; values given here win over the ``site`` profile's.

    With ``site``, also the control plane's kubeadm configuration (``control_plane``).
    """
    profile = None
    if site:
        from builder.site.profile import load_profile

        profile = load_profile(site, profiles_dir)
    # DEFAULTS < the site profile < the options given here: one home, builder.hub.config
    s = hub_config.init_settings(
        profile, endpoint=endpoint, url=url, overlay_cidr=overlay_cidr, hub_ip=hub_ip,
        listen=listen or None,
    )  # fmt: skip
    res: dict[str, Any] = init_hub(
        directory,
        endpoint=s["endpoint"],
        url=s["url"],
        overlay_cidr=s["overlay_cidr"],
        hub_ip=s["hub_ip"],
        listen=s["listen"],
        extra_names=list(extra_names or []),
        force=force,
        wireguard=s["wireguard"],
    )
    if site:
        # a new cluster's control plane, set up inside the overlay (kubeadm-init.yaml + plan)
        res["control_plane"] = control_plane(directory, site, profiles_dir, res, force=force)
    return res


def control_plane(
    directory: Path,
    site: str,
    profiles_dir: Path | None,
    init_result: dict[str, Any],
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Write DIR/kubeadm-init.yaml for the site's control plane; return the next steps."""
    from builder.site.profile import load_profile

    from . import kubeadm

    cfg = hub_config.load(init_result["config"])
    prof = load_profile(site, profiles_dir)
    cp = kubeadm.from_values(prof.get, hub_ip=str(cfg.wg.hub_ip), overlay_cidr=str(cfg.wg.network))
    return kubeadm.prepare(directory, cp, init_result, force=force)


def create_token(
    config_file: Path | None, site: str, uses: int, ttl: str, approve: bool, description: str
) -> tuple[str, str]:
    """Mint a token: (the token, shown once; its id)."""
    seconds = parse_duration(ttl)
    _, store = open_store(config_file)
    return store.create_token(site, uses, seconds, approve, description)


def token_status(row: dict[str, Any], now: float | None = None) -> str:
    """``revoked``, ``expired``, ``used up`` or ``valid`` for a row of ``list_tokens``."""
    now = time.time() if now is None else now
    if row["revoked_at"]:
        return "revoked"
    if row["expires_at"] <= now:
        return "expired"
    if row["used"] >= row["max_uses"]:
        return "used up"
    return "valid"


def list_tokens(config_file: Path | None) -> list[dict[str, Any]]:
    """Every token (never its secret), oldest first."""
    _, store = open_store(config_file)
    return store.list_tokens()


def token_id(token_or_id: str) -> str:
    """The id of a token given whole (``nf1.<id>.<secret>``) or as its id."""
    return token_or_id.split(".")[1] if token_or_id.startswith("nf1.") else token_or_id


def revoke_token(config_file: Path | None, token_or_id: str) -> None:
    _, store = open_store(config_file)
    store.revoke_token(token_id(token_or_id))


def list_nodes(config_file: Path | None) -> list[dict[str, Any]]:
    _, store = open_store(config_file)
    return store.list_nodes()


def approve_node(config_file: Path | None, node_id: str) -> dict[str, Any]:
    _, store = open_store(config_file)
    return store.approve(node_id)


@dataclass(frozen=True)
class Revoked:
    node_id: str
    pubkey: str
    interface: str
    peer_removed: bool  # False: the interface is not here, the hub's reconcile removes it


def remove_peer(cfg: hub_config.HubConfig, pubkey: str) -> bool:
    """Remove ``pubkey`` from the hub's interface now, if it is on this machine."""
    wg = WgInterface(cfg.wg.interface, cfg.wg.private_key_file, cfg.wg.listen_port)
    if cfg.wg.apply and wg.exists():
        wg.remove([pubkey])
        return True
    return False


def revoke_node(config_file: Path | None, node_id: str) -> Revoked:
    """Revoke a node (secret invalid, address quarantined) and remove its peer."""
    cfg, store = open_store(config_file)
    old = store.revoke_node(node_id)
    removed = remove_peer(cfg, old["pubkey"])
    return Revoked(node_id, old["pubkey"], cfg.wg.interface, removed)
