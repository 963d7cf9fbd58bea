"""Forwarding on the hub, so node-to-node traffic (pods across sites) flows through it.

Nodes route the whole overlay to the hub (their only peer, ``AllowedIPs = <overlay>``);
the hub holds one ``/32`` per node and sends a packet for node B back out of the same
WireGuard interface. That needs ``net.ipv4.ip_forward=1`` and, where the FORWARD chain
drops by default (Docker, ufw and many cloud images set that), an accept rule for traffic
that comes in and goes out on the WireGuard interface. Both are idempotent: nothing is
changed when they are already in place.

Probes are injectable (the sysctl file, a runner for ``iptables``) so tests drive them in a
network namespace of their own.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuilderError, CommandFailed
from builder.run import run, which

log = logging.getLogger("nodeforge.hub.routing")

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def default_runner(argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a probe: a missing program is returncode 127, a timeout 124; it never raises."""
    if which(argv[0]) is None:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]} not found")
    try:
        return run(argv, check=False, timeout=timeout)
    except CommandFailed as exc:  # timed out
        return subprocess.CompletedProcess(list(argv), 124, "", exc.message)


def accept_rule(interface: str) -> list[str]:
    return ["-i", interface, "-o", interface, "-j", "ACCEPT"]


@dataclass(frozen=True)
class ForwardState:
    ip_forward: bool
    iptables: bool  # an iptables program answered
    policy: str | None  # the FORWARD chain's policy (ACCEPT, DROP) when iptables answered
    accept_rule: bool  # our accept rule is there, before any unconditional DROP/REJECT
    drops: bool  # the chain drops what no rule accepts (policy or a catch-all rule)

    @property
    def firewall_ok(self) -> bool:
        return not self.iptables or not self.drops or self.accept_rule

    @property
    def ok(self) -> bool:
        return self.ip_forward and self.firewall_ok


def read_ip_forward(sysctl: Path = IP_FORWARD) -> bool:
    try:
        return sysctl.read_text().strip() == "1"
    except OSError:
        return False


def forward_state(
    interface: str, *, sysctl: Path = IP_FORWARD, runner: Runner | None = None
) -> ForwardState:
    runner = runner or default_runner
    ipf = read_ip_forward(sysctl)
    res = runner(["iptables", "-w", "5", "-S", "FORWARD"])
    if res.returncode != 0:
        return ForwardState(ipf, False, None, False, False)
    policy = None
    ours = f"-A FORWARD {' '.join(accept_rule(interface))}"
    rule_at = catch_all_at = None
    for i, line in enumerate(res.stdout.splitlines()):
        line = line.strip()
        if line.startswith("-P FORWARD "):
            policy = line.split()[2]
        elif line == ours and rule_at is None:
            rule_at = i
        elif catch_all_at is None and (
            line == "-A FORWARD -j DROP" or line.startswith("-A FORWARD -j REJECT")
        ):
            catch_all_at = i
    drops = policy in ("DROP", "REJECT") or catch_all_at is not None
    accepted = rule_at is not None and (catch_all_at is None or rule_at < catch_all_at)
    return ForwardState(ipf, True, policy, accepted, drops)


def enable_forwarding(
    interface: str, *, sysctl: Path = IP_FORWARD, runner: Runner | None = None
) -> list[str]:
    """Turn on forwarding for ``interface``; return what was changed (empty: nothing to do).

    Call it after the WireGuard interface exists (``hub serve`` at start, before its first
    reconcile). The settings are runtime ones: the hub applies them again at every start.
    """
    runner = runner or default_runner
    done: list[str] = []
    if not read_ip_forward(sysctl):
        try:
            sysctl.write_text("1\n")
        except OSError as exc:
            raise BuilderError(
                f"cannot enable forwarding ({sysctl}): {exc.strerror or exc}",
                hint="run the hub as root (or with CAP_NET_ADMIN), or set "
                "net.ipv4.ip_forward=1 in /etc/sysctl.d/",
            ) from exc
        done.append("net.ipv4.ip_forward=1")
        log.info("enabled net.ipv4.ip_forward")
    state = forward_state(interface, sysctl=sysctl, runner=runner)
    if state.iptables and state.drops and not state.accept_rule:
        argv = ["iptables", "-w", "5", "-I", "FORWARD", "1", *accept_rule(interface)]
        res = runner(argv)
        if res.returncode != 0:
            raise BuilderError(
                f"cannot add the FORWARD rule for {interface}: {res.stderr.strip()[-300:]}",
                hint=f"add it by hand: iptables -I FORWARD 1 {' '.join(accept_rule(interface))}",
            )
        done.append(f"iptables -I FORWARD 1 {' '.join(accept_rule(interface))}")
        log.info("accepted forwarding on %s (FORWARD policy %s)", interface, state.policy)
    return done
