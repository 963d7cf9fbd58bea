"""``builder hub …``: the enrollment hub (init, serve, tokens, nodes, approve, revoke)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from .common import State, cli, echo_json, json_option, profiles_dir_option


def hub_config_option(f: Any) -> Any:
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Hub config (default: $NODEFORGE_HUB_CONFIG or /etc/nodeforge-hub/hub.json).",
    )(f)


def hub_store(config_file: Path | None) -> Any:
    """The hub's (config, store); the hub modules load only when a hub command runs."""
    from builder.hub import admin

    return admin.open_store(config_file)


@cli.group()
def hub() -> None:
    """Enrollment hub: the service nodes enroll with on first boot."""


def _quiet_audit() -> None:
    """Admin commands print their result; the audit record goes to the hub's database
    (its audit log), not as raw JSON on the terminal (shown with -v)."""
    if State.verbose == 0:
        logging.getLogger("nodeforge.hub.audit").setLevel(logging.WARNING)


@hub.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--site", default=None, help="Take endpoint, URL, overlay, MTU from this profile.")
@profiles_dir_option
@click.option("--endpoint", default=None, help="WireGuard endpoint nodes dial (HOST:PORT).")
@click.option("--url", default=None, help="Enrollment URL nodes use (https://HOST:PORT).")
@click.option(
    "--overlay-cidr",
    default=None,
    help="Overlay network (default: the site's, else profiles/base.yaml's 10.200.0.0/16).",
)
@click.option("--hub-ip", default=None, help="Hub overlay address (default: first host).")
@click.option("--listen", default="", help="HOST:PORT to listen on (default 0.0.0.0:<url port>).")
@click.option("--san", "sans", multiple=True, help="Extra DNS name/IP for the server cert.")
@click.option("--force", is_flag=True, help="Replace an existing hub.json.")
@json_option
def hub_init(
    directory: Path,
    site: str | None,
    profiles_dir: Path | None,
    endpoint: str | None,
    url: str | None,
    overlay_cidr: str | None,
    hub_ip: str | None,
    listen: str,
    sans: tuple[str, ...],
    force: bool,
    as_json: bool,
) -> None:
    """Create a CA, a server cert, WireGuard and secret keys and DIR/hub.json.

    Prints the profile settings for nodes of this hub as YAML to paste into the site
    profile (enrollment.ca_cert, enrollment.ca_pin, wireguard.hub_public_key); --json
    prints them with the paths as an object.
    """
    from builder.hub import admin

    res = admin.init(
        directory,
        site=site,
        profiles_dir=profiles_dir,
        endpoint=endpoint,
        url=url,
        overlay_cidr=overlay_cidr,
        hub_ip=hub_ip,
        listen=listen,
        extra_names=list(sans),
        force=force,
    )
    snippet = admin.profile_snippet(res)
    if as_json:
        echo_json({**res, "profile": snippet})
        return
    click.echo(
        f"hub config: {res['config']} (start it with: builder hub serve --config …)", err=True
    )
    click.echo(admin.profile_snippet_yaml(snippet), nl=False)
    if "control_plane" in res:
        from builder.hub import kubeadm

        # a new cluster's control plane inside the overlay: the config written, what to run
        click.echo("", err=True)
        click.echo(kubeadm.format_plan(res["control_plane"]), err=True)


@hub.command("serve")
@hub_config_option
def hub_serve(config_file: Path | None) -> None:
    """Run the enrollment API (HTTPS) and keep the WireGuard interface in sync."""
    from builder.hub import api
    from builder.hub import config as hub_config

    cfg = hub_config.load(config_file)
    logging.getLogger("nodeforge").setLevel(logging.INFO)
    api.serve(cfg)


@hub.group("token")
def hub_token() -> None:
    """Enrollment tokens (create, list, revoke)."""


@hub_token.command("create")
@hub_config_option
@click.option("--site", required=True)
@click.option("--uses", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--ttl", default="72h", show_default=True, help="Lifetime: 15m, 72h, 7d, …")
@click.option("--approve", is_flag=True, help="Enrollments wait for `builder hub approve`.")
@click.option("--description", default="")
@profiles_dir_option
@click.option(
    "--new-site", is_flag=True, help="The site has no profile here and no tokens yet: accept it."
)
@json_option
def hub_token_create(
    config_file: Path | None,
    site: str,
    uses: int,
    ttl: str,
    approve: bool,
    description: str,
    profiles_dir: Path | None,
    new_site: bool,
    as_json: bool,
) -> None:
    """Mint a token; it is printed once (only its hash is stored).

    SITE must have a profile (--profiles) or already have tokens or nodes on this hub.
    """
    from builder.hub import admin

    _quiet_audit()
    token, tid = admin.create_token(
        config_file,
        site,
        uses,
        ttl,
        approve,
        description,
        require_known_site=not new_site,
        profiles_dir=profiles_dir,
    )
    if as_json:
        (row,) = [r for r in admin.token_rows(admin.list_tokens(config_file)) if r["id"] == tid]
        echo_json({**row, "token": token, "uses": uses, "ttl": ttl})
        return
    click.echo(f"token id {tid}: site={site} uses={uses} ttl={ttl} approve={approve}", err=True)
    click.echo(token)


@hub_token.command("list")
@hub_config_option
@click.option("--json", "as_json", is_flag=True)
def hub_token_list(config_file: Path | None, as_json: bool) -> None:
    """List tokens (never their secrets); --json has ISO 8601 times and booleans."""
    from builder.hub import admin

    rows = admin.token_rows(admin.list_tokens(config_file))
    if as_json:
        echo_json(rows)
        return
    header = ["ID", "SITE", "USED", "APPROVE", "EXPIRES", "STATUS", "DESCRIPTION"]
    cells = [
        [
            r["id"],
            r["site"],
            f"{r['used']}/{r['max_uses']}",
            "yes" if r["approve"] else "no",
            r["expires_at"] or "-",
            r["status"],
            r["description"] or "-",
        ]
        for r in rows
    ]
    click.echo(admin.table(header, cells))


@hub_token.command("revoke")
@hub_config_option
@click.argument("token_id")
def hub_token_revoke(config_file: Path | None, token_id: str) -> None:
    """Revoke a token (enrolled nodes stay connected)."""
    from builder.hub import admin

    _quiet_audit()
    tid = admin.token_id(token_id)
    before = admin.revoke_token(config_file, token_id)
    if before is not None:
        click.echo(f"token {tid}: already revoked ({admin.iso_time(before)})")
    else:
        click.echo(f"token {tid}: revoked")


@hub.command("nodes")
@hub_config_option
@click.option("--json", "as_json", is_flag=True)
def hub_nodes(config_file: Path | None, as_json: bool) -> None:
    """List enrolled and pending nodes (ROUTE: the hub a node routes through, by its last
    report and that report's age; several hubs only)."""
    from builder.hub import admin

    rows = admin.list_nodes(config_file)
    if as_json:
        echo_json(rows)
        return
    click.echo(
        f"{'NODE':36}  {'HOSTNAME':20} {'ADDRESS':15}  {'STATE':8}  {'ROUTE':16}  SITE  WAITING"
    )
    for r in rows:
        waiting = ""
        if r.get("rekey_pending"):
            waiting = "new key: approve to accept"
        elif r["state"] == "pending" and r.get("replaces"):
            waiting = f"claims the hardware of {r['replaces']}"
        click.echo(
            f"{r['node_id']:36}  {r['hostname'][:20]:20} {r['ip'] or '-':15}  "
            f"{r['state']:8}  {admin.route_text(r.get('route'))[:16]:16}  {r['site']}  "
            f"{waiting}".rstrip()
        )


@hub.command("approve")
@hub_config_option
@click.argument("node_id")
def hub_approve(config_file: Path | None, node_id: str) -> None:
    """Approve a pending node, or an active node's new key (it gets its answer on its next
    poll). A node claiming another node's hardware takes over that node's address."""
    from builder.hub import admin

    _quiet_audit()
    n = admin.approve_node(config_file, node_id)
    click.echo(f"{n['node_id']} {n['ip']}")


@hub.command("revoke")
@hub_config_option
@click.argument("node_id")
def hub_revoke(config_file: Path | None, node_id: str) -> None:
    """Revoke a node: peer removed, secret invalid, address quarantined."""
    from builder.hub import admin

    _quiet_audit()
    res = admin.revoke_node(config_file, node_id)
    if res.peer_removed:
        click.echo(f"removed peer {res.pubkey} from {res.interface}", err=True)
    else:
        click.echo(
            f"{res.interface} not here: the hub removes the peer at its next reconcile", err=True
        )
    click.echo(f"revoked {node_id}")


@hub.command("doctor")
@hub_config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def hub_doctor(config_file: Path | None, as_json: bool) -> None:
    """Check a running control plane for join readiness; every failure prints its fix.

    Exit 0 only when every check passes, 1 otherwise.
    """
    from builder.hub import config as hub_config
    from builder.hub import doctor

    cfg = hub_config.load(config_file)
    probes = doctor.Probes(kubeadm_config=str(cfg.path.parent / "kubeadm-init.yaml"))
    checks = doctor.doctor(doctor.Target.from_hub_config(cfg), probes)
    if as_json:
        echo_json({"ok": doctor.exit_code(checks) == 0, "checks": [c.as_dict() for c in checks]})
    else:
        click.echo(doctor.format_checks(checks))
    click.get_current_context().exit(doctor.exit_code(checks))


@hub.command("migrate")
@hub_config_option
@click.option("--to", "kind", type=click.Choice(["etcd"]), required=True)
@click.option("--endpoint", "endpoints", multiple=True, required=True, help="etcd client URL.")
@click.option("--prefix", default="/nodeforge/hub", show_default=True)
@click.option("--ca", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--cert", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), default=None)
def hub_migrate(
    config_file: Path | None,
    kind: str,
    endpoints: tuple[str, ...],
    prefix: str,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
) -> None:
    """Copy the hub's SQLite state into etcd, verify it, and point hub.json at etcd
    (nodes keep their addresses; restart the hub afterwards)."""
    from builder.hub import config as hub_config
    from builder.hub.stores import migrate

    cfg = hub_config.load(config_file)
    target = hub_config.StoreConfig(kind, endpoints, ca, cert, key, prefix.rstrip("/"))
    m = migrate.to_etcd(cfg, target)
    click.echo(f"copied {m.tokens} tokens, {m.nodes} nodes, {m.quarantine} quarantined addresses")
    click.echo(f"verified; {cfg.path} now uses etcd: restart the hub", err=True)
