"""flash's choice of image and its SHA256SUMS reading, pinned (issue 18 mutation survivors)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.errors import UsageError
from builder.flash import flasher


def test_hidden_temp_iso_of_a_running_build_is_never_chosen(tmp_path: Path) -> None:
    folder = tmp_path / "dist" / "onprem"
    folder.mkdir(parents=True)
    done = folder / "onprem-a.iso"
    done.write_bytes(b"built")
    temp = folder / ".onprem-b.iso"  # a build in progress writes a dot-file, renamed at the end
    temp.write_bytes(b"half")
    os.utime(done, (1, 1))  # the temp file is newer
    (folder / "dir.iso").mkdir()  # not a file either
    assert flasher.resolve_image(None, "onprem", tmp_path / "dist") == done


def test_no_iso_names_folder_site_and_hint(tmp_path: Path) -> None:
    (tmp_path / "dist" / "aws").mkdir(parents=True)
    with pytest.raises(UsageError) as exc:
        flasher.resolve_image(None, "aws", tmp_path / "dist")
    assert exc.value.message == f"{tmp_path / 'dist' / 'aws'}: no ISO found for site 'aws'"
    assert exc.value.hint == "build it first: make image SITE=aws"


def test_usage_messages_word_for_word(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as exc:
        flasher.resolve_image(None, None)
    assert exc.value.message == (
        "missing IMAGE (or --site SITE to use the latest ISO in dist/SITE/)"
    )
    with pytest.raises(UsageError) as exc:
        flasher.resolve_image(tmp_path / "x.iso", "onprem")
    assert exc.value.message == "give either IMAGE or --site, not both"


def test_sums_with_undecodable_bytes_still_read(tmp_path: Path) -> None:
    sums = tmp_path / "SHA256SUMS"
    digest = "A" * 64
    sums.write_bytes(b"\xff\xfe junk line\n" + digest.encode() + b" *onprem.iso\n")
    assert flasher.read_sums(sums) == {"onprem.iso": "a" * 64}
