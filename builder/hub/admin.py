"""What the ``builder hub …`` admin commands do, so the CLI only parses and prints.

``init`` (hub settings taken from a site profile), token create/list/revoke with each
token's status, node approve, and node revoke with its WireGuard peer removal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import UsageError

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


def profile_snippet(res: dict[str, str]) -> dict[str, Any]:
    """The site-profile settings for nodes of a new hub (absolute ``file:`` path: a relative
    one would resolve from the profile's own directory)."""
    return {
        "enrollment": {
            "ca_cert": f"file:{Path(res['ca_cert']).resolve()}",
            "ca_pin": res["ca_pin"],
        },
        "wireguard": {"hub_public_key": res["hub_public_key"]},
    }


def profile_snippet_yaml(snippet: dict[str, Any]) -> str:
    """``profile_snippet`` as YAML to paste into ``profiles/<site>.yaml``."""
    import yaml

    body = yaml.safe_dump(snippet, sort_keys=False, default_flow_style=False)
    return "# paste into your site profile (profiles/<site>.yaml):\n" + body


def create_token(
    config_file: Path | None,
    site: str,
    uses: int,
    ttl: str,
    approve: bool,
    description: str,
    *,
    require_known_site: bool = False,
    profiles_dir: Path | None = None,
) -> tuple[str, str]:
    """Mint a token: (the token, shown once; its id).

    ``require_known_site``: the site must have a profile (``profiles_dir``, else
    $BUILDER_PROFILES, ./profiles, the shipped examples) or already be known to this hub
    (it has tokens or nodes of that site); else UsageError with did-you-mean.
    """
    seconds = parse_duration(ttl)
    _, store = open_store(config_file)
    if require_known_site:
        check_site(site, store, profiles_dir)
    return store.create_token(site, uses, seconds, approve, description)


def check_site(site: str, store: HubStore, profiles_dir: Path | None) -> None:
    from builder.site.common import did_you_mean, display_path
    from builder.site.profile import default_profiles_dir

    pdir = profiles_dir or default_profiles_dir()
    profiles = {p.stem for p in pdir.glob("*.yaml") if p.stem != "base"} if pdir.is_dir() else set()
    on_hub = {r["site"] for r in store.list_tokens()} | {r["site"] for r in store.list_nodes()}
    known = sorted(profiles | on_hub)
    if site in known:
        return
    raise UsageError(
        f"--site: no site {site!r}: no profile in {display_path(pdir)} and no token or node "
        "of that site on this hub",
        hint=(did_you_mean(site, known) or f"known sites: {', '.join(known) or 'none'}")
        + "; --profiles DIR names where the site profiles are, --new-site mints the first "
        "token of a site without a profile here",
    )


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


def revoke_token(config_file: Path | None, token_or_id: str) -> float | None:
    """Revoke a token; returns when it was revoked before (then nothing changes), else None."""
    _, store = open_store(config_file)
    tid = token_id(token_or_id)
    before = next((r for r in store.list_tokens() if r["id"] == tid), None)
    if before is not None and before["revoked_at"] is not None:
        return float(before["revoked_at"])
    store.revoke_token(tid)
    return None


def iso_time(ts: float | None) -> str | None:
    """A stored epoch time as ISO 8601 UTC (``2026-11-30T02:50:00Z``)."""
    if ts is None:
        return None
    import datetime

    return (
        datetime.datetime.fromtimestamp(ts, datetime.UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )


def token_rows(rows: list[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    """Tokens for output: ISO 8601 times, booleans, the status; never a secret."""
    return [
        {
            "id": r["id"],
            "site": r["site"],
            "used": r["used"],
            "max_uses": r["max_uses"],
            "approve": bool(r["approve"]),
            "status": token_status(r, now),
            "created_at": iso_time(r["created_at"]),
            "expires_at": iso_time(r["expires_at"]),
            "revoked_at": iso_time(r["revoked_at"]),
            "description": r.get("description") or "",
        }
        for r in rows
    ]


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns as wide as their widest cell (the last one is not padded)."""
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    lines = []
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


ROUTE_STALE_SECONDS = 90.0  # 3 missed reports (the agent reports every 30 s and on a move)


def list_nodes(config_file: Path | None, now: float | None = None) -> list[dict[str, Any]]:
    """The nodes; with several hubs (etcd) each with ``route``: the hub the node last
    reported routing through, the report's age in seconds and whether it is stale (the
    node may have moved since without being able to say so, or be down); else None."""
    _, store = open_store(config_file)
    rows = store.list_nodes()
    routes = getattr(store, "routes", None)
    seen: dict[str, dict[str, Any]] = routes() if routes is not None else {}
    now = time.time() if now is None else now
    for r in rows:
        rt = seen.get(r["node_id"])
        if rt is not None:
            age = max(0.0, now - float(rt.get("at", 0)))
            rt = {**rt, "age": round(age, 1), "stale": age > ROUTE_STALE_SECONDS}
        r["route"] = rt
    return rows


def route_text(route: dict[str, Any] | None) -> str:
    """``hub-b 12s``, ``hub-b stale 5m`` or ``-`` (no report: one hub, or none yet)."""
    if not route:
        return "-"
    age = float(route["age"])
    ago = f"{age:.0f}s" if age < 120 else f"{age / 60:.0f}m" if age < 7200 else f"{age / 3600:.0f}h"
    return f"{route['hub']} {'stale ' if route['stale'] else ''}{ago}"


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
