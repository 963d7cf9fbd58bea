"""`builder boot-test SITE --iso ISO [--seed SEED]`: usage errors (exit 2, one line, nothing
written), the ISO check, and the seed a node gets from the user's own seed volume."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from builder.boottest import install
from builder.boottest.scenarios import user_seed_files
from builder.cli import main
from builder.errors import UsageError
from builder.targets import seed


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb" + b"\0" * 508)
    iso = tmp_path / "site.iso"
    iso.write_bytes(b"\0" * (16 * 2048) + b"\x01CD001" + b"\0" * 2042)
    other = tmp_path / "seed.iso"
    other.write_bytes(b"\0" * 4096)
    return {"disk": disk, "iso": iso, "seed": other}


def _invoke(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The real entry point (error mapping included): exit code, stderr."""
    before = sorted(p.name for p in tmp_path.iterdir())
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        main(["boot-test", "onprem", *args])
        rc = 0
    except SystemExit as exc:
        rc = int(exc.code or 0)
    finally:  # main() points logging at this test's captured stderr: undo that
        root.handlers[:], root.level = handlers, level
    after = sorted(p.name for p in tmp_path.iterdir())
    assert after == before, "a refused command wrote something"
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give exactly one of --image DISK or --iso ISO"),
        (("--image", "{disk}", "--iso", "{iso}"), "give exactly one of --image DISK or --iso ISO"),
        (("--image", "{disk}", "--seed", "{seed}"), "--seed/--online-install: only with --iso"),
        (("--image", "{disk}", "--online-install"), "--seed/--online-install: only with --iso"),
        (("--iso", "{iso}", "--seed", "{seed}", "--nodes", "2"), "--seed: one seed is one machine"),
        (("--iso", "{iso}", "--seed", "{seed}", "--static"), "--seed and --static exclude"),
        (
            ("--iso", "{iso}", "--seed", "{seed}", "--node-seed-only"),
            "--seed and --node-seed-only exclude",
        ),
        (("--iso", "{disk}"), "not an ISO 9660 image"),
        (("--iso", "{iso}", "--kernel", "{disk}", "--uefi"), "--kernel: direct kernel boot and"),
        (("--iso", "{iso}", "--append", "x"), "--initrd/--append: need --kernel"),
    ],
)
def test_iso_usage_errors_exit_2_with_one_clear_line(files, tmp_path, capsys, args, message):
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    rc, err = _invoke(tmp_path, capsys, *argv)
    assert rc == 2, err
    assert err.startswith("error: ") and message in err.splitlines()[0]
    assert "Traceback" not in err


def test_a_missing_iso_is_a_usage_error(tmp_path, capsys):
    rc, err = _invoke(tmp_path, capsys, "--iso", str(tmp_path / "nope.iso"))
    assert rc == 2 and "does not exist" in err


def test_check_iso_reads_the_volume_descriptor(files):
    assert install.check_iso(files["iso"]) == files["iso"].resolve()
    with pytest.raises(UsageError, match="not an ISO 9660 image"):
        install.check_iso(files["seed"])


def test_user_seed_keeps_its_name_and_network_and_gets_the_lab_token(tmp_path):
    from builder.boottest.site import LabSite

    tree = tmp_path / "tree"
    (tree / "cloud-init").mkdir(parents=True)
    (tree / "cloud-init/user-data").write_text("#cloud-config\nwrite_files: []\nruncmd: [x]\n")
    lab = LabSite("onprem", None, tree, None, {})  # type: ignore[arg-type]
    theirs = seed.node_seed(site="onprem", hostname="rack1-n7", token="their-hub-token",
                            ip="10.0.2.50/24", gateway="10.0.2.2")  # fmt: skip
    got = user_seed_files(lab, "rack1-n7", "lab-token", theirs)
    assert got["meta-data"] == theirs["meta-data"]  # instance-id and host name kept
    assert got["network-config"] == theirs["network-config"]
    assert install.seed_hostname(got) == "rack1-n7"
    ud = got["user-data"].decode()
    assert "lab-token" in ud and "their-hub-token" not in ud
    assert yaml.safe_load(ud)["runcmd"] == ["x"]  # the site's (lab-rendered) user-data
