"""Check a rendered build tree with the real third-party validators.

- ``cloud-init schema --config-file`` on the first-boot user-data,
- Ubuntu's autoinstall JSON schema (subiquity's, shipped in builder/schema/) on autoinstall.yaml,
- ``shellcheck`` on every provisioning script,
- ``systemd-analyze verify`` on every unit (with the overlay as its root),
- (``packer validate`` on ``packer/`` with the rendered variables is added by builder.targets.)

Each validator returns a list of ``file: message`` problems; ``validate_tree`` runs them all
and raises one ValidationError listing everything.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from builder.errors import ToolMissing, ValidationError
from builder.paths import SCHEMA_DIR
from builder.run import missing_message, run, which

from .common import display_path

AUTOINSTALL_SCHEMA = SCHEMA_DIR / "autoinstall.schema.json"


@dataclass(frozen=True)
class Check:
    name: str
    tool: str | None  # external program it needs, None for in-process
    func: Callable[[Path], list[str]]


def check_cloud_init(tree: Path) -> list[str]:
    path = tree / "cloud-init" / "user-data"
    proc = run(["cloud-init", "schema", "--config-file", path], check=False)
    out = (proc.stdout + proc.stderr).strip()
    problems = []
    for line in out.splitlines():
        # "Cloud config schema errors: a.b: msg, c: msg" / "... deprecations: …"
        head, sep, rest = line.partition(":")
        if sep and ("schema errors" in head or "deprecations" in head) and rest.strip():
            problems.append(f"{display_path(path)}: cloud-init {head.split()[-1]}: {rest.strip()}")
    if proc.returncode != 0 and not problems:
        problems.append(f"{display_path(path)}: cloud-init schema failed: {out[-500:]}")
    return problems


def check_autoinstall(tree: Path) -> list[str]:
    path = tree / "cloud-init" / "autoinstall.yaml"
    shown = display_path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return [f"{shown}: not YAML: {exc}"]
    schema = json.loads(AUTOINSTALL_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    problems = []
    for err in validator.iter_errors(data):
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        problems.append(f"{shown}: {where}: {err.message}")
    # the published schema allows any top-level key; a typo there would be silently ignored
    known = set(schema.get("properties", {}))
    if isinstance(data, dict):
        problems += [f"{shown}: {key}: not an autoinstall key" for key in data if key not in known]
    # the ISO's nocloud user-data wraps the same document
    wrapped = tree / "iso" / "nocloud" / "user-data"
    if wrapped.exists():
        doc = yaml.safe_load(wrapped.read_text())
        if not isinstance(doc, dict) or doc.get("autoinstall") != data:
            problems.append(f"{display_path(wrapped)}: does not carry autoinstall.yaml unchanged")
    return problems


def check_shellcheck(tree: Path) -> list[str]:
    scripts = sorted((tree / "scripts").glob("*.sh"))
    if not scripts:
        return [f"{display_path(tree / 'scripts')}: no provisioning scripts"]
    proc = run(
        ["shellcheck", "--format=gcc", "--external-sources", "--source-path=SCRIPTDIR", *scripts],
        check=False,
    )
    return [ln for ln in proc.stdout.splitlines() if ln.strip()]


def check_units(tree: Path) -> list[str]:
    """``systemd-analyze verify`` each unit of the overlay.

    The overlay's unit directory is put first on SYSTEMD_UNIT_PATH, the host's units
    supply the targets ours order against. Units only a node has (kubelet, cloud-init,
    crio) may be missing on this host and are not problems.
    """
    unit_dir = tree / "files" / "etc" / "systemd" / "system"
    problems: list[str] = []
    for unit in sorted(unit_dir.glob("*.service")):
        proc = run(
            ["systemd-analyze", "verify", "--man=no", unit],
            check=False,
            env={"SYSTEMD_UNIT_PATH": f"{unit_dir}:"},
        )
        out = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        out = [
            ln
            for ln in out
            if not re.search(
                r"(kubelet|cloud-final|cloud-init|crio|wg-quick)[^ ]*\.(service|target)", ln
            )
        ]
        if out or proc.returncode != 0:
            problems += [f"{display_path(unit)}: {ln}" for ln in out] or [
                f"{display_path(unit)}: systemd-analyze verify failed (exit {proc.returncode})"
            ]
    return problems


# The checks of the node files this layer renders. Target templates (Packer) are checked by
# the targets layer, which adds its checks to these (builder.targets.CHECKS).
CHECKS: tuple[Check, ...] = (
    Check("autoinstall-schema", None, check_autoinstall),
    Check("cloud-init-schema", "cloud-init", check_cloud_init),
    Check("shellcheck", "shellcheck", check_shellcheck),
    Check("systemd-analyze", "systemd-analyze", check_units),
)


def validate_tree(
    tree: Path, skip: tuple[str, ...] = (), checks: tuple[Check, ...] = CHECKS
) -> list[str]:
    """Run every validator on ``tree``; returns the names of the checks that ran.

    Raises ValidationError with every problem; a missing tool is a problem too
    (``skip`` names checks to leave out deliberately).
    """
    problems: list[str] = []
    ran = []
    # a missing program is not a problem of the tree: say what to install (exit 1)
    missing = [c for c in checks if c.name not in skip and c.tool and which(c.tool) is None]
    if missing:
        raise ToolMissing(
            "\n".join(missing_message(c.tool) for c in missing if c.tool),
            hint="`make deps` installs them; or leave the check out with "
            + " ".join(f"--skip {c.name}" for c in missing),
        )
    for check in checks:
        if check.name in skip:
            continue
        problems += check.func(tree)
        ran.append(check.name)
    if problems:
        raise ValidationError(problems, hint="the rendered tree failed validation")
    return ran


def validate_site_tree(
    render: Callable[[Path], object],
    skip: tuple[str, ...] = (),
    checks: tuple[Check, ...] = CHECKS,
) -> list[str]:
    """Render into a throwaway directory and validate it (``builder validate`` writes nothing)."""
    with tempfile.TemporaryDirectory(prefix="nodeforge-validate-") as tmp:
        tree = Path(tmp) / "tree"
        render(tree)
        os.chmod(tmp, 0o755)
        return validate_tree(tree, skip, checks)
