"""Packer targets: ``ami`` (amazon-ebs) and ``qcow2`` (qemu) from the rendered build tree.

``build_packer_image(site_tree, target, dry_run)`` runs ``packer build`` on the templates in
``packer/`` with the renderer's ``build/<site>/packer/site.auto.pkrvars.json`` plus per-run
variables, streams Packer's output to stderr, and turns Packer's manifest into ours:
``dist/<site>/manifest.json`` (AMI id per region, or the qcow2 with its sha256) and
``dist/<site>/SHA256SUMS``. ``--dry-run`` returns the exact command without running it.

Packer 1.6.6 (Debian's package, used by our tests) lacks two things the templates use with
current Packer: ``required_plugins`` (kept in ``packer/plugins/``) and the amazon-ebs
``metadata_options`` block (IMDSv2 on the build instance). For Packer < 1.7 the templates
are staged with that block removed — enough to validate everything and to build qcow2; an
AMI build then stops with an error instead of silently dropping IMDSv2.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from builder import dist as distfiles
from builder.errors import BuilderError, CommandFailed, ToolMissing, UsageError
from builder.fsutil import atomic_write, claim_output_dir, mark_ours, sha256_file
from builder.paths import PACKER_DIR, cache_dir
from builder.run import TimeoutExpired, missing_message, require, run, spawn, stop, which

from .buildseed import write_build_seed

log = logging.getLogger("builder.packer")

TARGETS = {"ami": "amazon-ebs.node", "qcow2": "qemu.node"}
PKRVARS = "packer/site.auto.pkrvars.json"
PACKER_STOP_SECONDS = 300  # for Packer to remove its build VM/instance after an interrupt
RUN_DIR = ".packer-run"


def packer_dir() -> Path:
    """The shipped templates (repo ``packer/``; ``BUILDER_PACKER_DIR`` overrides)."""
    env = os.environ.get("BUILDER_PACKER_DIR")
    return Path(env) if env else PACKER_DIR


_VERSIONS: dict[tuple[str, int, int, int], tuple[int, ...]] = {}


def packer_version() -> tuple[int, ...]:
    """``packer version``, asked once per binary (path, inode, size, mtime) per process."""
    exe = require("packer")
    st = os.stat(exe)
    ident = (os.path.realpath(exe), st.st_ino, st.st_size, st.st_mtime_ns)
    if ident not in _VERSIONS:
        out = run([exe, "version"]).stdout
        m = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
        if not m:
            raise BuilderError(f"cannot read the packer version from {out.strip()!r}")
        _VERSIONS[ident] = tuple(int(x) for x in m.groups())
    return _VERSIONS[ident]


def qemu_accelerator() -> str:
    """BUILDER_QEMU_ACCEL, else tcg where nested KVM hangs (kvm_pvm), else kvm if usable."""
    env = os.environ.get("BUILDER_QEMU_ACCEL")
    if env:
        return env
    if Path("/sys/module/kvm_pvm").exists():
        return "tcg"
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"


# --- templates ---------------------------------------------------------------------------------

_METADATA_BLOCK = re.compile(r"\n[ \t]*(?:#[^\n]*\n[ \t]*)?metadata_options\s*\{[^}]*\}[ \t]*\n")
_IMDS_SUPPORT = re.compile(r"\n[ \t]*(?:#[^\n]*\n[ \t]*)?imds_support\s*=\s*\"[^\"\n]*\"[ \t]*\n")


def strip_for_packer16(text: str) -> str:
    """Remove what Packer 1.6.6 does not know (amazon-ebs metadata_options, imds_support)."""
    return _IMDS_SUPPORT.sub("\n", _METADATA_BLOCK.sub("\n", text))


def stage_templates(dest: Path, version: tuple[int, ...], src: Path | None = None) -> Path:
    """Return the template directory to hand to this Packer version (a staged copy for 1.6)."""
    src = src or packer_dir()
    if not list(src.glob("*.pkr.hcl")):
        raise BuilderError(f"{src}: no Packer templates (*.pkr.hcl)")
    if version >= (1, 7):
        return src
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in sorted(src.glob("*.pkr.hcl")):
        atomic_write(dest / f.name, strip_for_packer16(f.read_text()))
    return dest


# --- checks ----------------------------------------------------------------------------------


def load_site_tree(site_tree: Path) -> dict[str, Any]:
    """Check the rendered tree has what Packer uploads; return the pkrvars."""
    need = [
        site_tree / PKRVARS,
        site_tree / "scripts" / "provision.sh",
        site_tree / "scripts" / "provision.env",
        site_tree / "files",
    ]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise UsageError(
            f"{site_tree}: not a rendered build tree (missing {', '.join(missing)})",
            hint=f"run `builder render {site_tree.name}` first",
        )
    path = site_tree / PKRVARS
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object of Packer variables")
    return data


def aws_credentials_present(env: Mapping[str, str] | None = None) -> bool:
    """Any credential source the AWS SDK in Packer would find (without calling AWS)."""
    env = os.environ if env is None else env
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if any(
        env.get(k)
        for k in (
            "AWS_PROFILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        )
    ):
        return True
    if env.get("BUILDER_AWS_INSTANCE_ROLE") == "1":  # running on EC2 with an instance profile
        return True
    home = Path(env.get("HOME", str(Path.home())))
    files = [
        env.get("AWS_SHARED_CREDENTIALS_FILE", str(home / ".aws" / "credentials")),
        env.get("AWS_CONFIG_FILE", str(home / ".aws" / "config")),
    ]
    return any(Path(f).is_file() and Path(f).stat().st_size > 0 for f in files)


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return True


def preflight(target: str, pkrvars: Mapping[str, Any], version: tuple[int, ...]) -> None:
    """Fail early with a hint: no credentials, no network, too old a Packer."""
    problems = preflight_problems(target, pkrvars, version)
    if problems:
        raise problems[0]


def preflight_problems(
    target: str, pkrvars: Mapping[str, Any], version: tuple[int, ...]
) -> list[BuilderError]:
    """Every problem a real run would stop at before Packer starts (the dry run lists them)."""
    out: list[BuilderError] = []
    if target == "ami":
        if version < (1, 7):
            out.append(BuilderError(
                f"packer {'.'.join(map(str, version))} cannot build the AMI: it lacks the "
                "amazon-ebs metadata_options block and imds_support (IMDSv2 required)",
                hint="install Packer >= 1.7 from HashiCorp and run `packer init packer/plugins`",
            ))  # fmt: skip
        if not aws_credentials_present():
            out.append(BuilderError(
                "no AWS credentials found for the AMI build",
                hint="set AWS_PROFILE (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), or "
                "BUILDER_AWS_INSTANCE_ROLE=1 on an EC2 instance with an instance profile",
            ))  # fmt: skip
        region = str(pkrvars.get("aws_region", "eu-central-1"))
        host = f"ec2.{region}.amazonaws.com"
        if not _resolves(host):
            out.append(BuilderError(
                f"cannot resolve {host}: no network to AWS",
                hint="run the AMI build where the EC2 API is reachable (or via a proxy: "
                "HTTPS_PROXY)",
            ))  # fmt: skip
    else:
        base = str(pkrvars.get("qemu_base_image_url") or "")
        base_host = urlparse(base).hostname if "://" in base else None
        if base_host and not _resolves(base_host):
            out.append(BuilderError(
                f"cannot resolve {base_host} to download the base cloud image {base}",
                hint="no network? set qcow2.base_image.url in the profile to a local mirror",
            ))  # fmt: skip
    return out


# --- command -----------------------------------------------------------------------------------


@dataclass
class PackerPlan:
    """Everything a Packer run needs; ``argv`` is exactly what gets executed."""

    site: str
    target: str
    site_tree: Path
    dist_dir: Path
    run_dir: Path
    argv: list[str]
    pkrvars: dict[str, Any]
    runtime_vars: dict[str, str] = field(default_factory=dict)
    # dry run: what the real run creates before it starts Packer, and where it would stop
    prepared: list[str] = field(default_factory=list)
    problems: list[BuilderError] = field(default_factory=list)

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / "packer-manifest.json"

    def command(self) -> str:
        return shlex.join(self.argv)


def plan_packer(
    site_tree: Path,
    target: str,
    *,
    action: str = "build",
    dist_dir: Path | None = None,
    templates: Path | None = None,
    base_image: Path | None = None,
    qemu_args: Sequence[Sequence[str]] | None = None,
    extra_vars: Mapping[str, str] | None = None,
) -> PackerPlan:
    """Work out the packer command line for ``target`` (no side effects)."""
    if target not in TARGETS:
        raise UsageError(f"unknown Packer target {target!r} (choose from {', '.join(TARGETS)})")
    site_tree = site_tree.resolve()
    pkrvars = load_site_tree(site_tree)
    site = site_tree.name
    dist = (dist_dir or site_tree.parent.parent / "dist" / site).resolve()
    run_dir = dist / RUN_DIR
    rv: dict[str, str] = {
        "build_dir": str(site_tree),
        "manifest_path": str(run_dir / "packer-manifest.json"),
    }
    if target == "qcow2":
        rv["qemu_output_dir"] = str(run_dir / "output")
        rv["qemu_seed_dir"] = str(run_dir / "seed")
        rv["qemu_ssh_private_key_file"] = str(run_dir / "seed" / "build_key")
        rv["qemu_accelerator"] = qemu_accelerator()
        if base_image is not None:
            rv["qemu_base_image_url"] = str(base_image.resolve())
            rv["qemu_base_image_checksum"] = "none"  # filled with the real sha256 by the build
        if qemu_args:
            rv["qemu_args"] = json.dumps([list(a) for a in qemu_args])
    rv.update(extra_vars or {})
    argv = ["packer", action]
    if action == "build":
        argv += ["-color=false", "-on-error=cleanup"]
    argv.append(f"-only={TARGETS[target]}")
    argv.append(f"-var-file={site_tree / PKRVARS}")
    for k, v in rv.items():
        argv.append(f"-var={k}={v}")
    argv.append(str(templates or packer_dir()))
    return PackerPlan(site, target, site_tree, dist, run_dir, argv, pkrvars, rv)


def _prepare(plan: PackerPlan, version: tuple[int, ...], templates_src: Path | None) -> None:
    """Create the run dir: staged templates (Packer < 1.7), seed + key, checksums."""
    claim_output_dir(plan.dist_dir, "--dist")
    plan.dist_dir.mkdir(parents=True, exist_ok=True)
    mark_ours(plan.dist_dir)
    if plan.run_dir.exists():
        shutil.rmtree(plan.run_dir)
    plan.run_dir.mkdir(parents=True)
    os.chmod(plan.run_dir, 0o700)
    staged = stage_templates(plan.run_dir / "templates", version, templates_src)
    plan.argv[-1] = str(staged)
    if plan.target == "qcow2":
        user = str(plan.pkrvars.get("ssh_username", "ubuntu"))
        write_build_seed(Path(plan.runtime_vars["qemu_seed_dir"]), user)
        base = plan.runtime_vars.get("qemu_base_image_url")
        if base and plan.runtime_vars.get("qemu_base_image_checksum") == "none":
            digest = "sha256:" + sha256_file(base)
            plan.runtime_vars["qemu_base_image_checksum"] = digest
            old = "-var=qemu_base_image_checksum=none"
            plan.argv[plan.argv.index(old)] = f"-var=qemu_base_image_checksum={digest}"


def _env() -> dict[str, str]:
    return {
        "CHECKPOINT_DISABLE": "1",
        "PACKER_CACHE_DIR": os.environ.get("PACKER_CACHE_DIR", str(cache_dir() / "packer")),
    }


def validate_packer(
    site_tree: Path, target: str, *, templates: Path | None = None, **kw: Any
) -> PackerPlan:
    """``packer validate`` the templates with the site's vars for one target."""
    version = packer_version()
    plan = plan_packer(site_tree, target, action="validate", **kw)
    _prepare(plan, version, templates)
    try:
        run(plan.argv, env=_env())
    except CommandFailed as exc:
        raise BuilderError(
            f"packer validate failed for {plan.site} ({target}):\n{exc.output.strip()}",
            hint=f"check {site_tree / PKRVARS} against packer/variables.pkr.hcl",
        ) from exc
    finally:
        shutil.rmtree(plan.run_dir, ignore_errors=True)
    return plan


# --- build ---------------------------------------------------------------------------------


@dataclass
class PackerResult:
    plan: PackerPlan
    manifest: Path
    artifacts: list[dict[str, Any]]
    layer: Any = None  # qcow2: the package layer used (builder.targets.layers.LayerUse)


def build_packer_image(
    site_tree: str | os.PathLike[str],
    target: str,
    dry_run: bool = False,
    *,
    dist_dir: Path | None = None,
    templates: Path | None = None,
    base_image: Path | None = None,
    qemu_args: Sequence[Sequence[str]] | None = None,
    extra_vars: Mapping[str, str] | None = None,
    timeout: float | None = None,
    layers: bool | None = None,
    force: bool = False,
) -> PackerResult | PackerPlan:
    """Build ``target`` (ami|qcow2) from the rendered ``site_tree`` (build/<site>).

    With ``dry_run`` nothing is run or written: the returned plan's ``command()`` is the
    exact command a real run executes (its run dir is ``dist/<site>/.packer-run``).
    qcow2 builds on the cached package layer (``layers``); ``force`` rebuilds that layer.
    """
    from . import layers as layer_cache

    if target == "qcow2" and not dry_run and layer_cache.enabled(layers):
        return layer_cache.build_layered(  # type: ignore[no-any-return]
            Path(site_tree), dist_dir=dist_dir, templates=templates, base_image=base_image,
            qemu_args=qemu_args, extra_vars=extra_vars, timeout=timeout, force=force,
        )  # fmt: skip
    plan = plan_packer(
        Path(site_tree),
        target,
        dist_dir=dist_dir,
        base_image=base_image,
        qemu_args=qemu_args,
        extra_vars=extra_vars,
    )
    if dry_run:
        return _dry_run(plan)
    version = packer_version()
    preflight(target, {**plan.pkrvars, **plan.runtime_vars}, version)
    _prepare(plan, version, templates)
    log.info("+ %s", plan.command())
    try:
        _stream(plan.argv, timeout)
        result = _collect(plan)
    finally:
        shutil.rmtree(plan.run_dir, ignore_errors=True)
    return result


def _dry_run(plan: PackerPlan) -> PackerPlan:
    """Fill in what the real run would do first and every problem it would stop at."""
    version: tuple[int, ...] | None = None
    if which("packer") is None:
        plan.problems.append(ToolMissing(missing_message("packer")))
    else:
        version = packer_version()
    run_dir = plan.run_dir
    plan.prepared.append(f"{run_dir} (0700, removed after the build)")
    if version is not None and version < (1, 7):
        # the same template directory a real run uses: a staged copy for Packer < 1.7
        plan.argv[-1] = str(run_dir / "templates")
        plan.prepared.append(
            f"{run_dir / 'templates'}: the templates without the blocks Packer "
            f"{'.'.join(map(str, version))} does not know"
        )
    if plan.target == "qcow2":
        plan.prepared.append(
            f"{run_dir / 'seed'}: NoCloud seed with a throwaway SSH key (build_key)"
        )
    if version is not None:
        plan.problems += preflight_problems(
            plan.target, {**plan.pkrvars, **plan.runtime_vars}, version
        )
    claim_problem = _claim_problem(plan.dist_dir)
    if claim_problem:
        plan.problems.append(claim_problem)
    return plan


def _claim_problem(dist_dir: Path) -> BuilderError | None:
    try:
        claim_output_dir(dist_dir, "--dist")
    except BuilderError as exc:
        return exc
    return None


def _stream(argv: list[str], timeout: float | None) -> None:
    """Run packer with its output streamed to our stderr (stdout carries results only)."""
    try:
        err = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stderr (tests): use fd 2
        err = 2
    # Packer runs in a session of its own, with its plugins and QEMU: leaving the block
    # early (timeout, error, Ctrl-C, SIGTERM) sends SIGINT to that whole group, as a
    # terminal's Ctrl-C does (Packer's outer process ignores a SIGINT sent to it alone:
    # UPSTREAM.md), so Packer removes the build VM/instance it made; it gets up to 5 minutes
    # before the group is killed, and nothing of the group outlives the block (a QEMU left
    # behind kept a core busy and the build disk open)
    with spawn(
        argv,
        stop_signal=signal.SIGINT,
        stop_timeout=PACKER_STOP_SECONDS,
        session=True,
        stdout=err,
        stderr=err,
        env={**os.environ, **_env()},
    ) as proc:
        try:
            rc = proc.wait(timeout=timeout)
        except KeyboardInterrupt:
            # in its own session Packer did not see the terminal's Ctrl-C: pass it on
            stop(proc, PACKER_STOP_SECONDS, sig=signal.SIGINT, group=True)
            raise
        except TimeoutExpired as exc:
            raise BuilderError(f"packer build timed out after {timeout:g} s") from exc
    if rc != 0:
        raise BuilderError(
            f"packer build failed (exit {rc}); its output is above",
            hint="re-run with --debug, or set PACKER_LOG=1 for Packer's own log",
        )


def read_packer_manifest(path: Path) -> list[dict[str, Any]]:
    """The builds of Packer's last run from its manifest file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BuilderError(f"{path}: cannot read Packer's manifest: {exc}") from exc
    last = data.get("last_run_uuid")
    return [b for b in data.get("builds", []) if not last or b.get("packer_run_uuid") == last]


def artifacts_from_build(build: Mapping[str, Any]) -> list[dict[str, Any]]:
    """amazon-ebs: one entry per region ("r1:ami-1,r2:ami-2"); qemu: the image files."""
    if build.get("builder_type") == "amazon-ebs":
        out = []
        for part in str(build.get("artifact_id", "")).split(","):
            region, _, ami = part.partition(":")
            if ami:
                out.append({"type": "ami", "region": region, "ami_id": ami})
        return out
    return [{"type": "file", "path": f["name"]} for f in build.get("files", [])]


def _collect(plan: PackerPlan) -> PackerResult:
    builds = read_packer_manifest(plan.manifest_path)
    if not builds:
        raise BuilderError(f"{plan.manifest_path}: Packer recorded no build")
    plan.dist_dir.mkdir(parents=True, exist_ok=True)
    artifacts: list[dict[str, Any]] = []
    for b in builds:
        for art in artifacts_from_build(b):
            if art["type"] == "file":
                src = Path(art["path"])
                if not src.is_absolute():
                    src = plan.run_dir / src
                if src.suffix != ".qcow2":
                    continue
                dest = plan.dist_dir / src.name
                os.replace(src, dest)  # same filesystem: dist/<site>/.packer-run → dist/<site>
                art = {
                    "type": "qcow2",
                    "name": dest.name,
                    "size": dest.stat().st_size,
                    "sha256": sha256_file(dest),
                }
            artifacts.append(art)
    manifest = write_dist_manifest(plan, artifacts, builds)
    return PackerResult(plan, manifest, artifacts)


def write_dist_manifest(
    plan: PackerPlan, artifacts: list[dict[str, Any]], builds: list[dict[str, Any]]
) -> Path:
    """``dist/<site>/manifest.json`` + ``SHA256SUMS`` in the one schema (``builder.dist``)."""
    doc = distfiles.manifest(
        distfiles.tree_record(plan.site_tree),
        plan.target,
        artifacts,
        versions={"packer": ".".join(map(str, packer_version()))},
        details={
            "packer": {
                "command": [a for a in plan.argv if "build_key" not in a],
                "builds": sorted(
                    (
                        {
                            k: b.get(k)
                            for k in ("name", "builder_type", "artifact_id", "custom_data")
                        }
                        for b in builds
                    ),
                    key=lambda b: (str(b["name"]), str(b["builder_type"])),
                ),
            },
        },
    )
    return distfiles.write(plan.dist_dir, doc)


def build_site_image(
    site: str,
    target: str | None = None,
    dry_run: bool = False,
    *,
    profiles_dir: Path | None = None,
    overrides: Sequence[str] = (),
    dist: Path | None = None,
    base_image: Path | None = None,
    force: bool = False,
) -> PackerResult | PackerPlan:
    """Load ``site``, render ``build/<site>`` and build its Packer target (ami or qcow2)."""
    from builder.site.profile import load_profile
    from builder.site.render import render_site

    profile = load_profile(site, profiles_dir, overrides)
    kind = target or profile.spec.target
    if kind not in TARGETS:
        raise UsageError(
            f"{profile.where('target')}: target {kind!r} is not built by Packer "
            f"(choose from {', '.join(TARGETS)})"
        )
    tree = render_site(profile).path
    return build_packer_image(
        tree, kind, dry_run, dist_dir=dist, base_image=base_image, force=force
    )


def result_lines(result: PackerResult | PackerPlan) -> list[str]:
    """What the CLI prints on stdout: the command (dry run), AMI ids, or image paths."""
    if isinstance(result, PackerPlan):
        return [result.command()]  # notes and problems: see dry_run_report
    out = []
    for art in result.artifacts:
        if art["type"] == "ami":
            out.append(f"{art['region']} {art['ami_id']}")
        else:
            out.append(str(result.plan.dist_dir / art["name"]))
    return [*out, str(result.manifest)]
