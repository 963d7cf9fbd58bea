"""Boot proof for the iso target: QEMU (TCG) boots the REMASTERED stand-in Ubuntu ISO.

The base is the stand-in from tests/support/ubuntu_like_iso.py (Ubuntu's boot layout, a
real Debian kernel, a busybox "installer" that reports what it sees). Four ways, as a
bare-metal node would meet the image: BIOS CD-ROM, UEFI CD-ROM, BIOS USB stick, UEFI USB
stick. Each must show the installer's kernel command line carrying ``autoinstall`` and the
nocloud datasource, and the user-data it reads from the medium must hash to the file we
put there. The unmodified base boots too (control: the harness and fixture are sound and
the remaster is what adds the arguments).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from builder.boottest import qemu
from builder.site.profile import load_profile
from builder.targets.image import build_iso
from tests.support.iso_inputs import fixture_overrides
from tests.support.ubuntu_like_iso import build_fixture

pytestmark = [pytest.mark.boot, pytest.mark.usefixtures("one_guest")]
PROFILES = Path(__file__).resolve().parents[2] / "profiles"

SUCCESS = [r"^FIXTURE-DONE"]
FAILURE = [r"FIXTURE-ERROR.*", r"Kernel panic.*"]
MODES = {
    "bios-cdrom": qemu.VM(firmware="bios"),
    "uefi-cdrom": qemu.VM(firmware="uefi"),
    "bios-usb": qemu.VM(firmware="bios", disk_bus="usb", disk_readonly=True),
    "uefi-usb": qemu.VM(firmware="uefi", machine="q35", disk_bus="usb", disk_readonly=True),
}


def _vm(mode: str, image: Path) -> qemu.VM:
    template = MODES[mode]
    vm = qemu.VM(**{k: getattr(template, k) for k in template.__dataclass_fields__})
    vm.memory_mb = 512
    if mode.endswith("cdrom"):
        vm.cdrom = image
    else:
        vm.disk = image
    return vm


def _report(console: str, key: str) -> str:
    for line in console.splitlines():
        if line.startswith(f"FIXTURE-{key}: "):
            return line.split(": ", 1)[1].strip()
    raise AssertionError(f"no FIXTURE-{key} line on the console")


@pytest.fixture(scope="module")
def base_iso() -> Path:
    return build_fixture()


@pytest.fixture(scope="module")
def remastered(base_iso: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The real pipeline: load profiles/onprem.yaml, render, verify the base, remaster."""
    tmp = tmp_path_factory.mktemp("remaster")
    profile = load_profile("onprem", PROFILES, fixture_overrides(base_iso))
    result = build_iso(profile, dist=tmp / "dist", build_dir=tmp / "build", base_iso=base_iso)
    user_data = (tmp / "build" / "iso" / "nocloud" / "user-data").read_bytes()
    assert user_data.startswith(b"#cloud-config")
    return result.path, hashlib.sha256(user_data).hexdigest()


@pytest.mark.parametrize("mode", list(MODES))
def test_remastered_iso_boots_into_autoinstall(
    mode: str, remastered: tuple[Path, str], tmp_path: Path
) -> None:
    image, want_sha = remastered
    argv = qemu.build_argv(_vm(mode, image), tmp_path)
    result = qemu.boot(argv, tmp_path / "serial.log", success=SUCCESS, failure=FAILURE, timeout=240)
    cmdline = _report(result.console, "CMDLINE").split()
    assert "autoinstall" in cmdline
    assert "ds=nocloud;s=/cdrom/nocloud/" in cmdline
    assert cmdline.index("autoinstall") < cmdline.index("---"), "must precede ---"
    assert _report(result.console, "MEDIUM").endswith("label=NODEFORGE_ONPREM")
    seed = _report(result.console, "SEED").split()
    assert {"user-data", "meta-data"} <= set(seed)
    assert _report(result.console, "USERDATA-SHA256") == want_sha


def test_unmodified_base_boots_without_autoinstall(base_iso: Path, tmp_path: Path) -> None:
    argv = qemu.build_argv(_vm("bios-cdrom", base_iso), tmp_path)
    result = qemu.boot(argv, tmp_path / "serial.log", success=SUCCESS, failure=FAILURE, timeout=240)
    cmdline = _report(result.console, "CMDLINE").split()
    assert "autoinstall" not in cmdline
    assert _report(result.console, "SEED") == "none"
