"""NoCloud seed ISO: content, deterministic bytes, validation, and the `builder seed` command."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from builder.cli import cli
from builder.errors import UsageError
from builder.targets import seed


def _files() -> dict[str, bytes]:
    return seed.node_seed(
        site="onprem",
        hostname="gpu-01",
        ip="192.168.50.10/24",
        gateway="192.168.50.1",
        dns=["192.168.50.53", "1.1.1.1"],
        token="tok-123",
    )


def test_seed_round_trips_with_cidata_label(tmp_path: Path) -> None:
    out = seed.write_seed(tmp_path / "seed.iso", _files(), epoch=1700000000)
    label, files = seed.read_seed(out)
    assert label == "CIDATA"
    assert set(files) == {"user-data", "meta-data", "network-config"}
    assert files == _files()


def test_seed_bytes_are_deterministic_across_time_and_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    a = seed.seed_bytes(_files(), epoch=1700000000)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        b = seed.seed_bytes(_files(), epoch=1700000000)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()
    assert seed.seed_bytes(_files(), epoch=1700000001) != a  # the epoch is really used


def test_seed_honours_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert seed.seed_bytes(_files()) == seed.seed_bytes(_files(), epoch=1700000000)


def test_node_seed_content() -> None:
    files = _files()
    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": "nodeforge-onprem-gpu-01", "local-hostname": "gpu-01"}
    assert files["user-data"].startswith(b"#cloud-config\n")
    user = yaml.safe_load(files["user-data"])
    assert user["hostname"] == "gpu-01"
    (token,) = user["write_files"]
    assert token == {
        "path": "/etc/nodeforge/enroll-token",
        "permissions": "0600",
        "owner": "root:root",
        "content": "tok-123\n",
    }
    net = yaml.safe_load(files["network-config"])
    eth = net["ethernets"]["primary"]
    assert net["version"] == 2
    assert eth["addresses"] == ["192.168.50.10/24"]
    assert eth["routes"] == [{"to": "default", "via": "192.168.50.1"}]
    assert eth["nameservers"] == {"addresses": ["192.168.50.53", "1.1.1.1"]}


def test_dhcp_node_has_no_network_config() -> None:
    files = seed.node_seed(site="onprem", hostname="n1")
    assert "network-config" not in files


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hostname": "bad_name"}, "--hostname"),
        ({"ip": "192.168.50.10"}, "--ip"),
        ({"ip": "nonsense/24"}, "--ip"),
        ({"ip": "192.168.50.10/24", "gateway": "10.0.0.1"}, "--gateway"),
        ({"gateway": "192.168.50.1"}, "--gateway: needs --ip"),
        ({"ip": "192.168.50.10/24", "dns": ["x"]}, "--dns"),
        ({"token": "two words"}, "--token-file"),
    ],
)
def test_bad_node_input_is_a_usage_error(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        seed.node_seed(site="onprem", **kwargs)


def test_unknown_nocloud_file_rejected() -> None:
    with pytest.raises(UsageError, match="unknown NoCloud"):
        seed.seed_bytes({"user-data": b"", "meta-data": b"", "vendor": b""})


TOKEN = "nf1.0123456789abcdef." + "A" * 43  # the form `builder hub token create` prints


def test_cli_seed_writes_0600_and_prints_path(workdir: Path) -> None:
    (workdir / "token").write_text(TOKEN + "\n")
    res = CliRunner().invoke(
        cli,
        [
            "seed", "onprem", "--hostname", "gpu-01", "--ip", "192.168.50.10/24",
            "--gateway", "192.168.50.1", "--dns", "192.168.50.53", "--dns", "1.1.1.1",
            "--token-file", "token", "-o", "out/seed.iso",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = workdir / "out" / "seed.iso"
    assert res.output.strip() == "out/seed.iso"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    label, files = seed.read_seed(out)
    assert label == "CIDATA"
    assert yaml.safe_load(files["user-data"])["write_files"][0]["content"] == TOKEN + "\n"
    assert TOKEN not in res.output


def test_cli_seed_bad_ip_exit_2_nothing_written(workdir: Path) -> None:
    from builder.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["seed", "onprem", "--hostname", "n1", "--ip", "300.1.1.1/24", "-o", "seed.iso"])
    assert exc.value.code == 2
    assert not (workdir / "seed.iso").exists()
    assert not list(workdir.glob(".seed.iso.*"))


def test_cli_seed_missing_token_file_exit_2(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    from builder.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["seed", "onprem", "--hostname", "n1", "--token-file", "nope", "-o", "seed.iso"])
    assert exc.value.code == 2
    assert "--token-file: nope" in capsys.readouterr().err
    assert not (workdir / "seed.iso").exists()


# --- issue 15 item 8: seed validates its input (exit 2, nothing written) ---------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--hostname", "n1", "--token-file", "token"],
            "--token-file: token: not an enrollment token",
        ),
        (
            ["--hostname", "n1", "--token-file", "empty"],
            "--token-file: empty: not an enrollment token",
        ),
        (
            ["--hostname", "n1", "--ip", "10.9.8.7/24"],
            "--ip: 10.9.8.7 is not in the site LAN 192.168.50.0/24",
        ),
        (["--hostname", "n1", "--ip", "192.168.50.255/24"], "broadcast address"),
        ([], "Missing option '--hostname'"),
    ],
    ids=["malformed-token", "empty-token", "ip-outside-site-lan", "broadcast", "no-hostname"],
)
def test_cli_seed_rejects_bad_node_input(
    workdir: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    from builder.cli import main

    (workdir / "token").write_text("tok-123\n")
    (workdir / "empty").write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["seed", "onprem", *args, "-o", "seed.iso"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (workdir / "seed.iso").exists()


def test_cli_seed_ip_inside_the_site_lan_is_fine(
    workdir: Path, capsys: pytest.CaptureFixture
) -> None:
    from builder.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["seed", "onprem", "--hostname", "n1", "--ip", "192.168.50.10/24", "-o", "s.iso"])
        raise SystemExit(0)
    assert exc.value.code == 0, capsys.readouterr().err
    assert (workdir / "s.iso").is_file()
