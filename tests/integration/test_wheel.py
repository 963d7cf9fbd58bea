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
