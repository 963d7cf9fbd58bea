"""`builder image` input errors: exit 2, the option or key named, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_cli_image_bad_base_iso_exit_2_nothing_written(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    from builder.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["image", "onprem", "--allow-demo", "--base-iso", "missing.iso"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: --base-iso: missing.iso: no such file" in err
    assert "Traceback" not in err
    assert not (workdir / "build").exists() and not (workdir / "dist").exists()


def test_cli_image_bad_volume_id_names_the_key(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    from builder.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["image", "onprem", "--allow-demo", "--set", "iso.volume_id=" + "X" * 40])
    assert exc.value.code == 2
    assert "iso.volume_id" in capsys.readouterr().err
    assert not (workdir / "build").exists() and not (workdir / "dist").exists()
