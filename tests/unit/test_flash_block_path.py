"""builder.flash.flasher._flash_block in the unit lane (mutation survivors of issue 18:
74 + 6 "no tests" mutants in _flash_block and _Counted, whose only test was the root-only
loop-device test tests/integration/test_flash_loop.py).

A regular file stands in for the device: ``open_write`` opens it exactly as it opens a
block device (O_WRONLY|O_EXCL, no O_CREAT; Linux ignores O_EXCL without O_CREAT on a
regular file), and writing, the Ctrl-C message and the read-back are the same code. The
expected digests come from hashlib, the expected sizes are literals.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from builder.errors import BuilderError
from builder.flash import flasher
from builder.flash.blockdev import SysView
from builder.flash.blockio import VerifyFailed
from builder.flash.flasher import FlashInterrupted, Target, _Counted, _flash_block

KiB = 1024
MiB = 1 << 20


class Recorder:
    def __init__(self, label: str, total: int, log: list, stop_after: int | None = None):
        self.label, self.total, self.log = label, total, log
        self.stop_after = stop_after
        self.seen = 0
        self.closed = False
        log.append(self)

    def update(self, n: int) -> None:
        self.seen += n
        if self.stop_after is not None and self.seen > self.stop_after:
            raise KeyboardInterrupt

    def close(self) -> None:
        self.closed = True


def takes_o_direct(path: Path) -> bool:
    """Whether the filesystem under ``path`` accepts O_DIRECT (tmpfs does not; ext4 does)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_DIRECT))
    except OSError as exc:
        assert exc.errno == errno.EINVAL
        return False
    return True


@pytest.fixture
def image(tmp_path) -> Path:
    p = tmp_path / "nodeforge.iso"
    p.write_bytes(bytes(range(256)) * (3 * MiB // 256) + b"tail" * 1000)  # not block aligned
    return p


@pytest.fixture
def device(tmp_path) -> Path:
    p = tmp_path / "sdz"
    p.write_bytes(b"\xee" * (4 * MiB))  # the "stick": bigger than the image, old contents
    return p


def test_writes_verifies_and_reports(image, device):
    log: list[Recorder] = []
    res = _flash_block(
        image,
        Target(device, "block"),
        image.stat().st_size,
        True,
        lambda label, total: Recorder(label, total, log),
        64 * KiB,
        True,
    )
    data = image.read_bytes()
    want = hashlib.sha256(data).hexdigest()
    assert device.read_bytes()[: len(data)] == data
    assert device.read_bytes()[len(data) :] == b"\xee" * (4 * MiB - len(data))  # rest untouched
    assert (res.image, res.target, res.bytes, res.sha256, res.verified) == (
        image,
        device,
        3 * MiB + 4000,
        want,
        True,
    )
    assert res.seconds >= 0
    assert res.direct is takes_o_direct(device)  # asked for O_DIRECT: used where it works
    # one display for writing, one for reading back; both full, both closed
    assert [(r.label, r.total) for r in log][0] == ("writing", 3 * MiB + 4000)
    assert len(log) == 2 and log[0].seen == 3 * MiB + 4000
    assert all(r.closed for r in log)
    # written and read back in the block size given (64 KiB), never in the 4 MiB default
    sizes: list[Sizes] = []
    _flash_block(
        image,
        Target(device, "block"),
        image.stat().st_size,
        True,
        lambda label, total: Sizes(label, total, sizes),
        64 * KiB,
        True,
    )
    assert [r.label for r in sizes] == ["writing", "verifying"]
    assert all(max(r.sizes) == 64 * KiB for r in sizes)


def test_without_verify_there_is_no_read_back_and_no_digest(image, device):
    log: list[Recorder] = []
    res = _flash_block(
        image,
        Target(device, "block"),
        image.stat().st_size,
        False,
        lambda label, total: Recorder(label, total, log),
        64 * KiB,
        False,
    )
    assert res.sha256 is None and res.verified is False and res.direct is False
    assert [r.label for r in log] == ["writing"] and log[0].closed
    assert device.read_bytes()[: image.stat().st_size] == image.read_bytes()


def test_ctrl_c_while_writing_says_how_far_and_closes(image, device, monkeypatch):
    log: list[Recorder] = []
    closed: list[int] = []
    real_close = os.close
    monkeypatch.setattr(flasher.os, "close", lambda fd: (closed.append(fd), real_close(fd)))
    with pytest.raises(FlashInterrupted) as exc:
        _flash_block(
            image,
            Target(device, "block"),
            image.stat().st_size,
            True,
            lambda label, total: Recorder(label, total, log, stop_after=MiB),
            256 * KiB,
            False,
        )
    done = log[0].seen
    assert MiB < done <= MiB + 256 * KiB  # stopped at the first block past 1 MiB
    size = f"{done / MiB:.1f} MiB"
    assert exc.value.message == (
        f"interrupted after {size} of 3.0 MiB: {device} is now incomplete and will not boot"
    )
    assert exc.value.hint == "run the same `builder flash` command again to write it completely"
    assert log[0].closed and len(closed) == 1  # the device was closed, no read-back started
    assert len(log) == 1


def test_busy_and_unopenable_devices_are_clear_errors(image, tmp_path, monkeypatch):
    def busy(path, *, direct, exclusive):
        assert exclusive is True  # O_EXCL always, even under --force
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))

    monkeypatch.setattr(flasher, "open_write", busy)
    dev = tmp_path / "sdz"
    with pytest.raises(BuilderError) as exc:
        _flash_block(image, Target(dev, "block"), 10, True, Recorder, 4096, True)
    assert exc.value.message == (f"{dev}: device is busy (the kernel says it is mounted or in use)")
    assert exc.value.hint == "unmount its filesystems (udisksctl unmount -b …) and try again"
    monkeypatch.undo()
    missing = tmp_path / "sdy"  # never created: open_write has no O_CREAT
    with pytest.raises(BuilderError) as exc:
        _flash_block(image, Target(missing, "block"), 10, True, Recorder, 4096, True)
    assert exc.value.message == f"{missing}: cannot open for writing: No such file or directory"
    assert not missing.exists()


def test_a_device_that_reads_back_wrong_fails_verification(image, device, monkeypatch):
    real = flasher.write_image

    def write_then_corrupt(*a, **k):
        res = real(*a, **k)
        with open(device, "r+b") as fh:  # a stick that lies about what it stored
            fh.seek(MiB)
            fh.write(b"\xff")  # the image has 0x00 there
        return res

    monkeypatch.setattr(flasher, "write_image", write_then_corrupt)
    with pytest.raises(VerifyFailed):
        _flash_block(
            image,
            Target(device, "block"),
            image.stat().st_size,
            True,
            lambda label, total: Recorder(label, total, []),
            64 * KiB,
            False,
        )


def test_counted_counts_and_passes_through():
    log: list[Recorder] = []
    inner = Recorder("x", 10, log)
    c = _Counted(inner)
    assert c.done == 0
    c.update(3)
    c.update(4)
    assert c.done == 7 and inner.seen == 7 and not inner.closed
    c.close()
    assert inner.closed


def test_verify_target_names_the_target_and_hashes_the_image_first(image, device):
    log: list[Recorder] = []
    device.write_bytes(image.read_bytes())
    got = flasher.verify_target(
        image, device, progress_factory=lambda label, total: Recorder(label, total, log)
    )
    assert got == hashlib.sha256(image.read_bytes()).hexdigest()
    assert [(r.label, r.total, r.seen, r.closed) for r in log] == [
        ("hashing", 3 * MiB + 4000, 3 * MiB + 4000, True),
        ("verifying", 3 * MiB + 4000, 3 * MiB + 4000, True),
    ]
    with open(device, "r+b") as fh:
        fh.write(b"X")  # the image starts with 0x00
    bad = hashlib.sha256(device.read_bytes()[: 3 * MiB + 4000]).hexdigest()
    with pytest.raises(VerifyFailed) as exc:
        flasher.verify_target(
            image, device, progress_factory=lambda label, total: Recorder(label, total, [])
        )
    assert exc.value.message == (
        f"{device}: verification failed: sha256 of the {3 * MiB + 4000} bytes read back is "
        f"{bad}, the image's is {got}"
    )
    assert exc.value.hint == (
        "the write did not stick: try another USB port or stick, then flash again"
    )
    with pytest.raises(VerifyFailed) as exc:  # a name given is what the message calls it
        flasher.verify_target(
            image,
            device,
            expected=got,
            name="the stick",
            progress_factory=lambda label, total: Recorder(label, total, []),
        )
    assert exc.value.message.startswith("the stick: verification failed: ")


class Sizes(Recorder):
    """A Recorder that keeps every update's size."""

    def update(self, n: int) -> None:
        self.sizes = [*getattr(self, "sizes", []), n]
        super().update(n)


def test_a_file_target_is_written_whole_in_blocks_and_verified(image, tmp_path):
    out = tmp_path / "stick.img"
    log: list[Recorder] = []
    res = flasher.flash(
        image,
        str(out),
        yes=True,
        progress_factory=lambda label, total: Sizes(label, total, log),
        block_size=256 * KiB,
    )
    length = 3 * MiB + 4000
    assert out.read_bytes() == image.read_bytes()
    assert (res.image, res.target, res.bytes, res.verified) == (image, out, length, True)
    assert res.sha256 == hashlib.sha256(image.read_bytes()).hexdigest()
    # the digest from writing is reused: no separate "hashing" pass; both in 256 KiB blocks
    assert [(r.label, r.total, r.seen, r.closed) for r in log] == [
        ("writing", length, length, True),
        ("verifying", length, length, True),
    ]
    assert all(max(r.sizes) == 256 * KiB for r in log)


def test_a_file_target_that_reads_back_wrong_is_named_and_left_absent(image, tmp_path, monkeypatch):
    real = flasher.write_image

    def write_then_corrupt(src, fd, **k):
        res = real(src, fd, **k)
        os.pwrite(fd, b"\xff", MiB)  # the image has 0x00 there
        return res

    monkeypatch.setattr(flasher, "write_image", write_then_corrupt)
    out = tmp_path / "stick.img"
    with pytest.raises(VerifyFailed) as exc:
        flasher.flash(
            image,
            str(out),
            yes=True,
            direct=False,
            progress_factory=lambda label, total: Recorder(label, total, []),
        )
    assert exc.value.message.startswith(f"{out}: verification failed: sha256 of the ")
    assert not out.exists() and os.listdir(tmp_path) == ["nodeforge.iso"]


@pytest.mark.parametrize("size", [0, -4096, 1000, 4096 + 512])
def test_block_sizes_must_be_positive_multiples_of_4096(image, tmp_path, size):
    with pytest.raises(flasher.UsageError) as exc:
        flasher.flash(image, str(tmp_path / "x.img"), yes=True, block_size=size)
    assert exc.value.message == f"block size {size} is not a positive multiple of 4096"


FIXTURES = Path(__file__).with_name("fixtures") / "blockdev"


def test_a_file_target_is_written_with_a_fixture_device_view(image, tmp_path):
    """Only block devices need this machine's view; a file target never does."""
    root = FIXTURES / sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())[0]
    view = SysView(root / "sys", root / "mountinfo", root / "swaps")
    assert not view.is_host
    out = tmp_path / "stick.img"
    res = flasher.flash(image, str(out), yes=True, view=view, progress_factory=quiet)
    assert res.bytes == 3 * MiB + 4000 and out.read_bytes() == image.read_bytes()


def quiet(label, total):
    return flasher.NoProgress()


def test_overwriting_a_file_asks_first_or_refuses_without_a_terminal(image, tmp_path):
    out = tmp_path / "stick.img"
    out.write_bytes(b"old" * 1000)
    with pytest.raises(flasher.UsageError) as exc:
        flasher.flash(image, str(out), progress_factory=quiet)
    assert exc.value.message == (
        f"refusing to overwrite {out} without confirmation: there is no terminal to ask on"
    )
    assert exc.value.hint == "check the device with `builder devices`, then pass --yes"
    asked: list[str] = []
    flasher.flash(
        image, str(out), confirm=lambda text: asked.append(text) or True, progress_factory=quiet
    )
    assert asked == [
        f"About to overwrite {out}: regular file, 2.9 KiB (will be replaced)\n"
        f"with {image} (3.0 MiB).\nEverything on it will be lost."
    ]
    assert out.read_bytes() == image.read_bytes()
