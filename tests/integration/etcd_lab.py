"""Real etcd clusters for tests: N members of Debian's etcd-server on loopback ports,
data under a directory the test owns; every member started here is killed here (by pid)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests.support.ports import free_ports


def missing() -> str | None:
    return None if shutil.which("etcd") else "etcd (apt-get install etcd-server)"


class EtcdCluster:
    def __init__(
        self, base: Path, members: int = 3, host: str = "127.0.0.1", netns: str | None = None
    ) -> None:
        self.base = base
        self.wrap = ["ip", "netns", "exec", netns] if netns else []  # exec: same pid
        self.host = host
        ports = free_ports(2 * members)
        self.client_ports = ports[:members]
        self.peer_ports = ports[members:]
        self.names = [f"m{i}" for i in range(members)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.initial = ",".join(
            f"{n}=http://{host}:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )

    @property
    def endpoints(self) -> list[str]:
        return [f"http://{self.host}:{p}" for p in self.client_ports]

    def argv(self, i: int) -> list[str]:
        n, cp, pp = self.names[i], self.client_ports[i], self.peer_ports[i]
        return [
            *self.wrap,
            "etcd",
            "--name", n,
            "--data-dir", str(self.base / n),
            "--listen-client-urls", f"http://{self.host}:{cp}",
            "--advertise-client-urls", f"http://{self.host}:{cp}",
            "--listen-peer-urls", f"http://{self.host}:{pp}",
            "--initial-advertise-peer-urls", f"http://{self.host}:{pp}",
            "--initial-cluster", self.initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"nf-{os.getpid()}-{self.client_ports[0]}",
            "--heartbeat-interval", "100",
            "--election-timeout", "1000",
        ]  # fmt: skip

    def start_member(self, i: int) -> None:
        log = open(self.base / f"{self.names[i]}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs[self.names[i]] = subprocess.Popen(
            self.argv(i), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def start(self, timeout: float = 30) -> EtcdCluster:
        self.base.mkdir(parents=True, exist_ok=True)
        for i in range(len(self.names)):
            self.start_member(i)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.healthy():
                return
            time.sleep(0.2)
        logs = "".join((self.base / f"{n}.log").read_text()[-2000:] for n in self.names)
        raise AssertionError(f"etcd cluster not healthy within {timeout}s:\n{logs}")

    def healthy(self) -> bool:
        if self.wrap:  # inside a namespace: ask from there
            probe = "import sys,urllib.request as u;u.urlopen(sys.argv[1]+'/health',timeout=1)"
            for ep in self.endpoints:
                argv = [*self.wrap, "python3", "-c", probe, ep]
                if subprocess.run(argv, capture_output=True).returncode == 0:
                    return True
            return False
        for ep in self.endpoints:
            try:
                r = requests.get(ep + "/health", timeout=1)
                if r.ok and r.json().get("health") == "true":
                    return True
            except (requests.RequestException, ValueError):
                pass
        return False

    def kill9(self, i: int) -> None:
        p = self.procs.get(self.names[i])
        if p and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
