#!/usr/bin/env python3
"""nodeforge-enroll: the first-boot enrollment agent (stdlib only, Python >= 3.10).

Runs once per boot from nodeforge-enroll.service until /var/lib/nodeforge/joined exists:
wait for route/DNS/clock -> keep wg.key + node_id -> POST /v1/enroll (TLS pinned to the hub
CA) -> save the answer -> write /etc/wireguard/<iface>.conf, wg-quick up -> wait for a
handshake -> GET join material through the tunnel -> kubeadm join --config (tmpfs) ->
POST /v1/complete -> touch joined -> with several hubs, start nodeforge-failover.service.

``--failover`` (nodeforge-failover.service, after the join): keep the overlay route on a live
hub and report the hub it goes through (``HubRoute``, ``failover_loop``).

Every line it prints starts with ``nodeforge-enroll: step=<step>`` so ``journalctl -u
nodeforge-enroll`` shows where it stopped. Exit codes: 0 done, 75 temporary failure
(systemd restarts it), 78 permanent failure (bad token, revoked, bad config), 5 a program it
needs (wg, wg-quick) is not installed; the unit's RestartPreventExitStatus stops the loop on
both (systemd names them CONFIG and NOTINSTALLED: UPSTREAM.md).

Clock, sleep, randomness, HTTP and commands are injected so the unit tests run the whole
state machine without sleeping, without a network and without root.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import ipaddress
import json
import math
import os
import random
import re
import shutil
import socket
import ssl
import subprocess  # stdlib-only node script: it cannot use builder.run
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPException, HTTPSConnection
from pathlib import Path
from typing import Any

PREFIX = "nodeforge-enroll:"
# on the console once this boot has nothing left to do: the joined marker is written
JOINED_SAY = "joined the cluster"
# on the console, once a run, when the hub cannot be reached (followed by the hub's URL)
UNREACHABLE_SAY = "cannot reach the hub at"
# on the console when the agent stops for good (exit 78/5: systemd does not restart it)
STOPPED_SAY = "FAILED, not retrying:"
DEFAULT_CONFIG = "/etc/nodeforge/node.json"
EXIT_OK, EXIT_RETRY, EXIT_STOP, EXIT_NOTINSTALLED = 0, 75, 78, 5
FAILOVER_UNIT = "nodeforge-failover.service"  # builder/node/nodeforge-failover.service
# host names that name no machine: none at all, and systemd's fallback when /etc/hostname is
# missing or empty (hostname(5), "HOSTNAME SEMANTICS": static, then transient, then the
# fallback, "localhost" unless built otherwise; manpages.ubuntu.com noble systemd 255, checked
# 2026-11-30)
PLACEHOLDER_HOSTNAMES = ("", "localhost")
PACKAGES_OF = {"wg": "wireguard-tools", "wg-quick": "wireguard-tools"}  # for the message


class Stop(Exception):
    """Permanent failure: retrying cannot help (exit 78)."""


class NotInstalled(Stop):
    """A program the agent runs is missing: no restart brings it back (exit 5)."""


class Retry(Exception):
    """Temporary failure: let systemd start us again (exit 75)."""


def log(step: str, msg: str = "", **kv: Any) -> None:
    parts = [PREFIX, f"step={step}"]
    parts += [f"{k}={v}" for k, v in kv.items()]
    if msg:
        parts.append(msg)
    print(" ".join(parts), file=sys.stderr, flush=True)


# -- configuration -------------------------------------------------------------------------
@dataclass
class Config:
    site: str
    enroll_url: str
    ca_file: str
    token_file: str
    ca_pin: str = ""
    interface: str = "wg0"
    image_version: str = ""
    build_time: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)
    kubernetes_version: str = ""
    state_dir: str = "/var/lib/nodeforge"
    retry_max_seconds: float = 300
    # paths and programs, overridable so tests can run the agent as a plain process
    wireguard_dir: str = "/etc/wireguard"
    run_dir: str = "/run/nodeforge"
    sys_dir: str = "/sys"
    kubeadm: str = "kubeadm"
    wg: str = "wg"
    wg_quick: str = "wg-quick"
    systemctl: str = "systemctl"
    enable_wg_unit: bool = True
    hostname: str = ""
    # the image's placeholder host name (cleanup.sh writes it; subiquity's identity sets it
    # on the ISO path): a node still called so names itself after its machine-id
    hostname_default: str = ""
    hostname_file: str = "/etc/hostname"
    machine_id_file: str = "/etc/machine-id"
    console_file: str = "/dev/console"
    handshake_timeout: float = 60
    http_timeout: float = 20
    join_attempts: int = 3
    enroll_attempts: int = 20
    token_wait_seconds: float = 300

    @property
    def joined_marker(self) -> Path:
        return Path(self.state_dir) / "joined"


REQUIRED = ("site", "enroll_url", "ca_file", "token_file")


def load_config(path: str) -> Config:
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise Stop(f"{path}: config file not found") from exc
    except (OSError, ValueError) as exc:
        raise Stop(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise Stop(f"{path}: top level must be an object")
    problems = [f"{path}: {k}: required" for k in REQUIRED if not raw.get(k)]
    known = set(Config.__dataclass_fields__)
    kwargs: dict[str, Any] = {}
    for k, v in raw.items():
        if k in known:
            kwargs[k] = v
    url = urllib.parse.urlsplit(str(raw.get("enroll_url", "")))
    if raw.get("enroll_url") and (url.scheme != "https" or not url.hostname):
        problems.append(f"{path}: enroll_url: must be https://HOST[:PORT]")
    if raw.get("ca_pin") and not re.fullmatch(r"sha256:[0-9a-f]{64}", str(raw["ca_pin"])):
        problems.append(f"{path}: ca_pin: must be sha256:<64 hex>")
    if not re.fullmatch(r"[A-Za-z0-9_=+.-]{1,15}", str(raw.get("interface", "wg0"))):
        problems.append(f"{path}: interface: not an interface name")
    if problems:
        raise Stop("; ".join(problems))
    return Config(**kwargs)


# -- the outside world (replaced in tests) --------------------------------------------------
class System:
    """Commands, DNS, routes and files: the only place the agent touches the OS."""

    def run(
        self, argv: list[str], timeout: float = 600, env: dict[str, str] | None = None
    ) -> tuple[int, str]:
        try:
            p = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, **(env or {})},
                check=False,
            )
        except FileNotFoundError:
            return 127, f"{argv[0]}: not found"
        except subprocess.TimeoutExpired:
            return 124, f"{argv[0]}: timed out after {timeout:g}s"
        return p.returncode, (p.stdout or "") + (p.stderr or "")

    def which(self, program: str) -> str | None:
        """The path ``run`` would execute for ``program`` (a name on PATH, or a path)."""
        return shutil.which(program)

    def resolve(self, host: str, port: int) -> str:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return str(infos[0][4][0])

    def has_route(self, addr: str, port: int) -> bool:
        """A UDP connect() asks the kernel for a route and sends nothing."""
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            try:
                s.connect((addr, port))
                return True
            except OSError:
                return False

    def hostname(self) -> str:
        return socket.gethostname()

    def console(self, path: str, msg: str) -> None:
        """A line on the system console (the screen of a bare-metal machine, the serial
        port of a VM), best effort: what an operator must see without reading the journal."""
        # blocking: a non-blocking write to a busy serial console is dropped (EAGAIN), as a
        # boot with journald forwarding to the console showed
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_APPEND)
        except OSError:
            return
        data = f"\r\n{msg}\r\n".encode(errors="replace")
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            pass
        finally:
            os.close(fd)


class Http:
    """HTTPS with the hub CA as the only trust anchor; token/secret in the header only."""

    def __init__(self, ca_file: str, timeout: float) -> None:
        self.ctx = ssl.create_default_context(cafile=ca_file)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.timeout = timeout

    def request(
        self,
        method: str,
        url: str,
        bearer: str,
        body: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        u = urllib.parse.urlsplit(url)
        conn = HTTPSConnection(
            u.hostname or "", u.port or 443, context=self.ctx, timeout=self.timeout
        )
        data = json.dumps(body).encode() if body is not None else b""
        headers = {
            "Authorization": f"Bearer {bearer}",
            "Content-Type": "application/json",
            "User-Agent": "nodeforge-enroll",
            # one request per connection: the hub closes right after its answer instead of
            # waiting for another request (fewer wake-ups per enrollment on a busy hub)
            "Connection": "close",
        }
        if method == "POST":
            headers["Content-Length"] = str(len(data))
        try:
            conn.request(
                method, u.path or "/", body=data if method == "POST" else None, headers=headers
            )
            resp = conn.getresponse()
            raw = resp.read(1 << 20)
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"error": raw[:200].decode(errors="replace")}
        return resp.status, hdrs, parsed if isinstance(parsed, dict) else {}


# -- helpers -------------------------------------------------------------------------------
def atomic_write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def ca_pin_of(ca_file: str) -> str:
    pem = Path(ca_file).read_text()
    der = ssl.PEM_cert_to_DER_cert(pem)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def q(s: Any) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(str(s))


GPU_STATE_NAME = "gpu"  # <run_dir>/gpu: the image's gpu-check verdict (install-nvidia.sh)
GPU_TAINT_KEY = "nvidia.com/gpu"  # the device plugin's resource name, the GPU taints' key


def without_gpu_taints(taints: list[dict[str, Any]], gpu_state: str | None) -> list[dict[str, Any]]:
    """A GPU image booted on a machine without a usable GPU (gpu-check said ``absent`` or
    ``no-driver``) must not claim one: its ``nvidia.com/gpu*`` taints would keep every
    ordinary pod off a CPU node. No verdict (a CPU image, no gpu-check): taints as given."""
    if gpu_state is None or gpu_state == "present":
        return taints
    return [t for t in taints if not str(t.get("key", "")).startswith(GPU_TAINT_KEY)]


def join_configuration(
    mat: dict[str, Any], cfg: Config, address: str, hostname: str, gpu_state: str | None = None
) -> str:
    """kubeadm v1beta4 JoinConfiguration: node-ip = overlay address, labels, taints."""
    labels = {**(mat.get("labels") or {}), **cfg.labels}
    taints = without_gpu_taints(list(mat.get("taints") or []) + list(cfg.taints), gpu_state)
    lines = [
        "apiVersion: kubeadm.k8s.io/v1beta4",
        "kind: JoinConfiguration",
        "discovery:",
        "  bootstrapToken:",
        f"    apiServerEndpoint: {q(mat['api_server'])}",
        f"    token: {q(mat['token'])}",
        "    caCertHashes:",
        *[f"      - {q(h)}" for h in mat.get("ca_cert_hashes") or []],
        "nodeRegistration:",
        f"  name: {q(hostname)}",
    ]
    if mat.get("cri_socket"):
        lines.append(f"  criSocket: {q(mat['cri_socket'])}")
    lines += ["  kubeletExtraArgs:", '    - name: "node-ip"', f"      value: {q(address)}"]
    if labels:
        value = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        lines += ['    - name: "node-labels"', f"      value: {q(value)}"]
    if taints:
        lines.append("  taints:")
        for t in taints:
            lines.append(f"    - key: {q(t['key'])}")
            if t.get("value") is not None:
                lines.append(f"      value: {q(t['value'])}")
            lines.append(f"      effect: {q(t.get('effect', 'NoSchedule'))}")
    else:
        lines.append("  taints: []")
    return "\n".join(lines) + "\n"


SYSTEMCTL_SHIM = """#!/bin/sh
# nodeforge-enroll: systemctl shim for `kubeadm join` (see Agent.kubeadm_env)
case " $* " in
  *" kubelet "*|*" kubelet.service "*) exec @REAL@ --job-mode=ignore-dependencies "$@" ;;
esac
exec @REAL@ "$@"
"""


def not_installed(system: System, programs: list[str]) -> list[str]:
    """The ``programs`` that ``system`` cannot find (none for a System without ``which``: a
    test double that runs nothing real)."""
    which = getattr(system, "which", None)
    return [p for p in programs if which is not None and which(p) is None]


# -- the state machine ---------------------------------------------------------------------
class Agent:
    def __init__(
        self,
        cfg: Config,
        system: System | None = None,
        http: Any = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = cfg
        self.sys = system or System()
        self.http = http
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
        self._named = ""
        self._said_unreachable = False
        self.state = Path(cfg.state_dir)

    # backoff with full jitter, capped by retry_max_seconds
    def backoff(self, attempt: int, base: float = 2.0) -> float:
        cap = max(1.0, float(self.cfg.retry_max_seconds))
        return self.rand() * min(cap, base * (2 ** min(attempt, 20)))

    def say_unreachable(self, problem: str) -> None:
        """Once a run, on the console: the hub cannot be reached, and why (the operator at a
        machine that does not join sees it on the screen, not only in the journal)."""
        if self._said_unreachable:
            return
        self._said_unreachable = True
        self.sys.console(self.cfg.console_file, f"{PREFIX} {UNREACHABLE_SAY} "
                         f"{self.cfg.enroll_url}: {problem}; retrying (journalctl -u "
                         "nodeforge-enroll)")  # fmt: skip

    def pause(self, seconds: float, step: str, why: str) -> None:
        log(step, f"waiting {seconds:.1f}s: {why}")
        self.sleep(seconds)

    def run(self) -> int:
        if self.cfg.joined_marker.exists():
            log("done", "already joined", marker=self.cfg.joined_marker)
            self.sys.console(self.cfg.console_file, f"{PREFIX} {JOINED_SAY} (on an earlier boot)")
            return EXIT_OK
        try:
            self.check_programs()
            self.check_ca()
            self.wait_for_network()
            key, pub = self.ensure_key()
            node_id = self.ensure_node_id()
            enr = self.enroll(node_id, pub)
            self.tunnel_up(enr, key)
            self.wait_handshake(enr)
            self.join(enr)
            self.complete(enr)
            atomic_write(self.cfg.joined_marker, f"{int(self.clock())}\n", 0o644)
            log("done", "node enrolled and joined", address=enr["address"])
            # the operator at the machine's screen sees it without the journal; `builder
            # boot-test` powers the machine off once it shows (nothing of ours left to write)
            said = f"{PREFIX} {JOINED_SAY}: overlay address {enr['address']}"
            self.sys.console(self.cfg.console_file, said)
            self.start_failover(enr)
            return EXIT_OK
        except Stop as exc:
            log("failed", f"permanent failure, not retrying: {exc}")
            self.sys.console(self.cfg.console_file, f"{PREFIX} {STOPPED_SAY} {exc}")
            return EXIT_NOTINSTALLED if isinstance(exc, NotInstalled) else EXIT_STOP
        except Retry as exc:
            log("failed", f"will retry (systemd restarts this unit): {exc}")
            return EXIT_RETRY

    def start_failover(self, enr: dict[str, Any]) -> None:
        """Several hubs: start the failover unit now. The image enables it with
        ``ConditionPathExists=`` the joined marker, which was false when this boot began.
        ``--no-block``: it is ordered after our own (still activating) unit."""
        if not self.cfg.enable_wg_unit or not enr.get("other_hubs"):
            return
        unit = FAILOVER_UNIT
        rc, out = self.sys.run([self.cfg.systemctl, "start", "--no-block", unit], timeout=60)
        if rc != 0:
            log("failover", f"could not start {unit}: {out.strip()[-200:]}")
        else:
            log("failover", "started", unit=unit)

    # 0. the programs this run needs, before the one-time token is spent on an enrollment
    def check_programs(self) -> None:
        """A missing ``wg``/``wg-quick`` is not transient: say so once and stop."""
        missing = not_installed(self.sys, [self.cfg.wg, self.cfg.wg_quick])
        if missing:
            raise NotInstalled(
                f"{', '.join(missing)} not installed (not found on PATH): this image lacks "
                f"{PACKAGES_OF.get(Path(missing[0]).name, Path(missing[0]).name)}; "
                "rebuild the image (the provisioning installs it)"
            )

    # 0. trust anchor
    def check_ca(self) -> None:
        try:
            pin = ca_pin_of(self.cfg.ca_file)
        except (OSError, ValueError) as exc:
            raise Stop(f"{self.cfg.ca_file}: cannot read the hub CA: {exc}") from exc
        if self.cfg.ca_pin and pin != self.cfg.ca_pin:
            raise Stop(f"{self.cfg.ca_file}: CA does not match ca_pin {self.cfg.ca_pin}")
        if self.http is None:
            self.http = Http(self.cfg.ca_file, self.cfg.http_timeout)
        log("ca", "hub CA matches the pin", pin=pin[:19] + "…")

    # 1. route, DNS, clock
    def wait_for_network(self, max_attempts: int = 60) -> None:
        u = urllib.parse.urlsplit(self.cfg.enroll_url)
        host, port = u.hostname or "", u.port or 443
        for attempt in range(max_attempts):
            problem = ""
            if self.clock() < self.cfg.build_time:
                problem = f"clock {int(self.clock())} is before build time {self.cfg.build_time}"
            else:
                try:
                    addr = self.sys.resolve(host, port)
                except OSError as exc:
                    problem = f"cannot resolve {host}: {exc}"
                else:
                    if not self.sys.has_route(addr, port):
                        problem = f"no route to {addr}"
                if problem:
                    self.say_unreachable(problem)
            if not problem:
                log("network", "route, DNS and clock ok", hub=host)
                return
            self.pause(self.backoff(attempt, 1.0), "network", problem)
        raise Retry("network not ready (route/DNS/clock)")

    # 2. identity, created once
    def ensure_key(self) -> tuple[str, str]:
        kf = self.state / "wg.key"
        if kf.exists():
            key = kf.read_text().strip()
            os.chmod(kf, 0o600)
        else:
            rc, out = self.sys.run([self.cfg.wg, "genkey"], timeout=30)
            key = out.strip()
            if rc != 0 or len(key) != 44:
                raise Retry(f"wg genkey failed: {out.strip()[:200]}")
            self.state.mkdir(parents=True, exist_ok=True)
            atomic_write(kf, key + "\n", 0o600)
            log("identity", "created WireGuard key", path=kf)
        pub = self.pubkey(key)
        return key, pub

    def pubkey(self, key: str) -> str:
        rc, out = self._run_input([self.cfg.wg, "pubkey"], key + "\n")
        if rc != 0 or len(out.strip()) != 44:
            raise Retry(f"wg pubkey failed: {out.strip()[:200]}")
        return out.strip()

    def _run_input(self, argv: list[str], data: str) -> tuple[int, str]:
        run_input = getattr(self.sys, "run_input", None)
        if run_input is not None:
            return run_input(argv, data)  # type: ignore[no-any-return]
        try:
            p = subprocess.run(
                argv, input=data, capture_output=True, text=True, timeout=30, check=False
            )
        except FileNotFoundError:
            return 127, f"{argv[0]}: not found"
        return p.returncode, p.stdout + p.stderr

    def ensure_node_id(self) -> str:
        nf = self.state / "node_id"
        if nf.exists():
            return nf.read_text().strip()
        nid = base64.b32encode(os.urandom(15)).decode().lower()
        atomic_write(nf, nid + "\n", 0o644)
        log("identity", "created node id", node_id=nid)
        return nid

    def fingerprint(self) -> str:
        base = Path(self.cfg.sys_dir)
        parts = []
        for f in ("product_uuid", "product_serial", "board_serial"):
            with contextlib.suppress(OSError):
                v = (base / "class/dmi/id" / f).read_text().strip()
                if v and v.lower() not in ("none", "0", "default string", "to be filled by o.e.m."):
                    parts.append(f"{f}={v}")
        with contextlib.suppress(OSError):
            for dev in sorted((base / "class/net").iterdir()):
                if (dev / "device").exists():
                    parts.append("mac=" + (dev / "address").read_text().strip())
        if not parts:
            return ""
        return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def hostname(self) -> str:
        name = (self.cfg.hostname or self.sys.hostname()).split(".")[0].lower()
        name = re.sub(r"[^a-z0-9-]", "-", name).strip("-")[:63]
        if name in PLACEHOLDER_HOSTNAMES or name == self.cfg.hostname_default.lower():
            return self.own_hostname(name)
        return name or "node"

    def own_hostname(self, placeholder: str) -> str:
        """No seed named this node (it still has the image's placeholder name): name it
        ``<site>-<first 8 of its machine-id>`` (as the ISO's seed does for an installed
        system), set it as the system's host name, and use it."""
        try:
            mid = Path(self.cfg.machine_id_file).read_text().strip().lower()
        except OSError:
            mid = ""
        if not re.fullmatch(r"[0-9a-f]{32}", mid):
            raise Stop(f"{self.cfg.machine_id_file}: no machine-id to name the node after")
        site = re.sub(r"[^a-z0-9-]", "-", self.cfg.site.lower()).strip("-")[:54]
        name = f"{site}-{mid[:8]}"
        if self._named != name:
            atomic_write(Path(self.cfg.hostname_file), name + "\n", 0o644)
            rc, out = self.sys.run(["hostname", name], timeout=30)
            if rc != 0:
                log("identity", f"could not set the host name now: {out.strip()[-200:]}")
            log("identity", f"no host name from a seed ({placeholder or 'none'}): "
                "named after the machine-id", hostname=name)  # fmt: skip
            self._named = name
        return name

    # 3. enroll
    def token(self, fallback: str = "") -> str:
        """The enrollment token; waits (bounded) for it to appear, e.g. from a late runcmd.
        With a ``fallback`` (the node secret of an earlier enrollment) it does not wait."""
        waited, attempt = 0.0, 0
        while True:
            try:
                t = Path(self.cfg.token_file).read_text().strip()
            except FileNotFoundError:
                t = ""
            except OSError as exc:
                raise Stop(
                    f"{self.cfg.token_file}: cannot read the token ({exc.strerror})"
                ) from exc
            if t:
                return t
            if fallback:
                log("token", "no enrollment token: re-enrolling with the node secret")
                return fallback
            if waited >= self.cfg.token_wait_seconds:
                raise Stop(f"{self.cfg.token_file}: no enrollment token (missing or empty)")
            if attempt == 0:  # say it once, where an operator looks, then wait
                msg = (
                    f"no enrollment token in {self.cfg.token_file}: this node has no seed "
                    "and its image no site token. Attach a seed volume made by `builder seed` "
                    "(label CIDATA) and reboot, or write a token from `builder hub token "
                    f"create` to {self.cfg.token_file}; waiting "
                    f"{self.cfg.token_wait_seconds:g}s for one"
                )
                log("token", msg)
                self.sys.console(self.cfg.console_file, f"{PREFIX} {msg}")
            delay = min(10.0, 1.0 + self.backoff(attempt, 1.0))
            self.pause(delay, "token", f"waiting for {self.cfg.token_file}")
            waited += delay
            attempt += 1

    def saved(self, pub: str) -> dict[str, Any] | None:
        f = self.state / "enrollment.json"
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            return None
        if data.get("wg_pubkey") != pub:
            return None
        return data  # type: ignore[no-any-return]

    def saved_secret(self, node_id: str) -> str:
        """The node secret of this node's last enrollment, whatever key it was for: the
        proof the hub asks for before it lets an active node re-enroll with a new key."""
        try:
            data = json.loads((self.state / "enrollment.json").read_text())
        except (OSError, ValueError):
            return ""
        if not isinstance(data, dict) or data.get("node_id") != node_id:
            return ""
        return str(data.get("node_secret") or "")

    def forget_token(self) -> None:
        """A used one-time token is worth nothing to us and a lot to a thief: remove it."""
        path = Path(self.cfg.token_file)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            log("enroll", f"could not remove the used token {path}: {exc.strerror}")
            return
        log("enroll", "removed the used enrollment token", path=path)

    def enroll(self, node_id: str, pub: str) -> dict[str, Any]:
        old = self.saved(pub)
        if old:
            log("enroll", "using the saved enrollment", address=old["address"])
            self.forget_token()
            return old
        secret = self.saved_secret(node_id)
        token = self.token(fallback=secret)
        body = {
            "site": self.cfg.site,
            "node_id": node_id,
            "wg_pubkey": pub,
            "hostname": self.hostname(),
            "fingerprint": self.fingerprint(),
            "image_version": self.cfg.image_version,
        }
        if secret:
            body["node_secret"] = secret
        url = self.cfg.enroll_url.rstrip("/") + "/v1/enroll"
        failures = 0
        while True:
            try:
                status, headers, data = self.http.request("POST", url, token, body)
            except (OSError, HTTPException, ssl.SSLError) as exc:
                if isinstance(exc, ssl.SSLCertVerificationError):
                    raise Stop(f"hub certificate rejected: {exc.verify_message}") from exc
                status, headers, data = 0, {}, {"error": str(exc)}
                self.say_unreachable(str(exc)[:200])
            err = str(data.get("error", ""))[:200]
            retry_after = self._retry_after(headers)
            if status == 200:
                self.check_enrollment(data)
                data["wg_pubkey"] = pub
                atomic_write(self.state / "enrollment.json", json.dumps(data, indent=1), 0o600)
                log("enroll", "enrolled", status=200, address=data["address"], node_id=node_id)
                self.forget_token()
                return data
            if status == 202:
                self.pause(
                    retry_after or 30 + self.rand() * 15,
                    "enroll",
                    "pending approval on the hub (builder hub approve " + node_id + ")",
                )
                continue
            if status in (400, 401, 403, 409):
                raise Stop(f"hub refused enrollment: HTTP {status}: {err}")
            failures += 1
            if failures >= self.cfg.enroll_attempts:
                raise Retry(f"enrollment failed {failures} times, last: HTTP {status} {err}")
            wait = retry_after if retry_after is not None else self.backoff(failures)
            self.pause(wait, "enroll", f"HTTP {status or 'error'}: {err}")

    @staticmethod
    def _retry_after(headers: dict[str, str]) -> float | None:
        v = headers.get("retry-after")
        if v and v.strip().isdigit():
            return min(float(v), 3600.0)
        return None

    def check_enrollment(self, d: dict[str, Any]) -> None:
        try:
            net = ipaddress.IPv4Network(d["overlay_cidr"])
            addr = ipaddress.IPv4Address(d["address"])
            hub = d["hub"]
            ok = (
                addr in net
                and addr not in (net.network_address, net.broadcast_address)
                and len(hub["pubkey"]) == 44
                and ":" in hub["endpoint"]
                and int(d["mtu"]) >= 1280
                and d.get("node_secret")
                and all(
                    len(h["pubkey"]) == 44
                    and ":" in h["endpoint"]
                    and ipaddress.IPv4Address(h["overlay_ip"]) in net
                    for h in d.get("other_hubs") or []
                )
                and d.get("join_url")
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise Retry(f"hub sent an incomplete enrollment: {exc}") from exc
        if not ok:
            raise Retry("hub sent an inconsistent enrollment")

    # 4. tunnel
    def wg_conf(self, enr: dict[str, Any], key: str) -> str:
        hub = enr["hub"]
        lines = [
            "# written by nodeforge-enroll from the hub's answer (never saved back)",
            "[Interface]",
            f"PrivateKey = {key}",
            f"Address = {enr['address']}/32",
            f"MTU = {int(enr['mtu'])}",
            "",
            "[Peer]",
            f"PublicKey = {hub['pubkey']}",
            f"Endpoint = {hub['endpoint']}",
            f"AllowedIPs = {enr['overlay_cidr']}",
            f"PersistentKeepalive = {int(enr.get('keepalive') or 25)}",
            "",
        ]
        for other in enr.get("other_hubs") or []:  # several hubs: each reachable on its /32
            lines += [
                "[Peer]",
                f"PublicKey = {other['pubkey']}",
                f"Endpoint = {other['endpoint']}",
                f"AllowedIPs = {other['overlay_ip']}/32",
                f"PersistentKeepalive = {int(enr.get('keepalive') or 25)}",
                "",
            ]
        return "\n".join(lines)

    def tunnel_up(self, enr: dict[str, Any], key: str) -> None:
        iface = self.cfg.interface
        conf = Path(self.cfg.wireguard_dir) / f"{iface}.conf"
        atomic_write(conf, self.wg_conf(enr, key), 0o600)
        log("wireguard", "wrote config", path=conf)
        rc, _ = self.sys.run([self.cfg.wg, "show", iface, "public-key"], timeout=30)
        if rc == 0:  # up from an earlier attempt: bring it up again with this config
            self.sys.run([self.cfg.wg_quick, "down", str(conf)], timeout=60)
        rc, out = self.sys.run([self.cfg.wg_quick, "up", str(conf)], timeout=60)
        if rc != 0:
            raise Retry(f"wg-quick up {iface} failed: {out.strip()[-300:]}")
        log("wireguard", "interface up", interface=iface, address=enr["address"])
        if self.cfg.enable_wg_unit:
            rc, out = self.sys.run([self.cfg.systemctl, "enable", f"wg-quick@{iface}"], timeout=60)
            if rc != 0:
                log("wireguard", f"could not enable wg-quick@{iface}: {out.strip()[-200:]}")

    def wait_handshake(self, enr: dict[str, Any], rounds: int = 3) -> None:
        iface, hub = self.cfg.interface, enr["hub"]
        step = 1.0
        for r in range(rounds):
            waited = 0.0
            while waited < self.cfg.handshake_timeout:
                rc, out = self.sys.run(
                    [self.cfg.wg, "show", iface, "latest-handshakes"], timeout=30
                )
                for line in out.splitlines() if rc == 0 else []:
                    k, _, ts = line.partition("\t")
                    if k == hub["pubkey"] and ts.strip().isdigit() and int(ts) > 0:
                        log("handshake", "tunnel to the hub is up", hub=hub["overlay_ip"])
                        return
                self.sleep(step)
                waited += step
            log(
                "handshake",
                f"no handshake after {self.cfg.handshake_timeout:g}s; "
                "re-resolving the hub endpoint",
                round=r + 1,
            )
            self.sys.run(
                [self.cfg.wg, "set", iface, "peer", hub["pubkey"], "endpoint", hub["endpoint"]],
                timeout=60,
            )
        raise Retry("no WireGuard handshake with the hub")

    # 5. join through the tunnel
    def fetch_join(self, enr: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(10):
            try:
                status, headers, data = self.http.request(
                    "GET", enr["join_url"], enr["node_secret"]
                )
            except (OSError, HTTPException, ssl.SSLError) as exc:
                status, headers, data = 0, {}, {"error": str(exc)}
            if status == 200:
                if data.get("node_ip") != enr["address"]:
                    raise Stop(f"join material is for {data.get('node_ip')}, not {enr['address']}")
                return data
            if status in (401, 403):
                raise Stop(f"hub refused join material: HTTP {status}: {data.get('error')}")
            wait = self._retry_after(headers) or self.backoff(attempt)
            self.pause(
                wait, "join", f"join material: HTTP {status or 'error'}: {data.get('error')}"
            )
        raise Retry("could not fetch join material")

    def kubeadm_env(self) -> dict[str, str]:
        """PATH for kubeadm with a ``systemctl`` shim first, when we run under systemd.

        Our unit is ordered ``Before=kubelet.service`` and is still activating while
        ``kubeadm join`` runs; kubeadm's ``systemctl restart kubelet`` would queue a job that
        waits for our unit to finish, i.e. forever. The shim adds
        ``--job-mode=ignore-dependencies`` to systemctl calls about kubelet so the kubelet
        starts now; every other call passes through unchanged. It lives in the state
        directory, not under /run: initramfs-tools mounts /run noexec, and a PATH entry
        there is skipped (kubeadm then reached the real systemctl and waited forever).
        """
        real = shutil.which(self.cfg.systemctl)
        if not real or not os.environ.get("INVOCATION_ID"):  # not started by systemd
            return {}
        shim = Path(self.cfg.state_dir) / "shim"
        shim.mkdir(parents=True, exist_ok=True)
        atomic_write(shim / "systemctl", SYSTEMCTL_SHIM.replace("@REAL@", real), 0o755)
        return {"PATH": f"{shim}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}

    def gpu_state(self) -> str | None:
        """This boot's gpu-check verdict (``present``/``no-driver``/``absent``), None on an
        image without the check; GPU taints dropped from the join are said in the log."""
        try:
            state = (Path(self.cfg.run_dir) / GPU_STATE_NAME).read_text().strip()
        except OSError:
            return None
        dropped = [
            t for t in self.cfg.taints if t not in without_gpu_taints(self.cfg.taints, state)
        ]
        if dropped:
            log("join", f"no usable NVIDIA GPU on this machine ({state}): joining without the GPU "
                f"taints {[t.get('key') for t in dropped]}")  # fmt: skip
        return state

    def join(self, enr: dict[str, Any]) -> None:
        run_dir = Path(self.cfg.run_dir)
        path = run_dir / "join.yaml"
        for attempt in range(self.cfg.join_attempts):
            mat = self.fetch_join(enr)
            atomic_write(
                path,
                join_configuration(
                    mat, self.cfg, enr["address"], self.hostname(), self.gpu_state()
                ),
                0o600,
            )
            log("join", "running kubeadm join", config=path, node_ip=enr["address"])
            rc, out = self.sys.run(
                [self.cfg.kubeadm, "join", "--config", str(path)],
                timeout=900,
                env=self.kubeadm_env(),
            )
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # it holds a bootstrap token
            if rc == 0:
                log("join", "kubeadm join succeeded")
                return
            log(
                "join",
                f"kubeadm join failed (exit {rc}): {out.strip()[-300:]}",
                attempt=attempt + 1,
            )
            self.sys.run([self.cfg.kubeadm, "reset", "-f"], timeout=300)
            self.pause(self.backoff(attempt), "join", "fresh join material after reset")
        raise Retry(f"kubeadm join failed {self.cfg.join_attempts} times")

    # 6. report
    def complete(self, enr: dict[str, Any]) -> None:
        url = enr["join_url"].rsplit("/", 1)[0] + "/complete"
        for attempt in range(5):
            try:
                status, _, data = self.http.request("POST", url, enr["node_secret"], {})
            except (OSError, HTTPException, ssl.SSLError) as exc:
                status, data = 0, {"error": str(exc)}
            if status == 200:
                log("complete", "hub recorded the join")
                return
            self.pause(self.backoff(attempt), "complete", f"HTTP {status}: {data.get('error')}")
        log("complete", "could not report completion; the bootstrap token expires on its own")


# -- several hubs: which one carries the overlay route ----------------------------------------
# 3 x WireGuard's RekeyTimeout (5 s): by then every node probing a returned hub has a session
RETURN_SECONDS = 15.0
RETURN_ALIGN = 10  # seconds: nodes move back on the same wall-clock tick (see HubRoute)


class HubRoute:
    """Which hub carries the overlay route (the node's AllowedIPs for the overlay CIDR).

    Every hub is a peer with its own /32, so each can be probed through its own tunnel; the
    overlay CIDR sits on one peer at a time (WireGuard routes a range to one peer). Probes,
    not handshake ages: a live session renews its handshake only every 2 minutes, so a
    handshake age tells a dead hub only after minutes; a TCP connection to the hub's API
    through the tunnel tells within one probe interval. Rules: after ``fail_after`` failed
    probes in a row of the active hub, move to the first hub (in preference order) whose
    last probe succeeded; back to the preferred hub after ``back_after`` good probes in a
    row (no flapping on one good answer).

    Every node prefers the same hub (the lowest overlay address, whichever hub it enrolled
    at): WireGuard takes a packet from a peer only if its source is in that peer's allowed
    IPs, so a node accepts other nodes' traffic only from the hub holding its overlay range;
    two nodes routing through different hubs cannot reach each other. For the same reason
    nodes move back together: on the first ``RETURN_ALIGN``-second tick of the (NTP-synced)
    wall clock once the preferred hub has answered long enough.

    Back only after the preferred hub has answered for ``RETURN_SECONDS``: a hub that comes
    back has a session with no node yet; each node's next handshake to it comes within
    WireGuard's RekeyTimeout (5 s, + <= 334 ms jitter: UPSTREAM.md), prompted by its probes.
    A node that moved back sooner would send its peers' replies through a hub that cannot
    reach them yet (seen in tests/integration/test_hub_failover_netns.py with 5 probes of 1 s).
    """

    def __init__(
        self,
        order: list[str],
        fail_after: int = 3,
        back_after: int = 5,
        active: str | None = None,
    ) -> None:
        self.order = list(order)
        # where the route is now (a restarted loop finds it on the interface); else preferred
        self.active = active if active in self.order else self.order[0]
        self.fail_after = fail_after
        self.back_after = back_after
        self.fails = dict.fromkeys(self.order, 0)
        self.oks = dict.fromkeys(self.order, 0)

    def step(self, alive: dict[str, bool], tick: bool = True) -> str | None:
        """Feed one round of probe results; the hub to move the route to, or None.
        ``tick``: a return tick passed since the last round (moves back happen on ticks)."""
        for h in self.order:
            ok = alive.get(h, False)
            self.oks[h] = self.oks[h] + 1 if ok else 0
            self.fails[h] = 0 if ok else self.fails[h] + 1
        preferred = self.order[0]
        if self.active != preferred and self.oks[preferred] >= self.back_after and tick:
            self.active = preferred
            return preferred
        if self.fails[self.active] >= self.fail_after:
            for h in self.order:
                if h != self.active and self.oks[h] > 0:
                    self.active = h
                    return h
        return None


def route_argv(wg: str, iface: str, enr: dict[str, Any], to: str) -> list[list[str]]:
    """``wg set`` commands that put the overlay CIDR on hub ``to`` (by public key); every
    other hub keeps only its /32."""
    hubs = [enr["hub"], *(enr.get("other_hubs") or [])]
    out = []
    for h in hubs:
        allowed = f"{h['overlay_ip']}/32"
        if h["pubkey"] == to:
            allowed += f",{enr['overlay_cidr']}"
        out.append(
            (h["pubkey"] == to, [wg, "set", iface, "peer", h["pubkey"], "allowed-ips", allowed])
        )
    # the others first: a range moves to the peer it is given to last
    return [argv for _, argv in sorted(out, key=lambda t: t[0])]


def probe(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def route_holder(wg: str, iface: str, enr: dict[str, Any], system: System) -> str | None:
    """The hub (public key) whose peer holds the overlay CIDR on the interface now."""
    rc, out = system.run([wg, "show", iface, "allowed-ips"], timeout=30)
    for line in out.splitlines() if rc == 0 else []:
        key, _, ips = line.partition("\t")
        if enr["overlay_cidr"] in ips.split():
            return key
    return None


def report_route(http: Http, enr: dict[str, Any], hub: dict[str, Any], port: int) -> bool:
    """Tell ``hub`` that this node's overlay route goes through it: ``POST /v1/route`` to
    the hub's overlay address (so through that hub's tunnel), node secret as Bearer. The
    hubs cannot see this choice themselves (every hub has a live session with every node);
    ``builder hub nodes`` shows the last report and its age."""
    url = f"https://{hub['overlay_ip']}:{port}/v1/route"
    try:
        status, _, data = http.request("POST", url, enr["node_secret"], {"hub": hub["pubkey"]})
    except (OSError, HTTPException, ssl.SSLError) as exc:
        log("failover", f"route report to {hub['overlay_ip']} failed: {exc}")
        return False
    if status != 200:
        log("failover", f"route report to {hub['overlay_ip']}: HTTP {status}: {data.get('error')}")
        return False
    return True


def failover_loop(
    cfg: Config, interval: float = 2.0, rounds: int | None = None, report_every: float = 30.0
) -> int:
    """``--failover``: keep the overlay route on a live hub (a long-running service), and
    report the hub it routes through after every move and every ``report_every`` seconds."""
    enr = json.loads((Path(cfg.state_dir) / "enrollment.json").read_text())
    hubs = [enr["hub"], *(enr.get("other_hubs") or [])]
    if len(hubs) < 2:
        log("failover", "one hub only: nothing to fail over to")
        return EXIT_OK
    # one order on every node, whichever hub each enrolled at (see HubRoute)
    hubs.sort(key=lambda h: ipaddress.IPv4Address(h["overlay_ip"]))
    port = urllib.parse.urlsplit(enr["join_url"]).port or 443
    system = System()
    if not_installed(system, [cfg.wg]):
        msg = f"{cfg.wg} not installed (not found on PATH): cannot move the overlay route"
        log("failover", f"permanent failure, not retrying: {msg}")
        system.console(cfg.console_file, f"{PREFIX} failover FAILED, not retrying: {msg}")
        return EXIT_NOTINSTALLED
    # at boot this unit may start before wg-quick@ has brought the interface up: wait for it,
    # the range is where its config put it (the hub that enrolled the node), not guessed
    holder = route_holder(cfg.wg, cfg.interface, enr, system)
    while holder is None and (rounds is None or rounds > 0):
        log("failover", "waiting for the interface to carry the overlay range", iface=cfg.interface)
        time.sleep(interval)
        holder = route_holder(cfg.wg, cfg.interface, enr, system)
    back = max(5, math.ceil(RETURN_SECONDS / max(interval, 0.1)))
    route = HubRoute([h["pubkey"] for h in hubs], back_after=back, active=holder)
    by_key = {h["pubkey"]: h for h in hubs}
    http = Http(cfg.ca_file, min(cfg.http_timeout, 5.0))
    log("failover", "watching the hubs", hubs=len(hubs), route=by_key[route.active]["overlay_ip"])
    reported_at: float | None = None
    epoch = int(time.time()) // RETURN_ALIGN
    n = 0
    while rounds is None or n < rounds:
        n += 1
        alive = {h["pubkey"]: probe(h["overlay_ip"], port) for h in hubs}
        now_epoch = int(time.time()) // RETURN_ALIGN
        to = route.step(alive, tick=now_epoch != epoch)
        epoch = now_epoch
        if to is not None:
            for argv in route_argv(cfg.wg, cfg.interface, enr, to):
                system.run(argv, timeout=30)
            log("failover", "overlay route moved", hub=by_key[to]["overlay_ip"])
            reported_at = None
        due = reported_at is None or time.monotonic() - reported_at >= report_every
        if due and alive.get(route.active) and report_route(http, enr, by_key[route.active], port):
            reported_at = time.monotonic()
        time.sleep(interval)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nodeforge-enroll", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.environ.get("NODEFORGE_CONFIG", DEFAULT_CONFIG))
    ap.add_argument("--failover", action="store_true", help="keep the route on a live hub")
    ap.add_argument("--interval", type=float, default=2.0)
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except Stop as exc:
        log("config", str(exc))
        return EXIT_STOP
    if args.failover:
        return failover_loop(cfg, args.interval)
    log("start", site=cfg.site, interface=cfg.interface, config=args.config)
    return Agent(cfg).run()


if __name__ == "__main__":
    sys.exit(main())
