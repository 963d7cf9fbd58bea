"""Benchmark: `builder validate SITE`, before/after, side by side in one run.

Run: `make bench` (every bench) or `.venv/bin/python tests/bench/bench_validate.py [SITE] [RUNS]`.

On one rendered tree of SITE (default onprem), alternating, RUNS rounds (default 5):

- BEFORE: the checks one after another, nothing remembered (the pre-issue-17 validate_tree:
  one shellcheck over every script, the two Packer targets one after the other, ``packer
  version`` asked by each);
- AFTER (1st step), cold: the checks at the same time, but each as BEFORE (the first issue-17
  step);
- AFTER, cold: validate_tree with an empty cache: every check runs, all at the same time,
  shellcheck as one process per core, both Packer targets at once, ``packer version`` once;
- AFTER, nothing changed: validate_tree again: every check's pass is remembered;
- and the whole command, `builder validate SITE` (a new Python process: imports, load,
  render, validate), cold and with nothing changed; with BEFORE_REV=<git rev> in the
  environment also that commit's command with nothing changed (its tree from `git archive`,
  run with the same interpreter and a cache of its own), e.g. BEFORE_REV=11db0db.

``--warm-only``: only the whole command with nothing changed (and BEFORE_REV's), the
ratio to BEFORE_REV's.

Prints medians, the ratio to BEFORE, the CPU time (user+sys, this process and its
children) and the load averages: the machine has 2 cores shared with other work.
Goals: <= 1.0 s cold, <= 0.2 s when nothing changed.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from builder import targets  # noqa: E402
from builder.run import run, which  # noqa: E402
from builder.site import validate  # noqa: E402
from builder.site.profile import load_profile  # noqa: E402
from builder.site.render import render_site  # noqa: E402
from builder.targets import packer  # noqa: E402

WALL: dict[str, list[float]] = {}
CPU: dict[str, list[float]] = {}
BUILDER = str(Path(sys.executable).parent / "builder")


def _cpu() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(key: str, fn: Callable[[], object]) -> None:
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    WALL.setdefault(key, []).append(time.perf_counter() - t0)
    CPU.setdefault(key, []).append(_cpu() - c0)


def old_shellcheck(tree: Path) -> list[str]:
    """The pre-issue-17 shellcheck check: one process over every script."""
    scripts = sorted((tree / "scripts").glob("*.sh"))
    argv = ["shellcheck", "--format=gcc", "--external-sources", "--source-path=SCRIPTDIR"]
    return [ln for ln in run([*argv, *scripts], check=False).stdout.splitlines() if ln.strip()]


def old_packer(tree: Path) -> list[str]:
    """The pre-issue-17 Packer check: one target after the other, each asking the version."""
    for target in packer.TARGETS:
        packer._VERSIONS.clear()
        with tempfile.TemporaryDirectory(prefix="bench-pkr-") as tmp:
            extra: dict[str, str] = {}
            if target == "qcow2":
                (Path(tmp) / "base.img").write_bytes(b"")
                extra = {
                    "qemu_base_image_url": str(Path(tmp) / "base.img"),
                    "qemu_base_image_checksum": "none",
                }
            packer.validate_packer(tree, target, extra_vars=extra, dist_dir=Path(tmp) / "d")
    return []


OLD = {"shellcheck": old_shellcheck, "packer-validate": old_packer}
OLD_CHECKS = tuple(dataclasses.replace(c, func=OLD.get(c.name, c.func)) for c in targets.CHECKS)


def before(tree: Path) -> None:
    """The checks one after another, every time (what validate_tree did before)."""
    problems: list[str] = []
    for check in OLD_CHECKS:
        if check.tool and which(check.tool) is None:
            raise SystemExit(f"{check.tool} missing")
        problems += check.func(tree)
    assert not problems, problems


def main(argv: list[str]) -> int:
    warm_only = "--warm-only" in argv  # only `builder validate` with nothing changed
    argv = [a for a in argv if a != "--warm-only"]
    site = argv[0] if argv else "onprem"
    runs = int(argv[1]) if len(argv) > 1 else 5
    os.chdir(REPO)
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1767225600")
    # as installed (a wheel is byte-compiled): imports read .pyc files, they do not compile
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-validate.") as tmp:
        t = Path(tmp)
        cache = t / "cache"
        os.environ["BUILDER_CACHE_DIR"] = str(cache)
        tree = render_site(load_profile(site), t / "tree").path
        cmd = [BUILDER, "validate", site]
        rev = os.environ.get("BEFORE_REV")
        if rev:  # that commit's code, beside ours
            old = t / "before-src"
            old.mkdir()
            tar = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True)
            subprocess.run(["tar", "-x", "-C", old], input=tar.stdout, check=True)
            old_env = {**os.environ, "PYTHONPATH": str(old), "BUILDER_CACHE_DIR": str(t / "c-old")}
            old_cmd = [sys.executable, "-c", "from builder.cli import main; main()", *cmd[1:]]
            subprocess.run(old_cmd, cwd=old, env=old_env, check=True, capture_output=True)

        def old_unchanged() -> None:
            timed(f"command {rev}, nothing chg.",
                  lambda: subprocess.run(old_cmd, cwd=old, env=old_env, check=True,
                                         capture_output=True))  # fmt: skip

        if warm_only:
            subprocess.run(cmd, check=True, capture_output=True)  # fill the cache
        for _ in range(runs):
            if warm_only:
                timed("command, nothing changed",
                      lambda: subprocess.run(cmd, check=True, capture_output=True))  # fmt: skip
                if rev:
                    old_unchanged()
                continue
            timed("before (one after another)", lambda: before(tree))
            shutil.rmtree(cache, ignore_errors=True)
            timed("after (1st step), cold",
                  lambda: validate.validate_tree(tree, checks=OLD_CHECKS))  # fmt: skip
            shutil.rmtree(cache, ignore_errors=True)
            packer._VERSIONS.clear()
            timed("after, cold", lambda: validate.validate_tree(tree, checks=targets.CHECKS))
            timed(
                "after, nothing changed",
                lambda: validate.validate_tree(tree, checks=targets.CHECKS),
            )
            shutil.rmtree(cache, ignore_errors=True)
            timed("command, cold", lambda: subprocess.run(cmd, check=True, capture_output=True))
            timed("command, nothing changed",
                  lambda: subprocess.run(cmd, check=True, capture_output=True))  # fmt: skip
            if rev:
                old_unchanged()
    load1 = os.getloadavg()
    ref = "before (one after another)"
    if warm_only:
        ref = f"command {rev}, nothing chg." if rev else "command, nothing changed"
    ref_w = statistics.median(WALL[ref])
    ref_c = statistics.median(CPU[ref])
    print(f"site {site}: median of {runs} rounds; 2-core machine shared with other work: load "
          f"average {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f} at start, "
          f"{load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} at the end")  # fmt: skip
    print(f"{'':28}{'wall s':>8}{'x before':>9}{'CPU s':>8}{'x before':>9}   runs (CPU s)")
    for key in WALL:
        w, c = statistics.median(WALL[key]), statistics.median(CPU[key])
        runs_txt = " ".join(f"{x:.3f}" for x in CPU[key])
        print(f"{key:28}{w:8.2f}{w / ref_w:9.2f}{c:8.3f}{c / ref_c:9.2f}   {runs_txt}")
    print(f"(before: CPU {ref_c:.2f} s) goals: <= 1.0 s cold, <= 0.2 s when nothing changed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
