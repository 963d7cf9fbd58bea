"""The QEMU runner with real QEMU: success markers, failure markers, early exit, timeout.

Guests: the stand-in fixture's Debian kernel and busybox initrd booted directly
(``-kernel/-initrd``), or the kernel alone, which panics for want of a root fs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.boottest import qemu
from tests.support.ubuntu_like_iso import _initrd, _kernel, build_fixture, cache_root

pytestmark = [pytest.mark.boot, pytest.mark.usefixtures("one_guest")]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    build_fixture()  # makes sure the kernel cache exists
    kdir = _kernel(cache_root() / "kernel")
    initrd = tmp_path_factory.mktemp("k") / "initrd"
    initrd.write_bytes(_initrd(kdir))
    return kdir / "vmlinuz", initrd


def _running(log: Path) -> bool:
    """Is a QEMU whose argv names ``log`` still alive?"""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(log).encode() in (proc / "cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


def test_returns_on_success_markers_and_stops_qemu(
    kernel: tuple[Path, Path], tmp_path: Path
) -> None:
    vmlinuz, initrd = kernel
    vm = qemu.VM(kernel=vmlinuz, initrd=initrd, append="console=ttyS0 nf.marker=42", memory_mb=512)
    log = tmp_path / "serial.log"
    res = qemu.boot(
        qemu.build_argv(vm, tmp_path),
        log,
        success=[r"^FIXTURE-START", r"FIXTURE-CMDLINE: .*nf\.marker=(\d+)"],
        timeout=120,
    )
    assert res.matches[1].group(1) == "42"
    assert "FIXTURE-CMDLINE" in log.read_text(errors="replace")
    assert not _running(log)


def test_failure_marker_fails_fast_with_console_tail(
    kernel: tuple[Path, Path], tmp_path: Path
) -> None:
    vmlinuz, _ = kernel
    vm = qemu.VM(kernel=vmlinuz, append="console=ttyS0 root=/dev/nowhere panic=0", memory_mb=512)
    log = tmp_path / "serial.log"
    with pytest.raises(qemu.BootFailed, match="Kernel panic") as exc:
        qemu.boot(qemu.build_argv(vm, tmp_path), log, success=["never"], timeout=120)
    assert "VFS" in exc.value.tail or "root" in exc.value.tail
    assert not _running(log)


def test_timeout_kills_qemu(
    kernel: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vmlinuz, _ = kernel
    # panic=0: the guest hangs after its panic; no failure patterns, so only the timeout ends it
    vm = qemu.VM(kernel=vmlinuz, append="console=ttyS0 root=/dev/nowhere panic=0", memory_mb=512)
    log = tmp_path / "serial.log"
    with pytest.raises(qemu.BootFailed, match=r"timed out after 8 s waiting for \['never'\]"):
        qemu.boot(qemu.build_argv(vm, tmp_path), log, success=["never"], failure=[], timeout=8)
    assert not _running(log)
    # the one progress reporter shows the wait (plain lines off a terminal, on stderr)
    assert "boot serial" in capsys.readouterr().err


def test_qemu_exiting_early_is_reported(tmp_path: Path) -> None:
    argv = qemu.build_argv(qemu.VM(disk=tmp_path / "missing.img"), tmp_path)
    with pytest.raises(qemu.BootFailed, match=r"QEMU exited \(code 1\)") as exc:
        qemu.boot(argv, tmp_path / "serial.log", success=["x"], timeout=30)
    assert "missing.img" in exc.value.message
