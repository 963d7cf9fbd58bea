"""`builder flash` on regular files, and its refusals on fixture device views.

No block device is opened here: block targets come from fixture trees (tests/unit/fixtures/
blockdev), and flash() refuses to write any block device seen through a fixture view.
Real loop devices are in tests/integration/test_flash_loop.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import cli, main
from builder.errors import BuilderError, UsageError
from builder.flash import blockdev
from builder.flash import flasher as flash
from builder.flash.blockdev import SysView

FIXTURES = Path(__file__).parent / "fixtures" / "blockdev"
MiB = 1 << 20


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


def quiet(label: str, total: int) -> flash.NoProgress:
    return flash.NoProgress()


def make_image(path: Path, size: int, seed: int = 1) -> Path:
    """Deterministic pseudo-random bytes (so a shifted or dropped block would show)."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    path.write_bytes(bytes(out[:size]))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def view(layout: str) -> SysView:
    root = FIXTURES / layout
    return SysView(root / "sys", root / "mountinfo", root / "swaps")


# --- regular-file targets ----------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [1, 4095, 4096, 3 * MiB + 2048, 4 * MiB, 9 * MiB + 517],
    ids=["1B", "4095B", "4KiB", "iso-like", "one-block", "odd"],
)
def test_flash_to_new_file_copies_exactly(tmp_path: Path, size: int) -> None:
    image = make_image(tmp_path / "node.iso", size)
    out = tmp_path / "stick.img"
    res = flash.flash(image, str(out), progress_factory=quiet, block_size=4 * MiB)
    assert out.read_bytes() == image.read_bytes()
    assert res.verified and res.sha256 == sha(image)
    assert res.bytes == size
    assert not list(tmp_path.glob(".*.part"))


def test_small_blocks_many_chunks(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.iso", 5 * MiB + 123)
    out = tmp_path / "out.img"
    flash.flash(image, str(out), progress_factory=quiet, block_size=64 * 1024)
    assert out.read_bytes() == image.read_bytes()


def test_existing_file_needs_confirmation(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.iso", MiB)
    out = tmp_path / "out.img"
    out.write_bytes(b"keep me")
    with pytest.raises(UsageError, match="without confirmation"):
        flash.flash(image, str(out), progress_factory=quiet)
    asked: list[str] = []

    def no(text: str) -> bool:
        asked.append(text)
        return False

    with pytest.raises(BuilderError, match="not confirmed: nothing was written"):
        flash.flash(image, str(out), confirm=no, progress_factory=quiet)
    assert out.read_bytes() == b"keep me"
    assert "About to overwrite" in asked[0] and "regular file" in asked[0]
    flash.flash(image, str(out), confirm=lambda text: True, progress_factory=quiet)
    assert out.read_bytes() == image.read_bytes()


def test_target_is_image_refused(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.iso", MiB)
    with pytest.raises(UsageError, match="is the image itself"):
        flash.flash(image, str(image), yes=True, progress_factory=quiet)


def test_bad_targets(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.iso", 4096)
    with pytest.raises(UsageError, match="is a directory"):
        flash.flash(image, str(tmp_path), yes=True)
    with pytest.raises(UsageError, match="not a block device or regular file"):
        flash.flash(image, "/dev/null", yes=True)
    with pytest.raises(UsageError, match="does not exist"):
        flash.flash(image, str(tmp_path / "no" / "such" / "dir.img"), yes=True)
    with pytest.raises(UsageError, match="no such device"):
        flash.flash(image, "/dev/nodeforge-test-no-such-disk", yes=True)
    assert not Path("/dev/nodeforge-test-no-such-disk").exists()  # never created under /dev
    with pytest.raises(UsageError, match="no such device"):
        flash.flash(image, "/dev/disk/by-id/usb-nodeforge-test-0:0", yes=True)


def test_bare_device_name_is_not_taken_as_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image(tmp_path / "a.iso", 4096)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="did you mean /dev/null"):
        flash.flash(image, "null", yes=True)
    assert not (tmp_path / "null").exists()
    flash.flash(image, "stick.img", yes=True, progress_factory=quiet)  # a plain file name
    assert (tmp_path / "stick.img").read_bytes() == image.read_bytes()
    (tmp_path / "empty.iso").write_bytes(b"")
    with pytest.raises(UsageError, match="image is empty"):
        flash.flash(tmp_path / "empty.iso", str(tmp_path / "o"), yes=True)


# --- verification ---------------------------------------------------------------------------


def test_one_corrupted_byte_fails_verification(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.iso", 6 * MiB + 100)
    out = tmp_path / "out.img"
    res = flash.flash(image, str(out), verify=False, progress_factory=quiet)
    assert not res.verified and res.sha256 is None
    assert flash.verify_target(image, out, progress_factory=quiet) == sha(image)
    with open(out, "r+b") as fh:  # flip one bit in one byte, in the last block
        fh.seek(6 * MiB + 50)
        b = fh.read(1)
        fh.seek(6 * MiB + 50)
        fh.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(flash.VerifyFailed, match="verification failed"):
        flash.verify_target(image, out, progress_factory=quiet)


def test_verify_reads_only_the_image_length(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.iso", 2 * MiB + 7)
    stick = tmp_path / "stick.img"
    stick.write_bytes(image.read_bytes() + b"old data after the image" * 1000)
    flash.verify_target(image, stick, progress_factory=quiet)


def test_short_target_fails_verification(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.iso", 2 * MiB)
    short = tmp_path / "short.img"
    short.write_bytes(image.read_bytes()[: MiB + 3])
    with pytest.raises(flash.VerifyFailed, match="read back only"):
        flash.verify_target(image, short, progress_factory=quiet)


def test_cli_verify_only_sees_the_corruption(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.iso", 3 * MiB)
    out = tmp_path / "out.img"
    runner = CliRunner()
    res = runner.invoke(cli, ["flash", "--no-verify", str(image), str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["flash", "--verify-only", str(image), str(out)])
    assert res.exit_code == 0, res.output
    data = bytearray(out.read_bytes())
    data[12345] ^= 0xFF
    out.write_bytes(bytes(data))
    res = runner.invoke(cli, ["flash", "--verify-only", str(image), str(out)])
    assert res.exit_code == 1
    assert isinstance(res.exception, flash.VerifyFailed)


def write_sums(folder: Path, name: str, digest: str) -> None:
    (folder / "SHA256SUMS").write_text(f"{'0' * 64}  other.iso\n{digest} *{name}\n")


def test_sha256sums_beside_the_image_is_checked(tmp_path: Path) -> None:
    image = make_image(tmp_path / "node.iso", MiB)
    write_sums(tmp_path, "node.iso", sha(image))
    res = flash.flash(image, str(tmp_path / "o1.img"), progress_factory=quiet)
    assert res.sums_file == tmp_path / "SHA256SUMS"
    write_sums(tmp_path, "node.iso", "ab" * 32)
    with pytest.raises(flash.VerifyFailed, match="does not match .*SHA256SUMS"):
        flash.flash(image, str(tmp_path / "o2.img"), progress_factory=quiet)


def test_sha256sums_without_the_image_is_ignored(tmp_path: Path) -> None:
    image = make_image(tmp_path / "node.iso", MiB)
    write_sums(tmp_path, "different.iso", "ab" * 32)
    res = flash.flash(image, str(tmp_path / "o.img"), progress_factory=quiet)
    assert res.verified and res.sums_file is None


def test_read_sums_formats(tmp_path: Path) -> None:
    p = tmp_path / "SHA256SUMS"
    p.write_text(f"{'A' * 64}  dir/x.iso\n{'b' * 64} *y.iso\nnot a line\n")
    assert flash.read_sums(p) == {"x.iso": "a" * 64, "y.iso": "b" * 64}


# --- picking the image by site -------------------------------------------------------------


def test_site_picks_the_newest_iso(tmp_path: Path) -> None:
    site = tmp_path / "dist" / "onprem"
    site.mkdir(parents=True)
    old = make_image(site / "nodeforge-onprem-old.iso", 4096)
    new = make_image(site / "nodeforge-onprem-new.iso", 4096, seed=2)
    make_image(site / ".nodeforge-onprem.iso.123.part", 4096)  # a build in progress
    now = time.time()
    os.utime(old, (now - 100, now - 100))
    os.utime(new, (now, now))
    os.utime(site / ".nodeforge-onprem.iso.123.part", (now + 10, now + 10))
    assert flash.resolve_image(None, "onprem", tmp_path / "dist") == new
    with pytest.raises(UsageError, match="no ISO found for site 'aws'"):
        flash.resolve_image(None, "aws", tmp_path / "dist")
    with pytest.raises(UsageError, match="either IMAGE or --site"):
        flash.resolve_image(new, "onprem", tmp_path / "dist")
    with pytest.raises(UsageError, match="no such image file"):
        flash.resolve_image(tmp_path / "nope.iso", None, tmp_path / "dist")


def test_site_prefers_the_iso_the_manifest_names(tmp_path: Path) -> None:
    site = tmp_path / "dist" / "onprem"
    site.mkdir(parents=True)
    built = make_image(site / "onprem-ubuntu24.04-k8s1.35.0.iso", 4096)
    seed = make_image(site / "seed.iso", 4096, seed=3)  # newer, but not the node image
    os.utime(built, (time.time() - 100, time.time() - 100))
    manifest = {
        "schema": 1,
        "target": "iso",
        "artifacts": [{"type": "iso", "name": built.name, "sha256": sha(built)}],
    }
    (site / "manifest.json").write_text(json.dumps(manifest))
    assert flash.resolve_image(None, "onprem", tmp_path / "dist") == built
    built.unlink()  # manifest names a missing file: fall back to the newest ISO
    assert flash.resolve_image(None, "onprem", tmp_path / "dist") == seed
    (site / "manifest.json").write_text("{not json")
    assert flash.resolve_image(None, "onprem", tmp_path / "dist") == seed


def test_cli_flash_by_site(tmp_path: Path) -> None:
    site = tmp_path / "dist" / "onprem"
    site.mkdir(parents=True)
    image = make_image(site / "nodeforge-onprem.iso", 2 * MiB + 2048)
    write_sums(site, image.name, sha(image))
    out = tmp_path / "stick.img"
    res = CliRunner().invoke(
        cli, ["flash", "--site", "onprem", "--dist", str(tmp_path / "dist"), str(out)]
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    assert out.read_bytes() == image.read_bytes()


def test_cli_argument_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["flash", str(tmp_path / "only-one")]) == 2
    assert "expected 2 arguments, got 1" in capsys.readouterr().err
    assert exit_code(["flash", "--site", "onprem", "a.iso", "/dev/sdz"]) == 2
    assert "expected 1 argument, got 2" in capsys.readouterr().err


# --- O_DIRECT fallback ------------------------------------------------------------------------


def test_falls_back_to_buffered_when_o_direct_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some filesystems refuse O_DIRECT with EINVAL at open(): we write buffered instead."""
    if not flash.O_DIRECT:
        pytest.skip("no O_DIRECT on this platform")
    real_open = os.open

    def picky_open(path: str | os.PathLike[str], flags: int, *a: int) -> int:
        if flags & flash.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)

    monkeypatch.setattr(flash.os, "open", picky_open)
    image = make_image(tmp_path / "a.iso", 5 * MiB + 1)
    out = tmp_path / "out.img"
    res = flash.flash(image, str(out), progress_factory=quiet)
    assert not res.direct and res.verified
    assert out.read_bytes() == image.read_bytes()


def test_o_direct_used_where_the_filesystem_takes_it(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.iso", 8 * MiB)
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | flash.O_DIRECT))
    except OSError:
        pytest.skip(f"{tmp_path} does not take O_DIRECT")
    res = flash.flash(image, str(tmp_path / "out.img"), progress_factory=quiet)
    assert res.direct


# --- Ctrl-C ---------------------------------------------------------------------------------


class SigintAfter:
    """A progress display that sends this process a real SIGINT after ``n`` updates."""

    def __init__(self, n: int = 1) -> None:
        self.n = n

    def __call__(self, label: str, total: int) -> SigintAfter:
        return self

    def update(self, nbytes: int) -> None:
        self.n -= 1
        if self.n == 0:
            os.kill(os.getpid(), signal.SIGINT)

    def close(self) -> None:
        pass


def test_ctrl_c_mid_write_to_file_leaves_nothing(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.iso", 12 * MiB)
    out = tmp_path / "out.img"
    with pytest.raises(flash.FlashInterrupted, match="nothing was written") as exc:
        flash.flash(image, str(out), progress_factory=SigintAfter(1), block_size=MiB)
    assert exc.value.exit_code == 130
    assert not out.exists()
    assert not list(tmp_path.glob(".*.part"))


def test_cli_ctrl_c_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    image = make_image(tmp_path / "a.iso", 12 * MiB)
    monkeypatch.setattr(flash, "stderr_progress", SigintAfter(2))
    assert exit_code(["flash", str(image), str(tmp_path / "out.img")]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "out.img").exists()


# --- block targets seen through fixture views (never opened) ---------------------------------


def test_safe_stick_in_a_fixture_view_is_never_written(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.iso", MiB)
    with pytest.raises(BuilderError, match="is not this machine's"):
        flash.flash(image, "/dev/sda", yes=True, view=view("laptop"), progress_factory=quiet)


@pytest.mark.parametrize(
    ("layout", "device", "reason"),
    [
        ("laptop", "/dev/nvme0n1", "holds the running system's root filesystem"),
        ("laptop", "/dev/nvme0n1p1", "holds the running system's root filesystem"),
        ("laptop", "/dev/dm-1", "holds the running system's root filesystem"),
        ("server", "/dev/sdb", "holds the running system's root filesystem"),
        ("server", "/dev/md0", "holds the running system's root filesystem"),
        ("mounted", "/dev/nvme0n1p3", "holds the running system's root filesystem"),
        ("mounted", "/dev/sdc", "has no medium"),
    ],
)
def test_hard_refusals_survive_force(tmp_path: Path, layout: str, device: str, reason: str) -> None:
    image = make_image(tmp_path / "a.iso", MiB)
    with pytest.raises(BuilderError, match=reason) as exc:
        flash.flash(image, device, yes=True, force=True, view=view(layout), progress_factory=quiet)
    assert "--force cannot override" in (exc.value.hint or "")


@pytest.mark.parametrize(
    ("layout", "device", "reason"),
    [
        ("mounted", "/dev/sda", "has mounted filesystems: /run/media/alice/KINGSTON USB"),
        ("server", "/dev/sdd", r"is not removable and not on USB \(transport: sata\)"),
        ("server", "/dev/sdc", "has mounted filesystems: /srv/data"),
        ("laptop", "/dev/sda1", "is a partition of /dev/sda, not a whole disk"),
    ],
)
def test_soft_refusals_and_force(tmp_path: Path, layout: str, device: str, reason: str) -> None:
    image = make_image(tmp_path / "a.iso", MiB)
    with pytest.raises(BuilderError, match=reason) as exc:
        flash.flash(image, device, yes=True, view=view(layout), progress_factory=quiet)
    assert "--force overrides" in (exc.value.hint or "")
    # with --force the checks pass; only the fixture guard stops it from opening anything
    with pytest.raises(BuilderError, match="is not this machine's"):
        flash.flash(image, device, yes=True, force=True, view=view(layout), progress_factory=quiet)


def test_image_larger_than_stick_refused_even_with_force(tmp_path: Path) -> None:
    image = tmp_path / "big.iso"
    with open(image, "wb") as fh:  # sparse 20 GiB: larger than the 14.3 GiB stick
        fh.truncate(20 << 30)
    with pytest.raises(BuilderError, match="smaller than the image"):
        flash.flash(image, "/dev/sda", yes=True, force=True, view=view("laptop"))


def test_cli_refusal_lists_every_reason(tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.iso", MiB)
    root = FIXTURES / "laptop"
    env = {
        "BUILDER_SYS_ROOT": str(root / "sys"),
        "BUILDER_MOUNTINFO": str(root / "mountinfo"),
        "BUILDER_SWAPS": str(root / "swaps"),
    }
    res = CliRunner().invoke(
        cli, ["flash", "--yes", "--force", str(image), "/dev/nvme0n1"], env=env
    )
    assert res.exit_code == 1  # CliRunner: any exception; main() maps Refused to 3
    msg = res.exception.message  # type: ignore[union-attr]
    assert "refusing to flash /dev/nvme0n1" in msg
    for reason in ("root filesystem", "not removable", "mounted filesystems"):
        assert reason in msg


def test_describe_shows_model_size_serial() -> None:
    blk = blockdev.inspect("sda", MiB, view("laptop"))
    assert blk is not None
    text = flash.Target(Path("/dev/sda"), "block", blk).describe()
    assert "SanDisk Cruzer Blade" in text
    assert "14.3 GiB (15376318464 bytes)" in text
    assert "serial 4C530001230313116165" in text
    assert "partitions: sda1" in text


# --- progress -------------------------------------------------------------------------------


class FakeStream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.text = ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


def test_progress_lines_without_a_terminal() -> None:
    stream = FakeStream(tty=False)
    p = flash.Progress("writing", 100 * MiB, stream)  # type: ignore[arg-type]
    for _ in range(100):
        p.update(MiB)
    p.close()
    lines = stream.text.splitlines()
    assert len(lines) == 11  # 0 %, every 10 %, 100 %
    assert lines[-1].startswith("writing [########################] 100%  100.0 MiB / 100.0 MiB")
    assert "/s  ETA 0:00" in lines[-1]


def test_progress_redraws_on_a_terminal() -> None:
    stream = FakeStream(tty=True)
    p = flash.Progress("writing", 10 * MiB, stream)  # type: ignore[arg-type]
    p.update(5 * MiB)
    p.close()
    assert stream.text.startswith("\rwriting [############")
    assert " 50%" in stream.text and stream.text.endswith("\x1b[K\n")


@pytest.mark.parametrize("writers", [1, 2, 3])
@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("length", [4096 * 7 + 123, 64 * 1024, 1])
def test_write_image_stages_give_the_exact_bytes_and_hash(
    tmp_path: Path, writers: int, direct: bool, length: int
) -> None:
    """Reader, hasher and several positional writers: every byte in place, the unaligned
    tail included, whatever order the writes finish in; the hash is of the image."""
    from builder.flash import blockio

    data = os.urandom(length)
    image = tmp_path / "img"
    image.write_bytes(data + b"past the length, not written")
    target = tmp_path / "out"
    target.write_bytes(b"")
    fd, used_direct = blockio.open_write(target, direct=direct, exclusive=False)
    try:
        res = blockio.write_image(
            image, fd, length=length, direct=used_direct, hash_image=True,
            progress=flash.NoProgress(), block_size=8192, writers=writers,
        )  # fmt: skip
    finally:
        os.close(fd)
    assert target.read_bytes() == data
    assert res.bytes == length and res.sha256 == hashlib.sha256(data).hexdigest()


def test_write_image_reports_a_short_image(tmp_path: Path) -> None:
    from builder.flash import blockio

    image = tmp_path / "img"
    image.write_bytes(b"x" * 10000)
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(BuilderError, match="shrank while being written"):
            blockio.write_image(
                image, fd, length=20000, direct=False, hash_image=False,
                progress=flash.NoProgress(), block_size=4096,
            )  # fmt: skip
    finally:
        os.close(fd)
