"""Nodes fail over between hubs (issue 16): two hubs on one etcd, each in its own namespace
(etcd in hub A's, on the lab bridge), two real agents that enroll and join through hub A and
then run ``--failover``. Kill hub A (its process and its WireGuard interface: the machine is
gone) -> node a reaches node b through hub B within FAILOVER_BOUND seconds; hub A comes back
-> the route returns to it and a still reaches b."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from enroll_lab import (
    AGENT,
    BUILDER,
    REPO,
    Lab,
    hub_setup,
    missing_tools,
    node_config,
    sh,
)
from etcd_lab import EtcdCluster, missing

pytestmark = pytest.mark.integration

_missing = [*missing_tools(), *([missing()] if missing() else [])]
if _missing:
    pytest.skip(f"needs {', '.join(_missing)}", allow_module_level=True)

FAILOVER_BOUND = 20.0  # 3 probes x (1 s interval + 2 s connect timeout) + handshake, loaded box
CONNECT = (
    "import socket,sys\n"
    "s=socket.create_connection((sys.argv[1],7000),timeout=2);s.sendall(b'x');"
    "print(s.recv(64).decode())"
)
LISTEN = (
    "import socket,sys\n"
    "srv=socket.create_server((sys.argv[1],7000));print('ready',flush=True)\n"
    "while True:\n c,_=srv.accept();c.recv(8);c.sendall(b'pong');c.close()"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("failover"), f"{os.getpid() % 1000}f")
    try:
        yield lab
    finally:
        lab.close()


def configure(lab: Lab, cluster: EtcdCluster) -> tuple[dict, dict, str]:
    a = hub_setup(lab.tmp, lab.tag, "hubA", 8450, 51830, "10.103.0.0/16", per_ip_rate=0)
    nsb = lab.add_node("hb", 10)
    d = lab.tmp / "hubB"
    shutil.copytree(a["dir"], d)
    (d / "wg.key").write_text(sh(["wg", "genkey"]).stdout)
    (d / "wg.key").chmod(0o600)
    b = {**a, "dir": d, "config": d / "hub.json", "log": d / "hub.log"}
    for h, name, host, ip, other in (
        (a, "a", "192.168.77.1", "10.103.0.1", "10.103.0.2"),
        (b, "b", "192.168.77.10", "10.103.0.2", "10.103.0.1"),
    ):
        cfg = json.loads(h["config"].read_text())
        port = 8450
        cfg["listen"] = f"0.0.0.0:{port}"
        cfg["url"] = f"https://{host}:{port}"
        cfg["reconcile_seconds"] = 300
        cfg["wireguard"].update(
            interface=f"nfo{name}{lab.tag}"[:15],
            listen_port=51830,
            endpoint=f"{host}:51830",
            hub_overlay_ip=ip,
            reserved=[other],
            private_key_file=str(h["dir"] / "wg.key"),
        )
        cfg["store"] = {"kind": "etcd", "endpoints": cluster.endpoints, "prefix": "/fo",
                        "name": f"hub-{name}"}  # fmt: skip
        h["config"].write_text(json.dumps(cfg, indent=1))
        h.update(iface=cfg["wireguard"]["interface"], url=cfg["url"])
    return a, b, nsb


def start_hub(lab: Lab, ns: str, h: dict) -> subprocess.Popen:
    fh = open(h["log"], "a")  # noqa: SIM115 - the hub keeps it
    p = subprocess.Popen(
        ["ip", "netns", "exec", ns, *BUILDER, "hub", "serve", "--config", str(h["config"])],
        cwd=REPO,
        stdout=fh,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NF_STANDIN_RECORD": str(h["record"])},
    )
    lab.procs.append(p)
    return p


def wait_port(ns: str, host: str, proc: subprocess.Popen, log, t: float = 40) -> None:
    probe = f"import socket;socket.create_connection(('{host}',8450),timeout=1)"
    end = time.monotonic() + t
    while time.monotonic() < end:
        assert proc.poll() is None, log.read_text()
        if (
            sh(["ip", "netns", "exec", ns, sys.executable, "-c", probe], check=False).returncode
            == 0
        ):
            return
        time.sleep(0.3)
    raise AssertionError(log.read_text())


def reach(ns: str, ip: str) -> bool:
    p = sh(["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT, ip], check=False)
    return p.returncode == 0 and "pong" in p.stdout


def test_nodes_fail_over_to_hub_b_and_back(lab):
    cluster = EtcdCluster(lab.tmp / "etcd", members=3, host="192.168.77.1", netns=lab.hub_ns)
    cluster.start()
    try:
        _run(lab, cluster)
    finally:
        cluster.stop()


def _run(lab: Lab, cluster: EtcdCluster) -> None:
    a, b, nsb = configure(lab, cluster)
    pa = start_hub(lab, lab.hub_ns, a)
    pb = start_hub(lab, nsb, b)
    wait_port(lab.hub_ns, "192.168.77.1", pa, a["log"])
    wait_port(nsb, "192.168.77.10", pb, b["log"])
    argv = [*BUILDER, "hub", "token", "create", "--config", str(a["config"])]
    token = lab.hx([*argv, "--site", "lab", "--new-site", "--uses", "2"], cwd=REPO).stdout.strip()
    cfgs, procs = {}, {}
    for name, host in (("a", 2), ("b", 3)):
        ns = lab.add_node(name, host)
        path, cfg = node_config(lab, a, name, token)
        cfgs[name] = (path, cfg)
        env = {**os.environ, "NF_STANDIN_RECORD": str(lab.tmp / f"node-{name}" / "k.jsonl")}
        procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(AGENT), "--config", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
    for name, p in procs.items():
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, f"agent {name}:\n{out}\n{a['log'].read_text()}"
    enr = {n: json.loads((lab.tmp / f"node-{n}" / "state" / "enrollment.json").read_text())
           for n in cfgs}  # fmt: skip
    assert [h["overlay_ip"] for h in enr["a"]["other_hubs"]] == ["10.103.0.2"]
    ip_b = enr["b"]["address"]
    listener = subprocess.Popen(
        ["ip", "netns", "exec", lab.nodes["b"], sys.executable, "-c", LISTEN, ip_b],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lab.procs.append(listener)
    assert listener.stdout and listener.stdout.readline().strip() == "ready"
    assert reach(lab.nodes["a"], ip_b), "a cannot reach b through hub A"
    for name in ("a", "b"):
        path, _ = cfgs[name]
        lab.procs.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    lab.nodes[name],
                    sys.executable,
                    str(AGENT),
                    "--config",
                    str(path),
                    "--failover",
                    "--interval",
                    "1",
                ],
                stdout=open(lab.tmp / f"failover-{name}.log", "w"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        )
    time.sleep(3)
    # hub A's machine goes away: the hub process and its interface
    pa.send_signal(signal.SIGKILL)
    pa.wait(10)
    lab.hx(["ip", "link", "del", a["iface"]], check=False)
    t0 = time.monotonic()
    while not reach(lab.nodes["a"], ip_b):
        assert time.monotonic() - t0 < FAILOVER_BOUND, (
            "no failover:\n" + (lab.tmp / "failover-a.log").read_text()
        )
        time.sleep(0.5)
    took = time.monotonic() - t0
    print(f"a reaches b through hub B {took:.1f}s after hub A died")
    # hub A comes back: the route returns to it (5 good probes), nothing breaks
    pa2 = start_hub(lab, lab.hub_ns, a)
    wait_port(lab.hub_ns, "192.168.77.1", pa2, a["log"])
    end = time.monotonic() + 30
    while "hub=10.103.0.1" not in (lab.tmp / "failover-a.log").read_text():
        assert time.monotonic() < end, (lab.tmp / "failover-a.log").read_text()
        time.sleep(0.5)
    time.sleep(2)
    assert reach(lab.nodes["a"], ip_b), "a cannot reach b after hub A came back"
