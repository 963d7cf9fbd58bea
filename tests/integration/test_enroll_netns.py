"""First-boot enrollment end to end, with real WireGuard (wireguard-go) in network namespaces.

A real `builder hub serve` in one namespace, the real node agent in two others; stand-in
`kubeadm` executables (named so) on both sides because no cluster is reachable here.
"""

from __future__ import annotations

import contextlib
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
from enroll_lab import (
    AGENT,
    Lab,
    builder,
    db_nodes,
    hub_setup,
    missing_tools,
    node_config,
    records,
    sh,
    start_agent,
)

pytestmark = pytest.mark.integration

_missing = missing_tools()
if _missing:
    pytest.skip(
        f"needs {', '.join(_missing)} for WireGuard in network namespaces", allow_module_level=True
    )


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


def test_the_hub_turns_on_forwarding_for_node_to_node_traffic(lab, hub):
    """Issue 13: node <-> node traffic goes through the hub. A new namespace starts with
    forwarding off; the running hub has turned it on (builder.hub.routing)."""
    assert lab.hx(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"


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
        # what the operator's screen shows: joined, with the overlay address
        said = (lab.tmp / f"node-{name}" / "console").read_bytes().decode()
        addr = addrs[f"node-{name}"]
        assert said == f"\r\nnodeforge-enroll: joined the cluster: overlay address {addr}\r\n"
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
    # and through the tunnel from node b with node a's secret: the secret is bound to the
    # node at the source address (node b), so this 401 comes from the secret check. The
    # WireGuard peer check after it (api.py tunnel_node) cannot be reached through a real
    # tunnel (WireGuard drops packets whose source is not the peer's allowed-ip); it is
    # isolated in tests/unit/test_hub_routes.py::test_the_tunnel_check_is_what_refuses.
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
    p = start_agent(lab, "c", path)
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
    assert not Path(cfg["token_file"]).exists(), "the agent kept its used token"
    Path(cfg["token_file"]).write_text(token + "\n")  # the reinstall brings its token again
    p = start_agent(lab, "c", path)
    # the fingerprint is a claim: the new identity waits for the operator, the old one
    # keeps its address and peer meanwhile
    deadline = time.monotonic() + 60
    claim = []
    while time.monotonic() < deadline and not claim:
        claim = [r for r in db_nodes(hub) if r["replaces"] == first["node_id"]]
        time.sleep(0.3)
    assert claim and claim[0]["state"] == "pending" and claim[0]["ip"] is None
    assert {r["node_id"]: r for r in db_nodes(hub)}[first["node_id"]]["state"] == "joined"
    assert first["pubkey"] in {f[0] for f in lab.wg_dump(lab.hub_ns, hub["iface"])}
    out = builder("hub", "approve", "--config", conf, claim[0]["node_id"]).stdout.split()
    assert out[1] == first["ip"]
    out_log, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out_log
    rows = {r["node_id"]: r for r in db_nodes(hub) if r["hostname"] == "node-c"}
    assert rows[first["node_id"]]["state"] == "revoked"
    again = rows[claim[0]["node_id"]]
    assert again["ip"] == first["ip"] and again["pubkey"] != first["pubkey"]
    assert again["state"] == "joined"
    dump = {f[0]: f for f in lab.wg_dump(lab.hub_ns, hub["iface"])}
    assert first["pubkey"] not in dump, "the old peer of reinstalled hardware is still there"
    assert dump[again["pubkey"]][3] == f"{first['ip']}/32" and int(dump[again["pubkey"]][4]) > 0


def test_a_token_holder_cannot_take_over_an_active_node(lab, hub):
    """Issue 14 finding 1, with the real agent: a site token, an active node's node_id (or
    just its fingerprint) gave its address, a new secret, and removed its peer."""
    conf = str(hub["config"])
    own = builder(
        "hub", "token", "create", "--config", conf, "--site", "lab", "--new-site"
    ).stdout.strip()
    site = builder(
        "hub", "token", "create", "--config", conf, "--site", "lab", "--new-site", "--uses", "5"
    ).stdout.strip()
    lab.add_node("v", 5)
    vpath, vcfg = node_config(lab, hub, "v", own)
    dmi = Path(vcfg["sys_dir"]) / "class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_uuid").write_text("0e2d5f3c-0000-4000-8000-victim000001\n")
    p = start_agent(lab, "v", vpath)
    out_log, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out_log
    victim = next(r for r in db_nodes(hub) if r["hostname"] == "node-v")
    assert victim["state"] == "joined"
    lab.add_node("x", 6)
    for attempt in ("node_id", "fingerprint"):
        xpath, xcfg = node_config(lab, hub, f"x{attempt[0]}", site)
        xcfg["interface"] = f"nfx{lab.tag}n"[:15]
        Path(xpath).write_text(json.dumps(xcfg))
        state = Path(xcfg["state_dir"])
        state.mkdir(parents=True)
        if attempt == "node_id":
            (state / "node_id").write_text(victim["node_id"] + "\n")
        else:
            xdmi = Path(xcfg["sys_dir"]) / "class/dmi/id"
            xdmi.mkdir(parents=True)
            (xdmi / "product_uuid").write_text("0e2d5f3c-0000-4000-8000-victim000001\n")
        env = {**os.environ, "NF_STANDIN_RECORD": str(state / "kubeadm.jsonl")}
        x = subprocess.Popen(
            ["ip", "netns", "exec", lab.nodes["x"], sys.executable, str(AGENT)]
            + ["--config", str(xpath)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and x.poll() is None:
                time.sleep(0.5)
                if (state / "enrollment.json").exists():
                    break
                rows = db_nodes(hub)
                if attempt == "node_id" and any(r["pending_pubkey"] for r in rows):
                    break
                if attempt == "fingerprint" and any(
                    r["replaces"] == victim["node_id"] for r in rows
                ):
                    break
            assert not (state / "enrollment.json").exists(), "the thief got an enrollment"
        finally:
            x.kill()
            log, _ = x.communicate(timeout=30)
        assert "step=done" not in log and "pending approval" in log, log
        now = {r["node_id"]: r for r in db_nodes(hub)}[victim["node_id"]]
        assert (now["pubkey"], now["ip"], now["state"], now["generation"]) == (
            victim["pubkey"],
            victim["ip"],
            "joined",
            victim["generation"],
        )
        dump = {f[0]: f for f in lab.wg_dump(lab.hub_ns, hub["iface"])}
        assert dump[victim["pubkey"]][3] == f"{victim['ip']}/32", "the victim's peer is gone"
    # the victim itself, its key lost and its token gone, proves itself with its secret
    sh(
        [
            "ip",
            "netns",
            "exec",
            lab.nodes["v"],
            "wg-quick",
            "down",
            str(Path(vcfg["wireguard_dir"]) / f"{vcfg['interface']}.conf"),
        ]
    )
    (Path(vcfg["state_dir"]) / "wg.key").unlink()
    (Path(vcfg["state_dir"]) / "joined").unlink()
    assert not Path(vcfg["token_file"]).exists()
    p = start_agent(lab, "v", vpath)
    out_log, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out_log
    rekeyed = {r["node_id"]: r for r in db_nodes(hub)}[victim["node_id"]]
    assert rekeyed["ip"] == victim["ip"] and rekeyed["pubkey"] != victim["pubkey"]
    assert rekeyed["state"] == "joined"


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


def hub_rss_mb(pid: int) -> float:
    """Resident memory of the hub process and its children (the writer), in MiB."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            pids += [int(x) for x in (task / "children").read_text().split()]
    kb = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kb += int(line.split()[1])
    return kb / 1024


def test_hostile_clients_do_not_lock_out_nodes(lab):
    """Issue 14 finding 2: 600 slow connections from 6 addresses let 1 of 24 requests
    through, 2,000 idle TCP connections 0 of 26; unterminated headers cost ~5 MB each.
    Done when >= 95% of well-formed requests from other addresses are answered within 2 s
    under each flood, and the hub grows by <= 64 MB under a header flood."""
    h = hub_setup(
        lab.tmp, lab.tag, "flood", 8446, 51823, "10.103.0.0/16", per_ip_rate=0, per_token_rate=0
    )
    proc = lab.start_hub(h["config"], h["log"], {"NF_STANDIN_RECORD": str(h["record"])})
    lab.wait_healthy(h["url"], h["ca"], proc, h["log"])
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
        "1000",
    ).stdout.strip()
    bad = [f"192.168.77.{i}" for i in range(100, 106)]  # 6 hostile addresses
    idle = [f"192.168.77.{i}" for i in range(10, 74)]  # 64 x 32 = 2,048 idle connections
    good = [f"192.168.77.{i}" for i in range(200, 204)]
    for a in bad + idle + good:
        lab.hx(["ip", "address", "add", f"{a}/24", "dev", "br0"], check=False)
    flood = [sys.executable, str(Path(__file__).with_name("enroll_flood.py"))]
    # the attackers' CPU is not the hub's in real life: here they share 2 cores, so the
    # flooding process runs at the lowest priority (the probe at the normal one)
    nice = ["nice", "-n", "19"]
    where = ["--host", "192.168.77.1", "--port", "8446", "--ca", str(h["ca"])]
    figures = {}
    for mode, sources, per_source in (
        ("slow", bad, 100),
        ("idle", idle, 32),
        ("headers", bad, 100),
    ):
        rss0 = hub_rss_mb(proc.pid)
        f = subprocess.Popen(
            ["ip", "netns", "exec", lab.hub_ns, *nice, *flood, "flood", "--mode", mode, *where]
            + ["--sources", ",".join(sources), "--per-source", str(per_source)]
            + ["--seconds", "30"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(8)  # the flood is in full swing
            peak = [hub_rss_mb(proc.pid)]
            p = subprocess.Popen(
                ["ip", "netns", "exec", lab.hub_ns, *flood, "probe", *where]
                + ["--sources", ",".join(good), "--token", token, "--n", "40"],
                stdout=subprocess.PIPE,
                text=True,
            )
            while p.poll() is None:
                peak.append(hub_rss_mb(proc.pid))
                time.sleep(0.2)
            res = json.loads(p.communicate(timeout=60)[0])
        finally:
            f.terminate()  # the probe is done: the rest of the 30 s flood would measure nothing
            out, _ = f.communicate(timeout=90)
        lat, st = res["latencies"], res["statuses"]
        ok = sum(1 for t, s in zip(lat, st, strict=True) if 0 <= t <= 2.0 and s == 200)
        figures[mode] = {
            "answered_2s": f"{ok}/{len(lat)}",
            "p_max_s": round(max(lat), 3),
            "rss_growth_mb": round(max(peak) - rss0, 1),
            "flood": json.loads(out),
        }
        assert proc.poll() is None, h["log"].read_text()[-3000:]
        assert ok >= 0.95 * len(lat), (mode, figures[mode])
    print("flood figures:", json.dumps(figures))
    assert figures["headers"]["rss_growth_mb"] <= 64, figures
    log = h["log"].read_text()
    assert log.count("dropping a connection") < 200, "dropped connections are logged unbounded"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
