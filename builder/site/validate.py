"""Check a rendered build tree with the real third-party validators.

- ``cloud-init schema --config-file`` on the first-boot user-data,
- Ubuntu's autoinstall JSON schema (subiquity's, shipped in builder/schema/) on autoinstall.yaml,
- ``shellcheck`` on every provisioning script,
- ``systemd-analyze verify`` on every unit (with the overlay as its root),
- (``packer validate`` on ``packer/`` with the rendered variables is added by builder.targets.)

Each validator returns a list of ``file: message`` problems; ``validate_tree`` runs them all
and raises one ValidationError listing everything.

Speed (issue 17): the checks run at the same time (they are external programs, each in its
own thread), and a check that passed is remembered under ``<cache>/validate/`` by the
content hash of what it checks (``check_key``): the files of the tree it reads
(``Check.inputs``), the files outside the tree it reads (``Check.extra``: a schema, the
Packer templates), the code that runs it, and the validator program's identity (resolved
path, inode, size, mtime, ctime: a package upgrade replaces the file). Only a pass is
remembered: a check that found problems (or failed to run) runs again every time, and a
changed input is a new key. Not in the key: the host's own unit files that
``systemd-analyze verify`` resolves our units against.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from builder import __version__, paths
from builder.errors import ToolMissing, ValidationError
from builder.paths import SCHEMA_DIR
from builder.run import missing_message, run, which

from .common import display_path

log = logging.getLogger("builder.validate")

AUTOINSTALL_SCHEMA = SCHEMA_DIR / "autoinstall.schema.json"
CACHE_FORMAT = 1


@dataclass(frozen=True)
class Check:
    name: str
    tool: str | None  # external program it needs, None for in-process
    func: Callable[[Path], list[str]]
    # what it reads: glob patterns in the tree, and files/dirs outside it (incl. its code)
    inputs: tuple[str, ...] = ("**/*",)
    extra: Callable[[], Iterable[Path]] = lambda: ()


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
    import jsonschema  # imported only when this check runs (not when its pass is cached)

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


def _groups(paths: list[Path], n: int) -> list[list[Path]]:
    """``paths`` in at most ``n`` groups of about the same total size (largest first)."""
    bins: list[tuple[int, list[Path]]] = [(0, []) for _ in range(max(1, min(n, len(paths))))]
    for path in sorted(paths, key=lambda p: -p.stat().st_size):
        i = min(range(len(bins)), key=lambda j: bins[j][0])
        bins[i] = (bins[i][0] + path.stat().st_size, bins[i][1] + [path])
    return [sorted(group) for _, group in bins if group]


def check_shellcheck(tree: Path) -> list[str]:
    """``shellcheck`` every provisioning script: one process per core, each on a share of
    the scripts (shellcheck uses one core), problems in script order."""
    scripts = sorted((tree / "scripts").glob("*.sh"))
    if not scripts:
        return [f"{display_path(tree / 'scripts')}: no provisioning scripts"]
    argv = ["shellcheck", "--format=gcc", "--external-sources", "--source-path=SCRIPTDIR"]
    groups = _groups(scripts, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="shellcheck") as pool:
        procs = list(pool.map(lambda group: run([*argv, *group], check=False), groups))
    lines = [ln for proc in procs for ln in proc.stdout.splitlines() if ln.strip()]
    order = {str(path): i for i, path in enumerate(scripts)}
    # gcc format: "path:line:col: level: message"; a stable sort keeps each file's order
    return sorted(lines, key=lambda ln: order.get(ln.split(":", 1)[0], len(order)))


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
_CODE = Path(__file__)

CHECKS: tuple[Check, ...] = (
    Check(
        "autoinstall-schema",
        None,
        check_autoinstall,
        ("cloud-init/autoinstall.yaml", "iso/nocloud/user-data"),
        lambda: (_CODE, AUTOINSTALL_SCHEMA),
    ),
    Check(
        "cloud-init-schema",
        "cloud-init",
        check_cloud_init,
        ("cloud-init/user-data",),
        lambda: (_CODE,),
    ),
    Check("shellcheck", "shellcheck", check_shellcheck, ("scripts/**/*",), lambda: (_CODE,)),
    Check(
        "systemd-analyze",
        "systemd-analyze",
        check_units,
        ("files/etc/systemd/system/**/*",),
        lambda: (_CODE,),
    ),
)


def _digest_into(h: hashlib._Hash, path: Path, label: str) -> None:
    if path.is_dir():
        for sub in sorted(path.rglob("*")):
            if sub.is_file():
                _digest_into(h, sub, f"{label}/{sub.relative_to(path).as_posix()}")
        return
    if not path.is_file():
        h.update(f"missing\0{label}\0".encode())
        return
    mode = "x" if os.stat(path).st_mode & 0o111 else "-"
    h.update(f"file\0{label}\0{mode}\0".encode())
    h.update(hashlib.sha256(path.read_bytes()).digest())


def check_key(check: Check, tree: Path) -> str:
    """The content hash a pass of ``check`` on ``tree`` is remembered under."""
    h = hashlib.sha256(f"{CACHE_FORMAT}\0{__version__}\0{check.name}\0".encode())
    if check.tool:
        found = which(check.tool)
        real = Path(found).resolve() if found else None
        st = real.stat() if real else None
        ident = [str(real), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns] if st else []
        h.update(f"tool\0{json.dumps(ident)}\0".encode())
    files = sorted({p for pattern in check.inputs for p in tree.glob(pattern) if p.is_file()})
    for p in files:
        _digest_into(h, p, "tree/" + p.relative_to(tree).as_posix())
    for p in check.extra():
        _digest_into(h, p, str(p))
    return h.hexdigest()


def _cache_dir() -> Path:
    return paths.cache_dir() / "validate"


def _run_check(check: Check, tree: Path, cache: bool) -> list[str]:
    key = check_key(check, tree) if cache else ""
    mark = _cache_dir() / f"{check.name}-{key}"
    if cache and mark.is_file():
        log.info("%s: passed before on the same inputs (cached)", check.name)
        return []
    problems = check.func(tree)
    if cache and not problems:  # only a pass is remembered
        try:
            mark.parent.mkdir(parents=True, exist_ok=True)
            tmp = mark.with_name(f".{mark.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"check": check.name, "passed": True}))
            os.replace(tmp, mark)
        except OSError as exc:  # a cache that cannot be written only costs time
            log.debug("cannot remember %s: %s", check.name, exc)
    return problems


def validate_tree(
    tree: Path,
    skip: tuple[str, ...] = (),
    checks: tuple[Check, ...] = CHECKS,
    *,
    cache: bool = True,
) -> list[str]:
    """Run every validator on ``tree`` at the same time; returns the names of the checks
    that ran (in ``checks`` order; a cached pass counts as run).

    Raises ValidationError with every problem; a missing tool is a problem too
    (``skip`` names checks to leave out deliberately). ``cache=False`` runs every check.
    """
    problems: list[str] = []
    # a missing program is not a problem of the tree: say what to install (exit 1)
    missing = [c for c in checks if c.name not in skip and c.tool and which(c.tool) is None]
    if missing:
        raise ToolMissing(
            "\n".join(missing_message(c.tool) for c in missing if c.tool),
            hint="`make deps` installs them; or leave the check out with "
            + " ".join(f"--skip {c.name}" for c in missing),
        )
    todo = [check for check in checks if check.name not in skip]
    with ThreadPoolExecutor(max_workers=max(1, len(todo)), thread_name_prefix="check") as pool:
        futures = [pool.submit(_run_check, check, tree, cache) for check in todo]
        for future in futures:  # in order: the report reads the same every time
            problems += future.result()
    if problems:
        raise ValidationError(problems, hint="the rendered tree failed validation")
    return [check.name for check in todo]


def validate_site_tree(
    render: Callable[[Path], object],
    skip: tuple[str, ...] = (),
    checks: tuple[Check, ...] = CHECKS,
    *,
    cache: bool = True,
) -> list[str]:
    """Render into a throwaway directory and validate it (``builder validate`` writes nothing)."""
    with tempfile.TemporaryDirectory(prefix="nodeforge-validate-") as tmp:
        tree = Path(tmp) / "tree"
        render(tree)
        os.chmod(tmp, 0o755)
        return validate_tree(tree, skip, checks, cache=cache)
