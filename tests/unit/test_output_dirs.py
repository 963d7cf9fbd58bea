"""Issue 15 item 1: a command that writes a directory never removes one we did not create.

Only a directory carrying our marker (a previous build tree) is replaced; a non-empty
directory of the user's is refused with exit 2 and a hint, untouched; ``-o .`` fails cleanly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder import cli
from builder.fsutil import MARKER


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main([*args])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_render_refuses_a_users_directory(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = workdir / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "todo.txt").write_text("buy milk\n")
    (notes / "sub" / "x").write_text("x")
    code, out, err = run_cli(capsys, "render", "onprem", "-o", "notes")
    assert code == 2, err
    assert out == ""
    assert "error: -o: notes: is not empty and was not created by nodeforge" in err
    assert "hint: " in err and "Traceback" not in err
    assert (notes / "todo.txt").read_text() == "buy milk\n"
    assert sorted(p.name for p in notes.rglob("*")) == ["sub", "todo.txt", "x"]
    assert not list(workdir.glob(".notes*"))  # no temp tree left beside it


def test_render_replaces_its_own_tree(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "-q", "render", "onprem", "-o", "out")[0] == 0
    assert (workdir / "out" / MARKER).is_file()
    (workdir / "out" / "stale.txt").write_text("from an older build")
    code, _, err = run_cli(capsys, "-q", "render", "onprem", "-o", "out")
    assert code == 0, err
    assert not (workdir / "out" / "stale.txt").exists()
    assert (workdir / "out" / "cloud-init" / "user-data").is_file()


def test_render_into_an_empty_directory(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "empty").mkdir()
    code, _, err = run_cli(capsys, "-q", "render", "onprem", "-o", "empty")
    assert code == 0, err
    assert (workdir / "empty" / "manifest.json").is_file()


@pytest.mark.parametrize("arg", [".", "..", "./"])
def test_render_dot_fails_cleanly(
    workdir: Path, capsys: pytest.CaptureFixture[str], arg: str
) -> None:
    before = sorted(p.name for p in workdir.iterdir())
    code, out, err = run_cli(capsys, "render", "onprem", "-o", arg)
    assert code == 2, err
    assert "internal error" not in err
    assert "is the current directory" in err
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_render_onto_a_file_is_refused(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "f").write_text("keep")
    code, _, err = run_cli(capsys, "render", "onprem", "-o", "f")
    assert code == 2
    assert "is a file" in err  # Click's own check of the option's type
    assert (workdir / "f").read_text() == "keep"


def test_image_refuses_a_users_dist_before_writing(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = workdir / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"\xff\xd8")
    (workdir / "x.iso").write_bytes(b"not really")
    code, _, err = run_cli(
        capsys, "image", "onprem", "--allow-demo", "--base-iso", "x.iso", "-o", "mine"
    )
    assert code == 2, err
    assert "--dist: mine: is not empty and was not created by nodeforge" in err
    assert [p.name for p in mine.iterdir()] == ["photo.jpg"]
    assert not (workdir / "build").exists()  # refused before anything was rendered
