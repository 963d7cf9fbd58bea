"""`builder hub …` commands through builder.cli.main: init, tokens, nodes, approve, revoke."""

from __future__ import annotations

import datetime
import hashlib
import json
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from builder import cli
from builder.hub import config as hub_config
from builder.hub.provider import Provider, ca_cert_hash
from builder.hub.store import EnrollRequest
from tests.support.hubstore import store_json


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main([*args])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


@pytest.fixture
def hubdir(tmp_path, capsys):
    d = tmp_path / "hub"
    code, out, err = run_cli(
        capsys,
        "hub",
        "init",
        str(d),
        "--endpoint",
        "hub.example:51820",
        "--url",
        "https://hub.example:8443",
        "--overlay-cidr",
        "10.77.0.0/24",
    )
    assert code == 0, err
    cfg = json.loads((d / "hub.json").read_text())
    cfg["wireguard"]["apply"] = False  # unit tests touch no interface
    cfg["store"] = store_json(d)  # SQLite; etcd when the integration lane runs these again
    (d / "hub.json").write_text(json.dumps(cfg))
    return d, out


@pytest.mark.allow_subprocess
def test_init_writes_keys_privately_and_prints_the_pins(hubdir):
    d, out = hubdir
    # issue 15 item 9: paste-ready profile YAML (an absolute file: path to the CA);
    # expected values from other tools: openssl for the certificate's DER, `wg pubkey`
    pasted = yaml.safe_load(out)
    der = subprocess.run(
        ["openssl", "x509", "-in", str(d / "ca.pem"), "-outform", "der"],
        check=True,
        capture_output=True,
    ).stdout
    wg = subprocess.run(
        ["wg", "pubkey"], input=(d / "wg.key").read_bytes(), check=True, capture_output=True
    )
    assert pasted == {
        "enrollment": {
            "ca_cert": f"file:{(d / 'ca.pem').resolve()}",
            "ca_pin": "sha256:" + hashlib.sha256(der).hexdigest(),
        },
        "wireguard": {"hub_public_key": wg.stdout.decode().strip()},
    }
    for name in ("ca.key", "server.key", "wg.key", "secret.key", "hub.json"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    cert = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "hub.example" in sans.get_values_for_type(x509.DNSName)
    assert "10.77.0.1" in [str(i) for i in sans.get_values_for_type(x509.IPAddress)]
    cfg = hub_config.load(d / "hub.json")
    assert str(cfg.wg.hub_ip) == "10.77.0.1" and cfg.join_url == "https://10.77.0.1:8443/v1/join"


def test_init_refuses_to_overwrite_and_bad_input(hubdir, capsys):
    d, _ = hubdir
    code, _, err = run_cli(
        capsys, "hub", "init", str(d), "--endpoint", "h:1", "--url", "https://h:1"
    )
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(
        capsys,
        "hub",
        "init",
        str(d / "x"),
        "--endpoint",
        "h:1",
        "--url",
        "https://h:1",
        "--overlay-cidr",
        "10.0.0.1/24",
    )
    assert code == 2 and "--overlay-cidr" in err and not (d / "x").exists()


def test_bad_config_names_file_and_key(tmp_path, capsys):
    p = tmp_path / "hub.json"
    p.write_text(
        json.dumps(
            {
                "wireguard": {"overlay_cidr": "nope", "hub_overlay_ip": "1.2.3.4"},
                "join": {"provider": "magic"},
            }
        )
    )
    code, _, err = run_cli(capsys, "hub", "nodes", "--config", str(p))
    assert code == 2
    assert f"{p}: wireguard.overlay_cidr:" in err and f"{p}: join.provider:" in err
    assert "Traceback" not in err
    p.write_text("{")
    code, _, err = run_cli(capsys, "hub", "nodes", "--config", str(p))
    assert code == 2 and "not valid JSON" in err


def test_token_lifecycle_and_nodes(hubdir, capsys):
    d, _ = hubdir
    conf = str(d / "hub.json")
    code, out, err = run_cli(
        capsys,
        "hub",
        "token",
        "create",
        "--config",
        conf,
        "--site",
        "lab",
        "--new-site",
        "--uses",
        "3",
        "--ttl",
        "2h",
        "--approve",
    )
    assert code == 0
    token = out.strip()
    tid = token.split(".")[1]
    assert tid in err and token not in err
    code, out, _ = run_cli(capsys, "hub", "token", "list", "--config", conf)
    assert tid in out and token.split(".")[2] not in out and "valid" in out
    code, out, _ = run_cli(capsys, "hub", "token", "list", "--config", conf, "--json")
    rows = json.loads(out)
    assert rows[0]["max_uses"] == 3 and rows[0]["approve"] == 1
    code, _, err = run_cli(
        capsys, "hub", "token", "create", "--config", conf, "--site", "lab", "--ttl", "forever"
    )
    assert code == 2 and "--ttl" in err

    # a node enrolls (pending: approval token), is approved, then revoked
    _, store = cli._hub_store(d / "hub.json")
    key = "A" * 43 + "="
    assert store.enroll(EnrollRequest(token, "lab", "n1", key, "h1")).status == 202
    code, out, _ = run_cli(capsys, "hub", "nodes", "--config", conf, "--json")
    assert json.loads(out)[0]["state"] == "pending"
    code, out, _ = run_cli(capsys, "hub", "approve", "--config", conf, "n1")
    assert code == 0 and out.split() == ["n1", "10.77.0.2"]
    code, out, err = run_cli(capsys, "hub", "revoke", "--config", conf, "n1")
    assert code == 0 and "revoked n1" in out and "reconcile" in err
    code, out, _ = run_cli(capsys, "hub", "nodes", "--config", conf)
    assert "revoked" in out
    code, _, err = run_cli(capsys, "hub", "approve", "--config", conf, "ghost")
    assert code == 2 and "no node" in err
    code, _, _ = run_cli(capsys, "hub", "token", "revoke", "--config", conf, tid)
    assert code == 0
    code, out, _ = run_cli(capsys, "hub", "token", "list", "--config", conf)
    assert "revoked" in out


def test_static_provider_and_ca_hash(tmp_path):
    pem = Path(tmp_path / "ca.pem")
    from builder.hub.pki import make_ca_and_server

    ca, _, _, _ = make_ca_and_server(["x"])
    pem.write_bytes(ca)
    h = ca_cert_hash(ca)
    assert h.startswith("sha256:") and len(h) == 71
    (tmp_path / "tok").write_text("abcdef.0123456789abcdef\n")
    p = Provider(
        {
            "provider": "static",
            "token": "file:tok",
            "ca_cert_hashes": [h],
            "api_server": "10.0.0.1:6443",
            "_base": str(tmp_path),
        }
    )
    m = p.material({"node_id": "n", "ip": "10.0.0.5", "hostname": "h"})
    assert m["token"] == "abcdef.0123456789abcdef" and m["token_id"] is None
    assert m["node_ip"] == "10.0.0.5" and m["ca_cert_hashes"] == [h]
    p.delete(None)  # nothing to delete for static tokens


def test_writer_core_in_process_without_an_interface(hubdir):
    from builder.hub.writer import WriterCore

    d, _ = hubdir
    cfg = hub_config.load(d / "hub.json")
    core = WriterCore(cfg)
    core.start()  # wireguard.apply is false: no interface, no syncconf
    token, _ = core.store.create_token("lab", 2, 60, False)
    res = core.process(
        [EnrollRequest(token, "lab", f"n{i}", f"{chr(65 + i)}" * 43 + "=", "h") for i in range(3)]
    )
    assert [o.status for o in res.outcomes] == [200, 200, 403]
    assert res.wg_seconds < 1 and res.wg_errors == 0
    assert [o.node["ip"] for o in res.outcomes[:2]] == ["10.77.0.2", "10.77.0.3"]


def test_init_from_a_site_profile(workdir, capsys):
    code, out, err = run_cli(capsys, "hub", "init", str(workdir / "h"), "--site", "onprem")
    assert code == 0, err
    cfg = json.loads((workdir / "h" / "hub.json").read_text())
    from builder.site.profile import load_profile

    prof = load_profile("onprem")
    assert cfg["wireguard"]["endpoint"] == prof.get("wireguard.hub_endpoint")
    assert cfg["url"] == prof.get("enrollment.url")
    assert cfg["wireguard"]["overlay_cidr"] == prof.get("wireguard.overlay_cidr")
    assert cfg["wireguard"]["hub_overlay_ip"] == prof.get("wireguard.hub_overlay_ip")
    assert cfg["wireguard"]["mtu"] == prof.get("wireguard.mtu")
    code, _, err = run_cli(capsys, "hub", "init", str(workdir / "h2"))
    assert code == 2 and "--endpoint" in err


def test_init_for_a_site_writes_the_control_planes_kubeadm_config(workdir, capsys):
    """The shipped onprem profile: hub 10.200.0.1 in 10.200.0.0/16, hub.example.com."""
    import yaml

    code, out, err = run_cli(capsys, "hub", "init", str(workdir / "h"), "--site", "onprem")
    assert code == 0, err
    init, cluster = yaml.safe_load_all((workdir / "h" / "kubeadm-init.yaml").read_text())
    assert init["apiVersion"] == cluster["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert init["localAPIEndpoint"]["advertiseAddress"] == "10.200.0.1"
    assert {"name": "node-ip", "value": "10.200.0.1"} in init["nodeRegistration"][
        "kubeletExtraArgs"
    ]
    assert cluster["controlPlaneEndpoint"] == "10.200.0.1:6443"
    assert {"10.200.0.1", "hub.example.com"} <= set(cluster["apiServer"]["certSANs"])
    assert "kubeadm init --config" in err and "builder hub doctor" in err  # next steps


def test_the_hub_defaults_agree_with_base_yaml(tmp_path):
    """Issue 10: base.yaml said overlay 10.200.0.0/16, hub/config.py 10.100.0.0/16."""
    import yaml

    base = yaml.safe_load((Path(__file__).resolve().parents[2] / "profiles/base.yaml").read_text())
    d = tmp_path / "h"
    (d).mkdir()
    (d / "hub.json").write_text(json.dumps({"join": {"provider": "static", "token": "x"}}))
    cfg = hub_config.load(d / "hub.json")  # every setting from the defaults
    assert str(cfg.wg.network) == base["wireguard"]["overlay_cidr"]
    assert str(cfg.wg.hub_ip) == base["wireguard"]["hub_overlay_ip"]
    assert cfg.join["api_server"] == f"{base['wireguard']['hub_overlay_ip']}:6443"
    assert (
        cfg.wg.mtu == base["wireguard"]["mtu"]
        and cfg.wg.keepalive == base["wireguard"]["keepalive"]
    )
    s = hub_config.init_settings(endpoint="hub.example:51820", url="https://hub.example:8443")
    assert s["overlay_cidr"] == base["wireguard"]["overlay_cidr"]
    assert s["hub_ip"] == base["wireguard"]["hub_overlay_ip"]
    assert s["listen"] == "0.0.0.0:8443"


def test_a_request_that_gave_up_does_not_stop_the_writer_link(hubdir, monkeypatch):
    """A request that timed out cancels its future; answering it must not kill the
    batching thread (found while writing the asyncio server)."""
    import time as _time

    from builder.hub.dispatch import WriterLink
    from builder.hub.metrics import Metrics
    from builder.hub.writer import WriterCore

    d, _ = hubdir
    raw = json.loads((d / "hub.json").read_text())
    raw["limits"] = {"writer_process": False}
    (d / "hub.json").write_text(json.dumps(raw))
    cfg = hub_config.load(d / "hub.json")
    slow = WriterCore.process

    def process(self, reqs):
        _time.sleep(0.3)
        return slow(self, reqs)

    monkeypatch.setattr(WriterCore, "process", process)
    link = WriterLink(cfg, Metrics())
    link.start()
    try:
        token, _ = link.core.store.create_token("lab", 2, 60, False)
        first = link.submit(EnrollRequest(token, "lab", "n1", "B" * 43 + "=", "h"))
        first.cancel()  # the HTTP request gave up waiting
        second = link.submit(EnrollRequest(token, "lab", "n2", "C" * 43 + "=", "h"))
        assert second.result(timeout=10).status == 200
        assert link.alive()
    finally:
        link.stop()


# --- issue 15 item 8: `hub token create --site` checks the site exists -----------------------


def test_token_create_checks_the_site_exists(hubdir, workdir, capsys):
    d, _ = hubdir
    conf = str(d / "hub.json")
    code, out, err = run_cli(capsys, "hub", "token", "create", "--config", conf, "--site", "onprme")
    assert code == 2
    assert out == ""
    assert "error: --site: no site 'onprme'" in err
    assert "did you mean 'onprem'?" in err
    code, out, err = run_cli(capsys, "hub", "token", "create", "--config", conf, "--site", "onprem")
    assert code == 0, err
    assert out.startswith("nf1.")
    # a site the hub already serves (its tokens) is known without a profile
    code, _, err = run_cli(
        capsys, "hub", "token", "create", "--config", conf, "--site", "lab", "--new-site"
    )
    assert code == 0, err
    empty = workdir / "empty"
    empty.mkdir()
    code, _, err = run_cli(
        capsys,
        "hub",
        "token",
        "create",
        "--config",
        conf,
        "--site",
        "lab",
        "--profiles",
        str(empty),
    )
    assert code == 0, err


def test_init_json_and_the_pasted_yaml_makes_a_valid_profile(workdir, capsys):
    code, out, err = run_cli(capsys, "hub", "init", "--site", "onprem", "--json", "h")
    assert code == 0, err
    info = json.loads(out)
    assert set(info) >= {"config", "ca_cert", "ca_pin", "hub_public_key", "profile"}
    code, text, err = run_cli(capsys, "hub", "init", "--site", "onprem", "h2")
    assert code == 0, err
    site = yaml.safe_load(text)
    site.update({"extends": "onprem"})
    (workdir / "profiles" / "mine.yaml").write_text(yaml.safe_dump(site))
    code, shown, err = run_cli(capsys, "show", "mine", "--json")
    assert code == 0, err  # the pin matches the CA it names: the check_ca_pin check passed
    assert json.loads(shown)["enrollment"]["ca_pin"] == site["enrollment"]["ca_pin"]


# --- issue 15 item 9: admin output --------------------------------------------------------------


def test_token_list_columns_json_and_revoke_twice(hubdir, capsys):
    d, _ = hubdir
    conf = str(d / "hub.json")
    code, out, err = run_cli(
        capsys, "hub", "token", "create", "--config", conf, "--site", "lab", "--new-site",
        "--ttl", "2h", "--description", "rack 7",
    )  # fmt: skip
    assert code == 0, err
    assert "{" not in err  # no raw audit JSON on the terminal (it is in the hub's audit log)
    tid = out.strip().split(".")[1]
    code, out, _ = run_cli(capsys, "hub", "token", "list", "--config", conf)
    header, row = out.splitlines()
    assert header.split() == ["ID", "SITE", "USED", "APPROVE", "EXPIRES", "STATUS", "DESCRIPTION"]
    assert row.split()[:4] == [tid, "lab", "0/1", "no"] and row.split()[-3:] == [
        "valid",
        "rack",
        "7",
    ]
    for col in ("SITE", "USED", "EXPIRES", "STATUS", "DESCRIPTION"):  # aligned columns
        start = header.index(col)
        assert row[start - 2 : start] == "  " and row[start] != " "
    code, out, _ = run_cli(capsys, "hub", "token", "list", "--config", conf, "--json")
    (rec,) = json.loads(out)
    assert rec["approve"] is False and rec["status"] == "valid"
    assert rec["revoked_at"] is None and rec["description"] == "rack 7"
    created = datetime.datetime.fromisoformat(rec["created_at"])
    expires = datetime.datetime.fromisoformat(rec["expires_at"])
    assert expires - created == datetime.timedelta(hours=2)
    code, out, err = run_cli(capsys, "hub", "token", "revoke", "--config", conf, tid)
    assert code == 0 and out.strip() == f"token {tid}: revoked" and "{" not in err
    code, out, _ = run_cli(capsys, "hub", "token", "revoke", "--config", conf, tid)
    assert code == 0 and out.startswith(f"token {tid}: already revoked (")


def test_hub_nodes_shows_the_route_each_node_reported(capsys, monkeypatch):
    from builder.hub import admin

    rows = [
        {"node_id": "n1", "hostname": "h1", "ip": "10.77.0.2", "state": "joined", "site": "lab",
         "route": {"hub": "hub-b", "hub_ip": "10.77.0.3", "at": 1.0, "age": 4.0, "stale": False}},
        {"node_id": "n2", "hostname": "h2", "ip": "10.77.0.4", "state": "joined", "site": "lab",
         "route": {"hub": "hub-a", "hub_ip": "10.77.0.1", "at": 1.0, "age": 600.0, "stale": True}},
        {"node_id": "n3", "hostname": "h3", "ip": None, "state": "pending", "site": "lab",
         "route": None},
    ]  # fmt: skip
    monkeypatch.setattr(admin, "list_nodes", lambda cfg: rows)
    code, out, _ = run_cli(capsys, "hub", "nodes")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == [
        "NODE", "HOSTNAME", "ADDRESS", "STATE", "ROUTE", "SITE", "WAITING"
    ]  # fmt: skip
    assert lines[1].split() == ["n1", "h1", "10.77.0.2", "joined", "hub-b", "4s", "lab"]
    assert lines[2].split() == ["n2", "h2", "10.77.0.4", "joined", "hub-a", "stale", "10m", "lab"]
    assert lines[3].split() == ["n3", "h3", "-", "pending", "-", "lab"]
