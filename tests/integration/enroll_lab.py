"""A private network for enrollment tests: one hub namespace with a bridge, node namespaces
joined to it by veth pairs. All traffic stays inside namespaces created here.

hub ns:   lo, br0 192.168.77.1/24 (+ extra addresses for flood tests), hub WireGuard iface
node ns:  lo, eth0 192.168.77.N/24 (veth into the hub's bridge), wg-quick interface
Real wireguard-go everywhere (the host kernel has no WireGuard module).
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

REPO = Path(__file__).resolve().parents[2]
BUILDER = [sys.executable, "-c", "from builder.cli import main; main()"]
CLIENT = Path(__file__).with_name("enroll_client.py")
STANDINS = Path(__file__).with_name("enroll_standins")
AGENT = REPO / "builder" / "node" / "agent.py"


def missing_tools() -> list[str]:
    need = ["ip", "wg", "wg-quick", "wireguard-go"]
    out = [t for t in need if shutil.which(t) is None]
    if os.geteuid() != 0:
        out.append("root")
    if not out:  # a container without CAP_SYS_ADMIN cannot make namespaces
        probe = f"nfprobe{os.getpid()}"
        p = sh(["ip", "netns", "add", probe], check=False)
        if p.returncode != 0:
            out.append(f"network namespaces ({p.stderr.strip()})")
        else:
            sh(["ip", "netns", "del", probe], check=False)
    return out


def sh(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} failed ({p.returncode}):\n{p.stdout}{p.stderr}"
        )
    return p


class Lab:
    def __init__(self, tmp: Path, tag: str) -> None:
        self.tmp = tmp
        self.tag = tag
        self.hub_ns = f"nfh{tag}"
        self.nodes: dict[str, str] = {}  # name -> ns
        self.procs: list[subprocess.Popen] = []
        sh(["ip", "netns", "add", self.hub_ns])
        self.hx(["ip", "link", "set", "lo", "up"])
        self.hx(["ip", "link", "add", "br0", "type", "bridge"])
        self.hx(["ip", "address", "add", "192.168.77.1/24", "dev", "br0"])
        self.hx(["ip", "link", "set", "br0", "up"])

    def hx(self, argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
        return sh(["ip", "netns", "exec", self.hub_ns, *argv], **kw)

    def add_node(self, name: str, host: int) -> str:
        ns = f"nf{name}{self.tag}"
        sh(["ip", "netns", "add", ns])
        veth = f"v{name}{self.tag}"[:15]
        self.hx(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        self.hx(["ip", "link", "set", veth, "master", "br0", "up"])
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "address", "add", f"192.168.77.{host}/24", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
        ):
            sh(["ip", "netns", "exec", ns, *argv])
        self.nodes[name] = ns
        return ns

    def client(self, ns: str, *args: str, timeout: float = 120) -> dict:
        p = sh(["ip", "netns", "exec", ns, sys.executable, str(CLIENT), *args], timeout=timeout)
        return json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}

    def start_hub(
        self, config: Path, log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        fh = open(log, "a")  # noqa: SIM115 - the hub process keeps it
        p = subprocess.Popen(
            ["ip", "netns", "exec", self.hub_ns, *BUILDER, "hub", "serve", "--config", str(config)],
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.procs.append(p)
        return p

    def wait_healthy(
        self, url: str, ca: Path, proc: subprocess.Popen, log: Path, t: float = 30
    ) -> None:
        deadline = time.monotonic() + t
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"hub exited {proc.returncode}:\n{log.read_text()}")
            r = self.client(
                self.hub_ns,
                "request",
                "--url",
                url,
                "--ca",
                str(ca),
                "--method",
                "GET",
                "--path",
                "/healthz",
            )
            if r.get("status") == 200:
                return
            time.sleep(0.3)
        raise AssertionError(f"hub not healthy:\n{log.read_text()}")

    def wg_dump(self, ns: str, iface: str) -> list[list[str]]:
        out = sh(["ip", "netns", "exec", ns, "wg", "show", iface, "dump"]).stdout.splitlines()
        return [line.split("\t") for line in out[1:]]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=10)
        for ns in [*self.nodes.values(), self.hub_ns]:
            # wireguard-go daemons we started live in these namespaces: end them by pid
            pids = sh(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGTERM)
            sh(["ip", "netns", "del", ns], check=False)


def standin(src: str, dest_dir: Path) -> Path:
    """Copy a stand-in script with this interpreter in its shebang (it needs PyYAML)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    text = (STANDINS / src).read_text().split("\n", 1)[1]
    dest = dest_dir / "kubeadm"
    dest.write_text(f"#!{sys.executable}\n{text}")
    dest.chmod(0o755)
    return dest


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def builder(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh([*BUILDER, *args], check=check, cwd=REPO)


def hub_setup(
    tmp: Path,
    tag: str,
    name: str,
    port: int,
    wg_port: int,
    cidr: str,
    sans: tuple[str, ...] = (),
    **limits: float,
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
        *(a for san in sans for a in ("--san", san)),
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


def node_config(lab: Lab, hub: dict, name: str, token: str) -> tuple[Path, dict]:
    d = lab.tmp / f"node-{name}"
    d.mkdir()
    (d / "token").write_text(token + "\n")
    (d / "token").chmod(0o600)
    (d / "console").write_text("")  # the agent writes to a console, never creates one
    kubeadm = standin("kubeadm_node.py", d / "bin")
    # the cluster CA the node's kubeadm finds through discovery (its pin must match)
    shutil.copyfile(hub["dir"] / "cluster-ca.pem", d / "cluster-ca.pem")
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
        "console_file": str(d / "console"),  # never this machine's own /dev/console
        "kubeadm": str(kubeadm),
        "enable_wg_unit": False,
        "hostname": f"node-{name}",
        "handshake_timeout": 20,
        "retry_max_seconds": 5,
    }
    path = d / "node.json"
    path.write_text(json.dumps(cfg))
    return path, cfg


def start_agent(lab: Lab, name: str, path: Path) -> subprocess.Popen:
    env = {**os.environ, "NF_STANDIN_RECORD": str(lab.tmp / f"node-{name}" / "kubeadm.jsonl")}
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.nodes[name], sys.executable, str(AGENT), "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
