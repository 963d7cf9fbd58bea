"""First-boot enrollment end to end, with real WireGuard (wireguard-go) in network namespaces.

A real `builder hub serve` in one namespace, the real node agent in two others; stand-in
`kubeadm` executables (named so) on both sides because no cluster is reachable here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from enroll_lab import AGENT, BUILDER, REPO, Lab, missing_tools, records, sh, standin

pytestmark = pytest.mark.integration

_missing = missing_tools()
if _missing:
    pytest.skip(
        f"needs {', '.join(_missing)} for WireGuard in network namespaces", allow_module_level=True
    )

URL = "https://192.168.77.1:8443"


def builder(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh([*BUILDER, *args], check=check, cwd=REPO)


def hub_setup(
    tmp: Path, tag: str, name: str, port: int, wg_port: int, cidr: str, **limits: float
) -> dict:
    d = tmp / name
    out = builder(
        "hub",
        "init",
        str(d),
        "--endpoint",
        f"192.168.77.1:{wg_port}",
        "--url",
        f"https://192.168.77.1:{port}",
        "--overlay-cidr",
        cidr,
        "--san",
        "127.0.0.1",
        "--json",
    ).stdout
    info = json.loads(out)
    cfg = json.loads((d / "hub.json").read_text())
    cfg["wireguard"]["interface"] = f"nf{name[0]}{tag}w"[:15]
    hub_kubeadm = standin("kubeadm_hub.py", d / "standin-bin")
    cluster_ca = d / "cluster-ca.pem"
    cluster_ca.write_bytes((d / "ca.pem").read_bytes())  # any CA: the hash is what matters
    cfg["join"] = {
        "provider": "kubeadm",
        "kubeadm": str(hub_kubeadm),
        "kubeconfig": "",
        "cluster_ca": str(cluster_ca),
        "api_server": "10.100.0.1:6443",
        "ttl": "1h",
        "labels": {"nodeforge.io/enrolled": "true"},
        "taints": [],
    }
    cfg["limits"] = {**cfg.get("limits", {}), **limits}
    cfg["reconcile_seconds"] = 5
    cfg["pending_retry_seconds"] = 1
    (d / "hub.json").write_text(json.dumps(cfg, indent=1))
    return {
        "dir": d,
        "config": d / "hub.json",
        "ca": d / "ca.pem",
        "pin": info["ca_pin"],
        "pubkey": info["hub_public_key"],
        "iface": cfg["wireguard"]["interface"],
        "url": f"https://192.168.77.1:{port}",
        "record": d / "hub-kubeadm.jsonl",
        "log": d / "hub.log",
    }


def db_nodes(hub: dict) -> list[sqlite3.Row]:
    c = sqlite3.connect(hub["dir"] / "hub.db")
    c.row_factory = sqlite3.Row
    try:
        return c.execute("SELECT * FROM nodes").fetchall()
    finally:
        c.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    tag = str(os.getpid() % 10000)
    tmp = tmp_path_factory.mktemp("enroll")
    lab = Lab(tmp, tag)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def hub(lab):
    h = hub_setup(
        lab.tmp, lab.tag, "hub", 8443, 51820, "10.100.0.0/16", per_ip_rate=2, per_ip_burst=25
    )
    proc = lab.start_hub(h["config"], h["log"], {"NF_STANDIN_RECORD": str(h["record"])})
    lab.wait_healthy(h["url"], h["ca"], proc, h["log"])
    h["proc"] = proc
    return h


def node_config(lab: Lab, hub: dict, name: str, token: str) -> tuple[Path, dict]:
    d = lab.tmp / f"node-{name}"
    d.mkdir()
    (d / "token").write_text(token + "\n")
    (d / "token").chmod(0o600)
    kubeadm = standin("kubeadm_node.py", d / "bin")
    cfg = {
        "site": "lab",
        "enroll_url": hub["url"],
        "ca_file": str(hub["ca"]),
        "ca_pin": hub["pin"],
        "token_file": str(d / "token"),
        "interface": f"nf{name}{lab.tag}n"[:15],
        "image_version": "test",
        "build_time": int(time.time()) - 3600,
        "labels": {"nodeforge.io/site": "lab"},
        "taints": [{"key": "nodeforge.io/new", "value": "true", "effect": "NoSchedule"}],
        "state_dir": str(d / "state"),
        "wireguard_dir": str(d / "wireguard"),
        "run_dir": str(d / "run"),
        "sys_dir": str(d / "sys"),
        "kubeadm": str(kubeadm),
        "enable_wg_unit": False,
        "hostname": f"node-{name}",
        "handshake_timeout": 20,
        "retry_max_seconds": 5,
    }
    path = d / "node.json"
    path.write_text(json.dumps(cfg))
    return path, cfg


def test_two_nodes_enroll_handshake_and_join_through_the_tunnel(lab, hub):
    token = builder(
        "hub",
        "token",
        "create",
        "--config",
        str(hub["config"]),
        "--site",
        "lab",
        "--new-site",  # no profile named lab: a lab-only site
        "--uses",
        "2",
        "--ttl",
        "1h",
    ).stdout.strip()
    procs = {}
    cfgs = {}
    for name, host in (("a", 2), ("b", 3)):
        ns = lab.add_node(name, host)
        path, cfg = node_config(lab, hub, name, token)
        cfgs[name] = cfg
        env = {**os.environ, "NF_STANDIN_RECORD": str(lab.tmp / f"node-{name}" / "kubeadm.jsonl")}
        if name == "b":  # node b's first kubeadm join fails: reset -f + fresh material
            env["NF_STANDIN_FAIL_FIRST_JOIN"] = str(lab.tmp / "node-b" / "failed-once")
        procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(AGENT), "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    logs = {}
    for name, p in procs.items():
        out, _ = p.communicate(timeout=180)
        logs[name] = out
        assert p.returncode == 0, f"agent {name} failed:\n{out}\nhub log:\n{hub['log'].read_text()}"
        assert "nodeforge-enroll: step=done" in out
    nodes = {r["hostname"]: r for r in db_nodes(hub)}
    assert set(nodes) == {"node-a", "node-b"}
    addrs = {n: r["ip"] for n, r in nodes.items()}
    assert len(set(addrs.values())) == 2 and all(a.startswith("10.100.") for a in addrs.values())
    assert "10.100.0.1" not in addrs.values() and "10.100.0.0" not in addrs.values()
    assert all(r["state"] == "joined" for r in nodes.values())

    # hub DB and `wg show` agree, with real handshakes
    dump = {f[0]: f for f in lab.wg_dump(lab.hub_ns, hub["iface"])}
    assert set(dump) == {r["pubkey"] for r in nodes.values()}
    for r in nodes.values():
        assert dump[r["pubkey"]][3] == f"{r['ip']}/32"
        assert int(dump[r["pubkey"]][4]) > 0, "no handshake on the hub side"
    hub_tokens = [e for e in records(hub["record"]) if e["argv"][:2] == ["token", "create"]]
    deleted = [e["argv"][2] for e in records(hub["record"]) if e["argv"][:2] == ["token", "delete"]]
    for name in ("a", "b"):
        ns = lab.nodes[name]
        iface = cfgs[name]["interface"]
        hs = sh(
            ["ip", "netns", "exec", ns, "wg", "show", iface, "latest-handshakes"]
        ).stdout.split()
        assert hs[0] == hub["pubkey"] and int(hs[1]) > 0
        conf = Path(cfgs[name]["wireguard_dir"]) / f"{iface}.conf"
        assert oct(conf.stat().st_mode & 0o777) == "0o600"
        assert "SaveConfig" not in conf.read_text().split("[Interface]", 1)[1]
        key = Path(cfgs[name]["state_dir"]) / "wg.key"
        assert oct(key.stat().st_mode & 0o777) == "0o600"
        assert (Path(cfgs[name]["state_dir"]) / "joined").exists()
        # the stand-in kubeadm got a v1beta4 JoinConfiguration with node-ip = overlay address
        recs = records(lab.tmp / f"node-{name}" / "kubeadm.jsonl")
        joins = [e for e in recs if e["argv"][0] == "join"]
        assert joins and joins[-1]["problems"] == []
        cfg = joins[-1]["config"]
        args = {a["name"]: a["value"] for a in cfg["nodeRegistration"]["kubeletExtraArgs"]}
        assert args["node-ip"] == addrs[f"node-{name}"]
        assert "nodeforge.io/site=lab" in args["node-labels"]
        assert "nodeforge.io/enrolled=true" in args["node-labels"]
        assert cfg["nodeRegistration"]["taints"][0]["key"] == "nodeforge.io/new"
        assert joins[-1]["mode"] == "0o600"
        assert joins[-1]["config_path"].startswith(cfgs[name]["run_dir"])
        assert not Path(joins[-1]["config_path"]).exists(), "join config (token) left behind"
        # the token it used was minted by the hub for this node (through the tunnel) and deleted
        used = cfg["discovery"]["bootstrapToken"]["token"]
        minted = [e for e in hub_tokens if e["token"] == used]
        assert minted and nodes[f"node-{name}"]["node_id"] in " ".join(minted[0]["argv"])
        assert used.split(".")[0] in deleted
    # the hub's audit log saw the join material leave through the tunnel (overlay source)
    c = sqlite3.connect(hub["dir"] / "hub.db")
    audit = c.execute("SELECT event, node_id, remote FROM audit").fetchall()
    c.close()
    for r in nodes.values():
        assert ("node.join_material", r["node_id"], r["ip"]) in audit
        assert ("node.complete", r["node_id"], r["ip"]) in audit
    # node b failed once: reset -f, then fresh material (a second token)
    recs_b = records(lab.tmp / "node-b" / "kubeadm.jsonl")
    assert [e["argv"][:2] for e in recs_b] == [
        ["join", "--config"],
        ["reset", "-f"],
        ["join", "--config"],
    ]
    toks_b = [
        e["config"]["discovery"]["bootstrapToken"]["token"]
        for e in recs_b
        if e["argv"][0] == "join"
    ]
    assert toks_b[0] != toks_b[1]
    assert "step=join" in logs["b"] and "step=handshake" in logs["a"]

    # join material is refused outside the tunnel, even with the right node secret
    enr = json.loads((Path(cfgs["a"]["state_dir"]) / "enrollment.json").read_text())
    r = lab.client(
        lab.nodes["a"],
        "request",
        "--url",
        hub["url"],
        "--ca",
        str(hub["ca"]),
        "--method",
        "GET",
        "--path",
        "/v1/join",
        "--token",
        enr["node_secret"],
    )
    assert r["status"] == 403
    # through the tunnel with a wrong secret
    r = lab.client(
        lab.nodes["a"],
        "request",
        "--url",
        "https://10.100.0.1:8443",
        "--ca",
        str(hub["ca"]),
        "--method",
        "GET",
        "--path",
        "/v1/join",
        "--token",
        "nfs1.wrong",
    )
    assert r["status"] == 401
    # and through the tunnel from node b with node a's secret (address and key mismatch)
    r = lab.client(
        lab.nodes["b"],
        "request",
        "--url",
        "https://10.100.0.1:8443",
        "--ca",
        str(hub["ca"]),
        "--method",
        "GET",
        "--path",
        "/v1/join",
        "--token",
        enr["node_secret"],
    )
    assert r["status"] == 401

    # a second run of the agent is a no-op (joined marker), the unit would not even start
    p = sh(
        [
            "ip",
            "netns",
            "exec",
            lab.nodes["a"],
            sys.executable,
            str(AGENT),
            "--config",
            str(lab.tmp / "node-a" / "node.json"),
        ]
    )
    assert "already joined" in p.stderr

    # revoke node a: peer removed from the live interface, address quarantined
    builder("hub", "revoke", "--config", str(hub["config"]), nodes["node-a"]["node_id"])
    dump = {f[0] for f in lab.wg_dump(lab.hub_ns, hub["iface"])}
    # the CLI runs in the root namespace: the hub's periodic reconcile removes the peer
    deadline = time.monotonic() + 15
    while nodes["node-a"]["pubkey"] in dump and time.monotonic() < deadline:
        time.sleep(0.5)
        dump = {f[0] for f in lab.wg_dump(lab.hub_ns, hub["iface"])}
    assert nodes["node-a"]["pubkey"] not in dump and nodes["node-b"]["pubkey"] in dump


def _agent(lab: Lab, name: str, path: Path) -> subprocess.Popen:
    env = {**os.environ, "NF_STANDIN_RECORD": str(lab.tmp / f"node-{name}" / "kubeadm.jsonl")}
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.nodes[name], sys.executable, str(AGENT), "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def test_approval_then_reinstall_keeps_the_address(lab, hub):
    conf = str(hub["config"])
    token = builder(
        "hub",
        "token",
        "create",
        "--config",
        conf,
        "--site",
        "lab",
        "--new-site",
        "--uses",
        "2",
        "--approve",
    ).stdout.strip()
    lab.add_node("c", 4)
    path, cfg = node_config(lab, hub, "c", token)
    dmi = Path(cfg["sys_dir"]) / "class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_uuid").write_text("4c4c4544-0031-3510-8052-b4c04f333232\n")
    p = _agent(lab, "c", path)
    deadline = time.monotonic() + 60
    pending = []
    while time.monotonic() < deadline and not pending:
        pending = [
            r for r in db_nodes(hub) if r["hostname"] == "node-c" and r["state"] == "pending"
        ]
        time.sleep(0.3)
    assert pending and pending[0]["ip"] is None, "node c never showed up as pending"
    time.sleep(1.5)
    assert p.poll() is None, "the agent must keep polling while pending"
    out = builder("hub", "approve", "--config", conf, pending[0]["node_id"]).stdout.split()
    out_log, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out_log
    assert "pending approval" in out_log
    first = {r["node_id"]: r for r in db_nodes(hub)}[pending[0]["node_id"]]
    assert first["ip"] == out[1] and first["state"] == "joined"

    # reinstall: the disk is wiped (new key, new node_id), same hardware (DMI fingerprint)
    sh(
        [
            "ip",
            "netns",
            "exec",
            lab.nodes["c"],
            "wg-quick",
            "down",
            str(Path(cfg["wireguard_dir"]) / f"{cfg['interface']}.conf"),
        ]
    )
    shutil.rmtree(cfg["state_dir"])
    p = _agent(lab, "c", path)
    out_log, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out_log
    rows = [r for r in db_nodes(hub) if r["hostname"] == "node-c"]
    assert len(rows) == 1
    again = rows[0]
    assert again["ip"] == first["ip"] and again["pubkey"] != first["pubkey"]
    assert again["node_id"] != first["node_id"] and again["state"] == "joined"
    dump = {f[0]: f for f in lab.wg_dump(lab.hub_ns, hub["iface"])}
    assert first["pubkey"] not in dump, "the old peer of reinstalled hardware is still there"
    assert dump[again["pubkey"]][3] == f"{first['ip']}/32" and int(dump[again["pubkey"]][4]) > 0


def _req(lab, hub, *args):
    return lab.client(lab.hub_ns, "request", "--url", hub["url"], "--ca", str(hub["ca"]), *args)


def test_abuse_gets_the_right_status_and_writes_nothing(lab, hub):
    cfgp = str(hub["config"])
    good = builder(
        "hub", "token", "create", "--config", cfgp, "--site", "lab", "--new-site", "--uses", "1"
    ).stdout.strip()
    before = len(db_nodes(hub))
    body = json.dumps(
        {"site": "lab", "node_id": "abuse-1", "hostname": "x", "wg_pubkey": "x" * 43 + "="}
    )  # not canonical base64
    valid = json.dumps(
        {
            "site": "lab",
            "node_id": "abuse-2",
            "hostname": "x",
            "wg_pubkey": "8K3Xu6vxE2T0fJ0BqV3X8q0y8mDHb2lZb4l9jX0G5Fo=",
        }
    )
    assert _req(lab, hub, "--token", good, "--body-raw", "{not json")["status"] == 400
    assert _req(lab, hub, "--token", good, "--body-raw", body)["status"] == 400  # bad key
    assert _req(lab, hub, "--token", good, "--body-size", "100000")["status"] == 413
    assert _req(lab, hub, "--body-raw", valid)["status"] == 401  # no token
    assert _req(lab, hub, "--token", "garbage", "--body-raw", valid)["status"] == 401
    assert _req(lab, hub, "--token", good[:-4] + "AAAA", "--body-raw", valid)["status"] == 401
    r = _req(lab, hub, "--path", f"/v1/enroll?token={good}", "--body-raw", valid)
    assert r["status"] == 400 and "Authorization" in r["body"]["error"]
    expired = builder(
        "hub", "token", "create", "--config", cfgp, "--site", "lab", "--new-site", "--ttl", "1s"
    ).stdout.strip()
    revoked = builder(
        "hub", "token", "create", "--config", cfgp, "--site", "lab", "--new-site"
    ).stdout.strip()
    builder("hub", "token", "revoke", "--config", cfgp, revoked.split(".")[1])
    other_site = builder(
        "hub", "token", "create", "--config", cfgp, "--site", "other", "--new-site"
    ).stdout.strip()
    time.sleep(1.2)
    assert _req(lab, hub, "--token", expired, "--body-raw", valid)["status"] == 403
    assert _req(lab, hub, "--token", revoked, "--body-raw", valid)["status"] == 403
    assert _req(lab, hub, "--token", other_site, "--body-raw", valid)["status"] == 403
    assert len(db_nodes(hub)) == before, "a refused request wrote a node"
    # use the one-use token, then it is used up for any other node
    assert _req(lab, hub, "--token", good, "--body-raw", valid)["status"] == 200
    again = valid.replace("abuse-2", "abuse-3").replace("8K3X", "9K3X")
    r = _req(lab, hub, "--token", good, "--body-raw", again)
    assert r["status"] == 403 and "used up" in r["body"]["error"]
    # a replay of the same node is still answered (same address) without a use
    assert _req(lab, hub, "--token", good, "--body-raw", valid)["status"] == 200
    # flood from one address: 429 with Retry-After, the hub stays healthy
    lab.hx(["ip", "address", "add", "192.168.77.50/24", "dev", "br0"])
    r = lab.client(
        lab.hub_ns,
        "flood",
        "--url",
        hub["url"],
        "--ca",
        str(hub["ca"]),
        "--bind",
        "192.168.77.50",
        "--n",
        "100",
    )
    assert r["counts"].get("429", 0) > 0 and r["retry_after"]
    assert r["counts"].get("0", 0) == 0, "connections dropped under flood"
    assert _req(lab, hub, "--method", "GET", "--path", "/healthz")["status"] == 200
    assert hub["proc"].poll() is None
    m = _req(lab, hub, "--method", "GET", "--path", "/metrics")
    assert 'nodeforge_hub_requests_total{path="/v1/enroll",code="429"}' in m["body"]
    assert len(db_nodes(hub)) == before + 1


def test_kill_9_during_a_burst_loses_nothing_and_duplicates_nothing(lab):
    h = hub_setup(
        lab.tmp, lab.tag, "crash", 8444, 51821, "10.101.0.0/16", per_ip_rate=0, per_token_rate=0
    )
    proc = lab.start_hub(h["config"], h["log"], {"NF_STANDIN_RECORD": str(h["record"])})
    lab.wait_healthy(h["url"], h["ca"], proc, h["log"])
    n = 300
    token = builder(
        "hub",
        "token",
        "create",
        "--config",
        str(h["config"]),
        "--site",
        "lab",
        "--new-site",
        "--uses",
        str(n),
    ).stdout.strip()
    out = lab.tmp / "burst.jsonl"
    burst = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.hub_ns,
            sys.executable,
            str(Path(__file__).with_name("enroll_client.py")),
            "burst",
            "--url",
            h["url"],
            "--ca",
            str(h["ca"]),
            "--token",
            token,
            "--n",
            str(n),
            "--threads",
            "24",
            "--prefix",
            "crash",
            "--out",
            str(out),
        ]
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ok = [r for r in records(out) if r["status"] == 200]
        if len(ok) >= 40:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    burst.wait(timeout=120)
    first = records(out)
    got = {r["node_id"]: r for r in first if r["status"] == 200}
    assert 0 < len(got) < n, f"kill landed outside the burst ({len(got)} of {n})"
    proc2 = lab.start_hub(h["config"], h["log"], {"NF_STANDIN_RECORD": str(h["record"])})
    lab.wait_healthy(h["url"], h["ca"], proc2, h["log"])
    db = {r["node_id"]: r for r in db_nodes(h)}
    dump = lab.wg_dump(lab.hub_ns, h["iface"])
    wg_ips = [f[3] for f in dump]
    wg_by_key = {f[0]: f[3] for f in dump}
    for node_id, r in got.items():  # every 200 is in the DB and on the interface
        assert db[node_id]["ip"] == r["address"] and db[node_id]["pubkey"] == r["pubkey"]
        assert wg_by_key[r["pubkey"]] == f"{r['address']}/32"
    ips = [r["ip"] for r in db.values() if r["ip"]]
    assert len(ips) == len(set(ips)) and len(wg_ips) == len(set(wg_ips))
    # the rest succeed on retry (replays for the ones committed before the kill)
    rest = [str(r["i"]) for r in first if r["status"] != 200]
    out2 = lab.tmp / "burst2.jsonl"
    sh(
        [
            "ip",
            "netns",
            "exec",
            lab.hub_ns,
            sys.executable,
            str(Path(__file__).with_name("enroll_client.py")),
            "burst",
            "--url",
            h["url"],
            "--ca",
            str(h["ca"]),
            "--token",
            token,
            "--n",
            str(n),
            "--threads",
            "8",
            "--prefix",
            "crash",
            "--out",
            str(out2),
            "--only",
            ",".join(rest),
        ],
        timeout=300,
    )
    second = records(out2)
    assert len(second) == len(rest) and all(r["status"] == 200 for r in second), [
        r for r in second if r["status"] != 200
    ][:3]
    final = {r["node_id"]: r for r in db_nodes(h)}
    assert len(final) == n
    ips = [r["ip"] for r in final.values()]
    assert len(set(ips)) == n
    dump = lab.wg_dump(lab.hub_ns, h["iface"])
    assert {f[0]: f[3] for f in dump} == {r["pubkey"]: f"{r['ip']}/32" for r in final.values()}
    c = sqlite3.connect(h["dir"] / "hub.db")
    used = c.execute("SELECT used FROM tokens").fetchone()[0]
    c.close()
    assert used == n, "a replay used the token again"
    proc2.send_signal(signal.SIGTERM)
    proc2.wait(timeout=15)


def test_systemctl_shim_passes_kubelet_jobs_without_ordering(tmp_path):
    """The shim the agent puts first on kubeadm's PATH, run by a real /bin/sh."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nodeforge_agent_shim", AGENT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["nodeforge_agent_shim"] = mod
    spec.loader.exec_module(mod)
    rec = tmp_path / "calls"
    real = tmp_path / "real-systemctl"
    real.write_text(f'#!/bin/sh\necho "$*" >> {rec}\n')
    real.chmod(0o755)
    shim = tmp_path / "systemctl"
    shim.write_text(mod.SYSTEMCTL_SHIM.replace("@REAL@", str(real)))
    shim.chmod(0o755)
    for args in (
        ["daemon-reload"],
        ["restart", "kubelet"],
        ["is-active", "kubelet.service"],
        ["restart", "crio"],
    ):
        sh([str(shim), *args])
    assert rec.read_text().splitlines() == [
        "daemon-reload",
        "--job-mode=ignore-dependencies restart kubelet",
        "--job-mode=ignore-dependencies is-active kubelet.service",
        "restart crio",
    ]
