"""The built wheel ships the product only: no stand-ins, no test harness, no TEST-ONLY unit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What only the tests may use: the stand-in apt repo, the stand-in root/disk builders, the
# guest check program (its unit is marked TEST-ONLY) and anything under tests/.
FORBIDDEN_NAMES = ("standins", "rootfs", "nodedisk", "bootcheck", "ubuntu_like_iso")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # from a clean copy of the tracked files: setuptools' build/ directory in a work tree
    # keeps modules that were since deleted, and would put them into the wheel
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, files):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    # the build records the checkout's commit (setup.py asks git): point the copy at the
    # checkout's git directory, so the wheel names the same commit as the checkout
    git_dir = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--absolute-git-dir"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (src / ".git").write_text(f"gitdir: {git_dir}\n")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(src)],
        check=True,
    )  # fmt: skip
    (whl,) = out.glob("*.whl")
    return whl


def test_wheel_has_no_test_only_code(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert any(n == "builder/node/agent.py" for n in names), names  # the product is there
        offenders = [
            n for n in names
            if n.startswith("tests/") or any(word in n for word in FORBIDDEN_NAMES)
        ]  # fmt: skip
        assert offenders == []
        shipped = [n for n in names if n.startswith("builder/") and not n.endswith((".md", "/"))]
        test_only = [n for n in shipped if b"TEST-ONLY" in z.read(n)]
        assert test_only == []


# --- issue 15 item 2: `pip install .` gives a working `builder`, outside the checkout ---------


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no access to the checkout) with the wheel installed; returns its bin/.

    Dependencies come through pip's ordinary configuration (this machine: local wheel
    directories and indexes first, then PyPI)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=600,
    )
    return venv / "bin"


def _run(bindir: Path, cwd: Path, *args: str, env: dict[str, str] | None = None):
    import os

    full = {k: v for k, v in os.environ.items() if k not in ("BUILDER_PROFILES", "PYTHONPATH")}
    full.update(env or {})
    full["PATH"] = f"{bindir}:{full.get('PATH', '')}"
    return subprocess.run(
        [str(bindir / "builder"), *args],
        cwd=cwd, env=full, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    assert REPO not in tmp_path.parents
    return tmp_path


def test_installed_builder_runs_outside_the_repo(installed: Path, outside: Path) -> None:
    # the installed package is the wheel's, not the checkout's
    where = subprocess.run(
        [str(installed / "python"), "-c", "import builder; print(builder.__file__)"],
        cwd=outside, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert str(REPO) not in where
    r = _run(installed, outside, "profiles")
    assert r.returncode == 0, r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["aws", "onprem"]
    r = _run(installed, outside, "render", "onprem", "-o", "out")
    assert r.returncode == 0, r.stderr
    assert (outside / "out" / "cloud-init" / "user-data").is_file()
    assert (outside / "out" / "scripts" / "provision.sh").is_file()
    r = _run(installed, outside, "validate", "onprem")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "onprem: valid"
    r = _run(installed, outside, "hub", "init", "--site", "onprem", "hubdir")
    assert r.returncode == 0, r.stderr
    assert (outside / "hubdir" / "hub.json").is_file()
    r = _run(installed, outside, "image", "aws", "--allow-demo", "--dry-run")
    # 1 when this machine could not really build the AMI (Debian's Packer 1.6, no AWS)
    assert r.returncode == 0 or "the real build would stop" in r.stderr, r.stderr
    assert r.stdout.startswith("packer build ")


def test_installed_render_matches_the_checkout(installed: Path, outside: Path) -> None:
    """The same inputs give the same tree whether installed or run from the checkout."""
    import json
    import os

    env = {"SOURCE_DATE_EPOCH": "1767225600"}
    r = _run(installed, outside, "render", "aws", "-o", "wheel", env=env)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [sys.executable, "-c", "from builder.cli import main; main()",
         "render", "aws", "--profiles", str(REPO / "profiles"), "-o", "checkout"],
        cwd=outside, capture_output=True, text=True,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    wheel, checkout = (
        json.loads((outside / d / "manifest.json").read_text()) for d in ("wheel", "checkout")
    )
    assert wheel["files"] == checkout["files"]
    assert wheel["input_hash"] == checkout["input_hash"]


def test_profiles_are_found_in_the_documented_order(installed: Path, outside: Path) -> None:
    """--profiles DIR, then $BUILDER_PROFILES, then ./profiles, then the shipped examples."""
    for name in ("flag", "env", "profiles"):
        d = outside / name
        d.mkdir()
        shutil.copy(REPO / "profiles" / "base.yaml", d / "base.yaml")
        shutil.copy(REPO / "profiles" / "aws.yaml", d / f"only-{name}.yaml")
    r = _run(installed, outside, "profiles", "--profiles", "flag", env={"BUILDER_PROFILES": "env"})
    assert r.stdout.split()[:1] == ["only-flag"], r.stderr
    r = _run(installed, outside, "profiles", env={"BUILDER_PROFILES": "env"})
    assert r.stdout.split()[:1] == ["only-env"], r.stderr
    r = _run(installed, outside, "profiles")
    assert r.stdout.split()[:1] == ["only-profiles"], r.stderr
