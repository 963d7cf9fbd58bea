"""shellcheck on every provisioning script, on the rendered copies, and on the boot-time
GPU check that install-nvidia.sh writes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from builder.run import run

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "packer" / "scripts"
SHELLCHECK = shutil.which("shellcheck") or str(REPO / ".venv/bin/shellcheck")


@pytest.fixture(scope="module", autouse=True)
def _need_shellcheck():
    if not Path(SHELLCHECK).exists():
        pytest.skip("shellcheck not installed (make deps)")


def shellcheck(*paths: Path, cwd: Path | None = None) -> None:
    r = run([SHELLCHECK, "-x", "--severity=info", *paths], check=False, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shipped_scripts_are_clean():
    shellcheck(*sorted(SCRIPTS.glob("*.sh")), cwd=Path("/"))


def test_embedded_gpu_check_is_clean(tmp_path):
    text = (SCRIPTS / "install-nvidia.sh").read_text()
    m = re.search(r"<<'SH'\n(.*?)\nSH\n", text, re.S)
    assert m, "gpu-check heredoc not found"
    script = tmp_path / "gpu-check"
    script.write_text(m.group(1) + "\n")
    shellcheck(script)


def test_rendered_copies_are_clean(tmp_path):
    from builder.site.profile import load_profile
    from builder.site.render import render_site

    tree = render_site(load_profile("onprem", REPO / "profiles"), tmp_path / "onprem").path
    shellcheck(*sorted((tree / "scripts").glob("*.sh")))
    assert (tree / "scripts/provision.sh").read_bytes() == (SCRIPTS / "provision.sh").read_bytes()
