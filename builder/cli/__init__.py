"""Command line: one thin function per command.

Commands parse options, call one library function and print its result.
Library code raises BuilderError; ``main`` turns it into ``error: …`` / ``hint: …``
on stderr and an exit code (1, 2 for usage/validation, 130 for Ctrl-C).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from builder import __version__
from builder.errors import BuilderError

log = logging.getLogger("builder")


class State:
    debug = False


def _setup_logging(debug: bool, verbose: int, quiet: int) -> None:
    level = logging.INFO + 10 * (quiet - verbose)
    if debug:
        level = logging.DEBUG
    logging.basicConfig(
        level=max(logging.DEBUG, min(level, logging.CRITICAL)),
        format="%(message)s" if not debug else "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="builder")
@click.option("--debug", is_flag=True, help="Log every command run and show tracebacks.")
@click.option("-v", "--verbose", count=True, help="More output (repeatable).")
@click.option("-q", "--quiet", count=True, help="Less output (repeatable).")
def cli(debug: bool, verbose: int, quiet: int) -> None:
    """Build bootable node images for hybrid Kubernetes clusters."""
    State.debug = debug
    _setup_logging(debug, verbose, quiet)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def set_option(f: Any) -> Any:
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a profile value (dotted key, YAML value); repeatable, applied last.",
    )(f)


def profiles_dir_option(f: Any) -> Any:
    return click.option(
        "--profiles",
        "profiles_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        envvar="BUILDER_PROFILES",
        help="Directory holding the site profiles (default: ./profiles).",
    )(f)


# --- foundation commands (issue 2) -------------------------------------------------------


def _complete_site(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    try:
        from builder.site.profile import list_sites

        return [s for s, _, _ in list_sites() if s.startswith(incomplete)]
    except Exception:  # completion must never fail loudly
        return []


def site_argument(f: Any) -> Any:
    return click.argument("site", shell_complete=_complete_site)(f)


@cli.command("profiles")
@profiles_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profiles_cmd(profiles_dir: Path | None, as_json: bool) -> None:
    """List the site profiles."""
    from builder.site.profile import list_sites

    sites = list_sites(profiles_dir)
    if as_json:
        echo_json([{"site": s, "target": t, "description": d} for s, t, d in sites])
        return
    for site, target, desc in sites:
        click.echo(f"{site:<16} {target:<6} {desc}")


@cli.command("show")
@site_argument
@set_option
@profiles_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
def show_cmd(
    site: str, overrides: tuple[str, ...], profiles_dir: Path | None, as_json: bool
) -> None:
    """Print the merged, validated profile for SITE (secrets masked)."""
    import yaml

    from builder.site.profile import load_profile

    data = load_profile(site, profiles_dir, overrides).masked()
    if as_json:
        echo_json(data)
    else:
        click.echo(yaml.safe_dump(data, sort_keys=True, default_flow_style=False), nl=False)


@cli.command("render")
@site_argument
@set_option
@profiles_dir_option
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory (default: build/SITE).",
)
def render_cmd(
    site: str, overrides: tuple[str, ...], profiles_dir: Path | None, output: Path | None
) -> None:
    """Render the build tree for SITE (cloud-init, autoinstall, Packer vars, scripts)."""
    from builder.site.profile import load_profile
    from builder.site.render import render_site

    result = render_site(load_profile(site, profiles_dir, overrides), output)
    log.info("rendered %d files for %s (input %s)", len(result.files), site, result.input_hash[:12])
    click.echo(str(result.path))


@cli.command("validate")
@site_argument
@set_option
@profiles_dir_option
@click.option(
    "--skip",
    multiple=True,
    metavar="CHECK",
    help="Leave out a validator (autoinstall-schema, cloud-init-schema, shellcheck, "
    "systemd-analyze, packer-validate).",
)
def validate_cmd(
    site: str, overrides: tuple[str, ...], profiles_dir: Path | None, skip: tuple[str, ...]
) -> None:
    """Validate SITE: profile schema and checks, then the rendered tree with real validators.

    Nothing is written: the tree is rendered into a temporary directory.
    """
    from builder.site.profile import load_profile
    from builder.site.render import render_site
    from builder.site.validate import validate_site_tree

    profile = load_profile(site, profiles_dir, overrides)
    ran = validate_site_tree(lambda out: render_site(profile, out), tuple(skip))
    log.info("%s: ok (%s)", site, ", ".join(["profile-schema", *ran]))
    click.echo(f"{site}: valid")


# --- iso / seed commands (issue 3) -------------------------------------------------------


@cli.command("image")
@site_argument
@set_option
@profiles_dir_option
@click.option(
    "--target",
    type=click.Choice(["iso", "ami", "qcow2"]),
    default=None,
    help="Override the profile's target.",
)
@click.option(
    "--base-iso",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Use this local base ISO instead of downloading iso.base.url.",
)
@click.option("--no-verify", is_flag=True, help="Do not check --base-iso's sha256.")
@click.option("--force", is_flag=True, help="Rebuild even when the inputs are unchanged.")
@click.option(
    "--dry-run", is_flag=True, help="ami/qcow2: render, then print the exact packer command."
)
@click.option(
    "--base-image",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="qcow2: a local base cloud image instead of the profile's URL.",
)
@click.option(
    "-o",
    "--dist",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory (default: dist/SITE).",
)
def image_cmd(
    site: str,
    overrides: tuple[str, ...],
    profiles_dir: Path | None,
    target: str | None,
    base_iso: Path | None,
    no_verify: bool,
    force: bool,
    dry_run: bool,
    base_image: Path | None,
    dist: Path | None,
) -> None:
    """Build SITE's image: the target its profile names (or --target).

    iso: the remastered Ubuntu installer ISO; ami/qcow2: a Packer build.
    Prints the artifact (ISO path, AMI id per region, qcow2 path) on stdout.
    """
    from builder.site.profile import load_profile
    from builder.targets.image import build_image

    kind = target or load_profile(site, profiles_dir, overrides).get("target")
    if kind in ("ami", "qcow2"):
        from builder.targets.packer import build_site_image, result_lines

        packer_result = build_site_image(
            site,
            kind,
            dry_run,
            profiles_dir=profiles_dir,
            overrides=overrides,
            dist=dist,
            base_image=base_image,
        )
        for line in result_lines(packer_result):
            click.echo(line)
        return
    if dry_run or base_image:
        raise click.UsageError("--dry-run and --base-image are for ami/qcow2 targets")
    result = build_image(
        site,
        profiles_dir=profiles_dir,
        overrides=overrides,
        target=kind,
        dist=dist,
        base_iso=base_iso,
        verify=not no_verify,
        force=force,
    )
    click.echo(result.path)


@cli.command("seed")
@site_argument
@set_option
@profiles_dir_option
@click.option("--hostname", default=None, help="The node's host name.")
@click.option("--ip", default=None, metavar="CIDR", help="Static address, e.g. 192.168.50.10/24.")
@click.option("--gateway", default=None, help="Default gateway (with --ip).")
@click.option("--dns", multiple=True, help="DNS server (with --ip); repeatable.")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding a one-time enrollment token for this node.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the seed ISO (0600).",
)
def seed_cmd(
    site: str,
    overrides: tuple[str, ...],
    profiles_dir: Path | None,
    hostname: str | None,
    ip: str | None,
    gateway: str | None,
    dns: tuple[str, ...],
    token_file: Path | None,
    output: Path,
) -> None:
    """Write a NoCloud CIDATA seed ISO with per-node data (second USB stick or VM disk)."""
    from builder.errors import UsageError
    from builder.site.profile import load_profile
    from builder.targets.seed import node_seed, write_seed

    profile = load_profile(site, profiles_dir, overrides)
    token = None
    if token_file is not None:
        try:
            token = token_file.read_text()
        except OSError as exc:
            raise UsageError(f"--token-file: {token_file}: {exc.strerror}") from None
    files = node_seed(
        site=profile.site,
        hostname=hostname,
        ip=ip,
        gateway=gateway,
        dns=list(dns),
        token=token,
    )
    click.echo(write_seed(output, files))


# --- hub commands (issue 4) --------------------------------------------------------------


def _hub_config_option(f: Any) -> Any:
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Hub config (default: $NODEFORGE_HUB_CONFIG or /etc/nodeforge-hub/hub.json).",
    )(f)


def _hub_store(config_file: Path | None) -> Any:
    from builder.hub import config as hub_config
    from builder.hub.store import Pool, Store

    cfg = hub_config.load(config_file)
    return cfg, Store(
        cfg.database, Pool(cfg.wg.network, cfg.wg.hub_ip, cfg.wg.reserved), cfg.quarantine_seconds
    )


@cli.group()
def hub() -> None:
    """Enrollment hub: the service nodes enroll with on first boot."""


@hub.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--site", default=None, help="Take endpoint, URL, overlay, MTU from this profile.")
@profiles_dir_option
@click.option("--endpoint", default=None, help="WireGuard endpoint nodes dial (HOST:PORT).")
@click.option("--url", default=None, help="Enrollment URL nodes use (https://HOST:PORT).")
@click.option("--overlay-cidr", default=None, help="Overlay network [10.100.0.0/16].")
@click.option("--hub-ip", default=None, help="Hub overlay address (default: first host).")
@click.option("--listen", default="", help="HOST:PORT to listen on (default 0.0.0.0:<url port>).")
@click.option("--san", "sans", multiple=True, help="Extra DNS name/IP for the server cert.")
@click.option("--force", is_flag=True, help="Replace an existing hub.json.")
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
) -> None:
    """Create a CA, a server cert, WireGuard and secret keys and DIR/hub.json."""
    from builder.errors import UsageError
    from builder.hub.pki import init_hub

    wg: dict[str, Any] = {}
    if site:
        from builder.site.profile import load_profile

        prof = load_profile(site, profiles_dir)
        endpoint = endpoint or prof.get("wireguard.hub_endpoint")
        url = url or prof.get("enrollment.url")
        overlay_cidr = overlay_cidr or prof.get("wireguard.overlay_cidr")
        hub_ip = hub_ip or prof.get("wireguard.hub_overlay_ip")
        wg = {k: prof.get(f"wireguard.{k}") for k in ("mtu", "keepalive", "interface")}
    if not endpoint or not url:
        raise UsageError("--endpoint and --url are required (or --site to read them)")
    res = init_hub(
        directory,
        endpoint=endpoint,
        url=url,
        overlay_cidr=overlay_cidr or "10.100.0.0/16",
        hub_ip=hub_ip,
        listen=listen,
        extra_names=list(sans),
        force=force,
        wireguard={k: v for k, v in wg.items() if v is not None},
    )
    click.echo(f"config: {res['config']}")
    click.echo(f"ca_cert: {res['ca_cert']}")
    click.echo(f"enrollment.ca_pin: {res['ca_pin']}")
    click.echo(f"wireguard.hub_public_key: {res['hub_public_key']}")


@hub.command("serve")
@_hub_config_option
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
@_hub_config_option
@click.option("--site", required=True)
@click.option("--uses", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--ttl", default="72h", show_default=True, help="Lifetime: 15m, 72h, 7d, …")
@click.option("--approve", is_flag=True, help="Enrollments wait for `builder hub approve`.")
@click.option("--description", default="")
def hub_token_create(
    config_file: Path | None, site: str, uses: int, ttl: str, approve: bool, description: str
) -> None:
    """Mint a token; it is printed once (only its hash is stored)."""
    from builder.hub.tokens import parse_duration

    seconds = parse_duration(ttl)
    _, store = _hub_store(config_file)
    token, tid = store.create_token(site, uses, seconds, approve, description)
    click.echo(f"token id {tid}: site={site} uses={uses} ttl={ttl} approve={approve}", err=True)
    click.echo(token)


@hub_token.command("list")
@_hub_config_option
@click.option("--json", "as_json", is_flag=True)
def hub_token_list(config_file: Path | None, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    import time as _time

    _, store = _hub_store(config_file)
    rows = store.list_tokens()
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{'ID':16}  {'SITE':12} {'USED':>9}  {'APPROVE':7}  STATUS")
    now = _time.time()
    for r in rows:
        status = (
            "revoked"
            if r["revoked_at"]
            else "expired"
            if r["expires_at"] <= now
            else "used up"
            if r["used"] >= r["max_uses"]
            else "valid"
        )
        click.echo(
            f"{r['id']:16}  {r['site']:12} {r['used']:>4}/{r['max_uses']:<4}  "
            f"{'yes' if r['approve'] else 'no':7}  {status}"
        )


@hub_token.command("revoke")
@_hub_config_option
@click.argument("token_id")
def hub_token_revoke(config_file: Path | None, token_id: str) -> None:
    """Revoke a token (enrolled nodes stay connected)."""
    _, store = _hub_store(config_file)
    store.revoke_token(token_id.split(".")[1] if token_id.startswith("nf1.") else token_id)
    click.echo(f"revoked token {token_id[:20]}", err=True)


@hub.command("nodes")
@_hub_config_option
@click.option("--json", "as_json", is_flag=True)
def hub_nodes(config_file: Path | None, as_json: bool) -> None:
    """List enrolled and pending nodes."""
    _, store = _hub_store(config_file)
    rows = store.list_nodes()
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{'NODE':36}  {'HOSTNAME':20} {'ADDRESS':15}  {'STATE':8}  SITE")
    for r in rows:
        click.echo(
            f"{r['node_id']:36}  {r['hostname'][:20]:20} {r['ip'] or '-':15}  "
            f"{r['state']:8}  {r['site']}"
        )


@hub.command("approve")
@_hub_config_option
@click.argument("node_id")
def hub_approve(config_file: Path | None, node_id: str) -> None:
    """Approve a pending node (it gets its address on its next poll)."""
    _, store = _hub_store(config_file)
    n = store.approve(node_id)
    click.echo(f"{n['node_id']} {n['ip']}")


@hub.command("revoke")
@_hub_config_option
@click.argument("node_id")
def hub_revoke(config_file: Path | None, node_id: str) -> None:
    """Revoke a node: peer removed, secret invalid, address quarantined."""
    from builder.hub.wg import WgInterface

    cfg, store = _hub_store(config_file)
    old = store.revoke_node(node_id)
    wg = WgInterface(cfg.wg.interface, cfg.wg.private_key_file, cfg.wg.listen_port)
    if cfg.wg.apply and wg.exists():
        wg.remove([old["pubkey"]])
        click.echo(f"removed peer {old['pubkey']} from {cfg.wg.interface}", err=True)
    else:
        click.echo(
            f"{cfg.wg.interface} not here: the hub removes the peer at its next reconcile", err=True
        )
    click.echo(f"revoked {node_id}")


# --- packer targets (issue 5) ------------------------------------------------------------


# `builder image` builds ami/qcow2 through builder.packer.build_site_image.


# --- boot tests (issue 6) ----------------------------------------------------------------


@cli.command("boot-test")
@click.argument("site")
@click.option(
    "--nodes",
    type=click.IntRange(min=1, max=8),
    default=1,
    show_default=True,
    help="Nodes booted at the same time (one vCPU each).",
)
@click.option("--uefi", is_flag=True, help="Boot a GPT disk with OVMF (not direct kernel boot).")
@click.option("--keep", is_flag=True, help="Keep the work directory (consoles, hub DB, seeds).")
@click.option(
    "--base-image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A real cloud image (e.g. Ubuntu's), not the Debian stand-in.",
)
@click.option(
    "--reboot/--no-reboot",
    default=True,
    show_default=True,
    help="Boot the first node a second time (it must not enroll again).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@set_option
@profiles_dir_option
def boot_test(
    site: str,
    nodes: int,
    uefi: bool,
    keep: bool,
    base_image: Path | None,
    reboot: bool,
    as_json: bool,
    overrides: tuple[str, ...],
    profiles_dir: Path | None,
) -> None:
    """Boot SITE's node image in QEMU with a real hub and check it joins on its own."""
    from builder.boottest import boot_test as run_boot_test

    result = run_boot_test(
        site,
        nodes=nodes,
        uefi=uefi,
        keep=keep,
        base_image=base_image,
        profiles_dir=profiles_dir,
        overrides=overrides,
        reboot=reboot,
    )
    if as_json:
        echo_json(result)
    else:
        for n in result["nodes"]:
            click.echo(f"{n['name']}: {n['outcome']} {n['address']} in {n['seconds_to_joined']} s")
    problems = result["problems"]
    if problems:
        raise BuilderError(
            f"boot test of {site} failed ({len(problems)} problems):\n"
            + "\n".join(f"  - {p}" for p in problems),
            hint="re-run with --keep and read the consoles in the work directory",
        )
    log.info("%s: boot test passed (%d node(s))", site, len(result["nodes"]))


# --- flashing (issue 7) ------------------------------------------------------------------


def _sysview_options(f: Any) -> Any:
    """Hidden: read devices from another sysfs tree / mountinfo (fixtures in tests)."""
    f = click.option(
        "--sys-root",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("/sys"),
        envvar="BUILDER_SYS_ROOT",
        hidden=True,
    )(f)
    f = click.option(
        "--mountinfo",
        type=click.Path(dir_okay=False, path_type=Path),
        default=Path("/proc/self/mountinfo"),
        envvar="BUILDER_MOUNTINFO",
        hidden=True,
    )(f)
    return click.option(
        "--swaps",
        type=click.Path(dir_okay=False, path_type=Path),
        default=Path("/proc/swaps"),
        envvar="BUILDER_SWAPS",
        hidden=True,
    )(f)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every field) on stdout.")
@click.option("--all", "show_all", is_flag=True, help="Also list fixed disks, with why not.")
@_sysview_options
def devices(as_json: bool, show_all: bool, sys_root: Path, mountinfo: Path, swaps: Path) -> None:
    """List removable/USB disks and mark the ones that are safe to flash."""
    from builder.flash import blockdev

    view = blockdev.SysView(sys_root, mountinfo, swaps)
    disks = blockdev.list_devices(view, show_all=show_all)
    if as_json:
        echo_json([d.to_dict() for d in disks])
    elif not disks:
        click.echo("no removable or USB disks found (plug in a stick; --all lists every disk)")
    else:
        click.echo(blockdev.format_table(disks))


@cli.command()
@click.argument("paths", nargs=-1, metavar="[IMAGE] DEVICE")
@click.option("--site", help="Flash the newest ISO in DIST/SITE/ instead of IMAGE.")
@click.option(
    "--dist",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("dist"),
    show_default=True,
    help="Where built images live (with --site).",
)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--force",
    is_flag=True,
    help="Override the soft refusals (not removable/USB, mounted, partition). "
    "Never the disk holding /.",
)
@click.option("--no-verify", is_flag=True, help="Skip the read-back sha256 comparison.")
@click.option(
    "--verify-only", is_flag=True, help="Only compare DEVICE's start with IMAGE; write nothing."
)
@_sysview_options
def flash(
    paths: tuple[str, ...],
    site: str | None,
    dist: Path,
    yes: bool,
    force: bool,
    no_verify: bool,
    verify_only: bool,
    sys_root: Path,
    mountinfo: Path,
    swaps: Path,
) -> None:
    """Write IMAGE (or the latest --site ISO) to the USB stick DEVICE, then verify it.

    DEVICE may also be a regular file. See `builder devices` for candidates.
    """
    from builder.errors import UsageError
    from builder.flash import blockdev
    from builder.flash import flasher as flashing

    want = 1 if site else 2
    if len(paths) != want:
        usage = "builder flash --site SITE DEVICE" if site else "builder flash IMAGE DEVICE"
        raise UsageError(
            f"expected {want} argument{'s' if want > 1 else ''}, got {len(paths)}: {usage}",
            hint="make flash SITE=onprem DEVICE=/dev/sdX; list devices with `builder devices`",
        )
    image = flashing.resolve_image(None if site else Path(paths[0]), site, dist)
    device = paths[-1]
    if verify_only:
        flashing.verify_target(image, Path(device))
        click.echo(f"{device}: matches {image}")
        return

    def ask(text: str) -> bool:
        click.echo(text, err=True)
        return click.confirm("Continue?", default=False, err=True)

    result = flashing.flash(
        image,
        device,
        yes=yes,
        force=force,
        verify=not no_verify,
        confirm=ask if sys.stdin.isatty() else None,
        view=blockdev.SysView(sys_root, mountinfo, swaps),
    )
    rate = blockdev.human_size(int(result.bytes / max(result.seconds, 1e-6)))
    log.info("wrote %s in %.1f s (%s/s)", blockdev.human_size(result.bytes), result.seconds, rate)
    if result.verified:
        also = f" and {result.sums_file}" if result.sums_file else ""
        log.info("verified: sha256 %s matches the image%s", result.sha256, also)
    else:
        log.warning("not verified (--no-verify)")
    click.echo(str(result.target))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the Click group and map errors to messages and exit codes."""
    try:
        cli.main(args=argv, prog_name="builder", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BuilderError as exc:
        if State.debug:
            raise
        for line in exc.message.splitlines() or [""]:
            click.echo(f"error: {line}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: short message unless --debug
        if State.debug:
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo("hint: re-run with --debug for a traceback and report it", err=True)
        sys.exit(1)
