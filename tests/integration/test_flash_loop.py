"""`builder flash` against real block devices: loop devices over files in tmp_path.

Loop devices are real block devices (sysfs entry, O_DIRECT, O_EXCL, page cache), so this
exercises the same paths as a USB stick, except for the USB/removable checks, which a
loop device fails by design (they need --force here; the fixture trees in tests/unit cover
them). Every loop device is detached in a finally block.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import cli, main
from builder.errors import BuilderError, CommandFailed, ToolMissing
from builder.flash import blockio
from builder.flash import flasher as flash
from builder.run import run, which

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _need_loop() -> None:
    if os.geteuid() != 0:
        pytest.skip("loop devices need root (losetup)")
    if which("losetup") is None:
        pytest.skip("losetup (util-linux) is not installed")
    if not Path("/dev/loop-control").exists():
        pytest.skip("no /dev/loop-control: this kernel/container has no loop devices")


@contextlib.contextmanager
def loop_device(backing: Path, size: int) -> Iterator[Path]:
    """Attach ``backing`` (created with ``size`` bytes of zeros) as a loop device."""
    _need_loop()
    with open(backing, "wb") as fh:
        fh.truncate(size)
    dev = Path(run(["losetup", "--find", "--show", backing]).stdout.strip())
    try:
        yield dev
    finally:
        run(["losetup", "--detach", dev], check=False)


def make_image(path: Path, size: int) -> Path:
    data = bytearray()
    block = b"nodeforge"
    while len(data) < size:
        block = hashlib.sha256(block).digest()
        data += block * 128
    path.write_bytes(bytes(data[:size]))
    return path


def quiet(label: str, total: int) -> flash.NoProgress:
    return flash.NoProgress()


def exit_code(argv: list[str]) -> int:
    """Run the real entry point (error mapping included); 0 when it returns normally."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:  # main() points logging at this test's captured stderr: undo that
        root.handlers[:] = handlers
        root.setLevel(level)
    return 0


def corrupt_one_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x40]))
        fh.flush()
        os.fsync(fh.fileno())


def test_flash_a_loop_device_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = make_image(tmp_path / "node.iso", 8 * MiB + 2048)  # ISO-sized: 2 KiB multiple
    backing = tmp_path / "stick.raw"
    with loop_device(backing, 16 * MiB) as dev:
        assert exit_code(["flash", "--yes", str(image), str(dev)]) == 3  # refused for safety
        err = capsys.readouterr().err
        assert f"refusing to flash {dev}" in err
        assert "not removable and not on USB (transport: loop)" in err
        assert backing.read_bytes() == bytes(16 * MiB)  # nothing written

        assert exit_code(["flash", "--yes", "--force", str(image), str(dev)]) == 0
        out, err = capsys.readouterr()
        assert out.strip() == str(dev)
        assert "verified: sha256" in err
        data = backing.read_bytes()
        assert data[: image.stat().st_size] == image.read_bytes()
        assert data[image.stat().st_size :] == bytes(len(data) - image.stat().st_size)


def test_loop_write_uses_o_direct_and_exclusive_open(tmp_path: Path) -> None:
    image = make_image(tmp_path / "node.iso", 6 * MiB + 512)
    with loop_device(tmp_path / "stick.raw", 8 * MiB) as dev:
        res = flash.flash(image, str(dev), yes=True, force=True, progress_factory=quiet)
        assert res.direct and res.verified
        assert (tmp_path / "stick.raw").read_bytes()[: 6 * MiB + 512] == image.read_bytes()


def test_no_terminal_and_no_yes_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path / "node.iso", MiB)
    with loop_device(tmp_path / "stick.raw", 4 * MiB) as dev:
        with open(os.devnull) as devnull:  # stdin is not a terminal
            monkeypatch.setattr(sys, "stdin", devnull)
            assert exit_code(["flash", "--force", str(image), str(dev)]) == 2
        assert "without confirmation" in capsys.readouterr().err
        assert (tmp_path / "stick.raw").read_bytes() == bytes(4 * MiB)


@pytest.mark.parametrize("o_direct_read", [True, False], ids=["o-direct", "fadvise"])
def test_verify_reads_the_device_not_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, o_direct_read: bool
) -> None:
    """Buffered write (the device's page cache holds the image), then one byte of the
    medium changes behind the cache's back: read-back must see it."""
    image = make_image(tmp_path / "node.iso", 4 * MiB + 2048)
    backing = tmp_path / "stick.raw"
    with loop_device(backing, 8 * MiB) as dev:
        res = flash.flash(
            image,
            str(dev),
            yes=True,
            force=True,
            verify=False,
            direct=False,
            progress_factory=quiet,
        )
        assert not res.direct
        if not o_direct_read:
            monkeypatch.setattr(blockio, "O_DIRECT", 0)
        assert flash.verify_target(image, dev, progress_factory=quiet)  # control: passes
        corrupt_one_byte(backing, 3 * MiB + 77)
        with pytest.raises(flash.VerifyFailed, match="verification failed"):
            flash.verify_target(image, dev, progress_factory=quiet)


def test_cli_verify_only_on_a_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = make_image(tmp_path / "node.iso", 2 * MiB)
    backing = tmp_path / "stick.raw"
    with loop_device(backing, 4 * MiB) as dev:
        flash.flash(image, str(dev), yes=True, force=True, progress_factory=quiet)
        corrupt_one_byte(backing, 5)
        assert exit_code(["flash", "--verify-only", str(image), str(dev)]) == 1
        assert "verification failed" in capsys.readouterr().err


def test_device_smaller_than_image_refused_even_with_force(tmp_path: Path) -> None:
    image = make_image(tmp_path / "node.iso", 6 * MiB)
    with loop_device(tmp_path / "small.raw", 4 * MiB) as dev:
        with pytest.raises(BuilderError, match="smaller than the image") as exc:
            flash.flash(image, str(dev), yes=True, force=True, progress_factory=quiet)
        assert "--force cannot override" in (exc.value.hint or "")
        assert (tmp_path / "small.raw").read_bytes() == bytes(4 * MiB)


def test_mounted_device_refused_and_kernel_says_busy_under_force(tmp_path: Path) -> None:
    image = make_image(tmp_path / "node.iso", MiB)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with loop_device(tmp_path / "fs.raw", 32 * MiB) as dev:
        try:
            run(["mkfs.ext4", "-q", "-F", dev])
        except ToolMissing:
            pytest.skip("mkfs.ext4 (e2fsprogs) is not installed")
        try:
            run(["mount", dev, mnt])
        except CommandFailed as exc:
            pytest.skip(f"cannot mount ext4 here: {exc.message}")
        try:
            with pytest.raises(BuilderError, match=f"has mounted filesystems: {mnt}"):
                flash.flash(image, str(dev), yes=True, progress_factory=quiet)
            # --force overrides our check, and then the kernel's O_EXCL still refuses
            with pytest.raises(BuilderError, match="device is busy"):
                flash.flash(image, str(dev), yes=True, force=True, progress_factory=quiet)
            assert (mnt / "lost+found").is_dir()  # the filesystem is intact
        finally:
            run(["umount", mnt], check=False)


def test_ctrl_c_mid_write_says_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path / "node.iso", 24 * MiB)
    updates = {"n": 0}

    class SigintOnSecondBlock:
        def update(self, n: int) -> None:
            updates["n"] += 1
            if updates["n"] == 2:
                os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, mid-write

        def close(self) -> None:
            pass

    monkeypatch.setattr(flash, "stderr_progress", lambda label, total: SigintOnSecondBlock())
    with loop_device(tmp_path / "stick.raw", 32 * MiB) as dev:
        assert exit_code(["flash", "--yes", "--force", str(image), str(dev)]) == 130
        err = capsys.readouterr().err
        assert f"{dev} is now incomplete and will not boot" in err
        assert "after 8.0 MiB of 24.0 MiB" in err
        assert updates["n"] == 2  # stopped: no further blocks reported
        written = (tmp_path / "stick.raw").read_bytes()
        data = image.read_bytes()
        assert written[: 8 * MiB] == data[: 8 * MiB]
        # the writes already in flight when Ctrl-C came may land (blockio.WRITERS of them,
        # whole blocks); nothing after them is started
        block = blockio.BLOCK_SIZE
        in_flight = 8 * MiB + blockio.WRITERS * block
        for off in range(8 * MiB, in_flight, block):
            assert written[off : off + block] in (data[off : off + block], bytes(block)), off
        assert written[in_flight:] == bytes(32 * MiB - in_flight)


def test_devices_lists_the_loop_with_its_backing_file(tmp_path: Path) -> None:
    with loop_device(tmp_path / "stick.raw", 4 * MiB) as dev:
        res = CliRunner().invoke(cli, ["devices", "--all", "--json"])
        assert res.exit_code == 0, res.output
        entry = next(d for d in json.loads(res.output) if d["path"] == str(dev))
        assert entry["backing_file"] == str(tmp_path / "stick.raw")
        assert entry["size"] == 4 * MiB
        assert entry["transport"] == "loop"
        assert [p["code"] for p in entry["problems"]] == ["not-removable"]
        root_disks = [d for d in json.loads(res.output) if d["holds_root"]]
        assert root_disks and all(not d["safe"] for d in root_disks)
