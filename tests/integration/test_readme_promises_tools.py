"""README promises with no test before issue 18 (finding 10), the integration half: real
validators, make, git, xorriso. The table promise -> test is tests/PROMISES.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.iso_inputs import fixture_overrides
from tests.support.ubuntu_like_iso import build_fixture

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BUILDER = str(Path(sys.executable).parent / "builder")


def builder(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BUILDER, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


# README "builder validate SITE | profile checks + the rendered tree through the real validators"
def test_validate_cli_runs_the_real_validators_and_writes_nothing(workdir: Path) -> None:
    ok = builder("validate", "aws", cwd=workdir)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "aws: valid\n"  # the result on stdout, what ran on stderr
    assert ok.stderr.splitlines()[-1] == (
        "aws: ok (profile-schema, autoinstall-schema, cloud-init-schema, shellcheck, "
        "systemd-analyze, packer-validate)"
    )
    assert not (workdir / "build").exists()  # renders into a temp dir only
    bad = builder("validate", "aws", "--set", "wireguard.mtu=1", cwd=workdir)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: --set: wireguard.mtu: "), bad.stderr
    assert "Traceback" not in bad.stderr and bad.stdout == ""
    assert not (workdir / "build").exists()


# README "`make image` validates first (`builder validate SITE`), then builds"
def test_make_image_validates_before_building() -> None:
    plan = subprocess.run(
        ["make", "-n", "image", "SITE=onprem"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    validate = [i for i, line in enumerate(plan) if " validate onprem" in line]
    image = [i for i, line in enumerate(plan) if " image onprem" in line]
    assert validate and image, plan
    assert validate[-1] < image[0]


# README "Set SOURCE_DATE_EPOCH to fix the build time (default: the builder's last commit time)"
def test_build_time_defaults_to_the_last_commit(workdir: Path) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    commit = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%ct"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    r = builder("render", "aws", cwd=workdir, env=env)
    assert r.returncode == 0, r.stderr
    node = json.loads((workdir / "build/aws/files/etc/nodeforge/node.json").read_text())
    assert node["build_time"] == int(commit) > 0
    r = builder("render", "aws", cwd=workdir, env={**env, "SOURCE_DATE_EPOCH": "1234567890"})
    assert r.returncode == 0, r.stderr
    node = json.loads((workdir / "build/aws/files/etc/nodeforge/node.json").read_text())
    assert node["build_time"] == 1234567890


# README "--base-iso … (still sha256-checked; `--no-verify` skips that)"
def test_image_no_verify_skips_the_base_iso_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = build_fixture()
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1767225600", "XDG_CACHE_HOME": str(tmp_path / "c")}
    wrong = "ab" * 32
    sets = [a for o in fixture_overrides(base, f"iso.base.sha256={wrong}") for a in ("--set", o)]
    checked = builder(
        "image", "onprem", "--allow-demo", *sets, "--base-iso", str(base), cwd=tmp_path, env=env
    )
    assert checked.returncode != 0
    assert f"sha256 mismatch: expected {wrong}" in checked.stderr
    assert not list((tmp_path / "dist").glob("**/*.iso"))
    skipped = builder(
        "image",
        "onprem",
        "--allow-demo",
        *sets,
        "--base-iso",
        str(base),
        "--no-verify",
        cwd=tmp_path,
        env=env,
    )
    assert skipped.returncode == 0, skipped.stderr
    out = Path(skipped.stdout.strip().splitlines()[-1])
    assert out.suffix == ".iso"
    assert (tmp_path / out).is_file()
