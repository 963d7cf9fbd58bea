"""Node-to-node traffic flows through the hub once the hub forwards (builder/hub/routing.py).

Three namespaces made here on a private bridge: a hub with a wireguard-go interface that
holds one /32 per node (what the hub's WgInterface applies), and two nodes whose tunnel is
brought up by the real wg-quick from the config the node agent writes
(``AllowedIPs = <overlay>``: the hub is the route to every other node). The hub starts with
forwarding off and a default-drop FORWARD chain, as many cloud images have it: node A cannot
reach node B. After ``routing.enable_forwarding`` it can (TCP to a port on B's overlay
address), and a second call changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.node.agent import Agent, Config
from tests.integration.enroll_lab import Lab, missing_tools, sh

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
REPO = HERE.parents[1]
OVERLAY = "10.200.0.0/16"
HUB_IP = "10.200.0.1"
NODES = {"a": ("10.200.0.2", 2), "b": ("10.200.0.3", 3)}

CONNECT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
s.sendall(b"ping\\n"); print(s.recv(64).decode().strip())
"""
LISTEN = """
import socket
srv = socket.create_server((%r, 7000))
print("ready", flush=True)
while True:
    c, _ = srv.accept(); c.recv(64); c.sendall(b"pong from b\\n"); c.close()
"""


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    miss = missing_tools()
    if not (Path("/usr/sbin/iptables").exists() or Path("/sbin/iptables").exists()):
        miss.append("iptables")
    if miss:
        pytest.skip(f"needs {', '.join(miss)}")
    tmp = tmp_path_factory.mktemp("route")
    tag = f"r{sh(['id', '-u']).stdout.strip()}{int(time.time()) % 10000}"
    lab = Lab(tmp, tag)
    procs: list[subprocess.Popen] = []
    try:
        hub_if = f"nfr{tag}h"[:15]
        hub_key = sh(["wg", "genkey"]).stdout.strip()
        hub_pub = sh(["wg", "pubkey"], input=hub_key).stdout.strip()
        (tmp / "hub.key").write_text(hub_key + "\n")
        lab.hx(["wireguard-go", hub_if])
        lab.hx(["wg", "set", hub_if, "private-key", str(tmp / "hub.key"), "listen-port", "51820"])
        lab.hx(["ip", "address", "add", f"{HUB_IP}/16", "dev", hub_if])
        lab.hx(["ip", "link", "set", "dev", hub_if, "mtu", "1420", "up"])
        lab.hx(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
        lab.hx(["iptables", "-P", "FORWARD", "DROP"])
        agent = Agent(Config(site="lab", enroll_url="", ca_file="", token_file=""))
        nodes = {}
        for name, (addr, host) in NODES.items():
            ns = lab.add_node(name, host)
            key = sh(["wg", "genkey"]).stdout.strip()
            pub = sh(["wg", "pubkey"], input=key).stdout.strip()
            enr = {
                "address": addr,
                "overlay_cidr": OVERLAY,
                "hub": {"pubkey": hub_pub, "endpoint": "192.168.77.1:51820"},
                "mtu": 1420,
                "keepalive": 1,
            }
            iface = f"nfr{tag}{name}"[:15]
            conf = tmp / name / f"{iface}.conf"
            conf.parent.mkdir()
            conf.write_text(agent.wg_conf(enr, key))
            conf.chmod(0o600)
            sh(["ip", "netns", "exec", ns, "wg-quick", "up", str(conf)])
            lab.hx(["wg", "set", hub_if, "peer", pub, "allowed-ips", f"{addr}/32"])
            nodes[name] = {"ns": ns, "iface": iface, "conf": conf, "addr": addr}
        listener = subprocess.Popen(
            ["ip", "netns", "exec", nodes["b"]["ns"], sys.executable, "-c", LISTEN % NODES["b"][0]],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(listener)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        yield {"lab": lab, "hub_if": hub_if, "nodes": nodes, "tmp": tmp}
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
        lab.close()


def connect(net, src: str, dst: str, timeout: float) -> subprocess.CompletedProcess[str]:
    ns = net["nodes"][src]["ns"]
    return sh(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT, dst, "7000", str(timeout)],
        check=False,
        timeout=timeout + 30,
    )


def enable(net) -> list[str]:
    spec = json.dumps({"enable": net["hub_if"]})
    p = net["lab"].hx([sys.executable, str(HERE / "doctor_client.py"), spec], cwd=REPO)
    return json.loads(p.stdout.strip().splitlines()[-1])["done"]


def wait_handshakes(net, t: float = 20) -> None:
    deadline = time.monotonic() + t
    while time.monotonic() < deadline:
        dump = net["lab"].wg_dump(net["lab"].hub_ns, net["hub_if"])
        if len(dump) == 2 and all(int(f[4]) > 0 for f in dump):
            return
        time.sleep(0.3)
    raise AssertionError(f"no handshake with both nodes: {dump}")


def test_node_a_reaches_node_b_through_the_hub_only_after_forwarding_is_on(net):
    a = net["nodes"]["a"]
    # the agent's config routes the whole overlay to the hub (its only peer)
    route = sh(["ip", "netns", "exec", a["ns"], "ip", "-4", "route", "get", NODES["b"][0]])
    assert f"dev {a['iface']}" in route.stdout
    assert f"AllowedIPs = {OVERLAY}" in a["conf"].read_text()
    wait_handshakes(net)

    before = connect(net, "a", NODES["b"][0], timeout=3)
    assert before.returncode != 0, before.stdout  # hub does not forward yet

    assert enable(net) == [
        "net.ipv4.ip_forward=1",
        f"iptables -I FORWARD 1 -i {net['hub_if']} -o {net['hub_if']} -j ACCEPT",
    ]
    after = connect(net, "a", NODES["b"][0], timeout=10)
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == "pong from b"
    assert enable(net) == []  # idempotent

    # both nodes' traffic went through the hub: it received from A and sent to B
    dump = {f[3]: f for f in net["lab"].wg_dump(net["lab"].hub_ns, net["hub_if"])}
    assert int(dump[f"{NODES['a'][0]}/32"][5]) > 0  # rx from A
    assert int(dump[f"{NODES['b'][0]}/32"][6]) > 0  # tx to B
