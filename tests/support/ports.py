"""Free TCP ports for tests that start a server on a port chosen in advance.

A port from ``bind(("127.0.0.1", 0))`` comes from the kernel's ephemeral range, the same range
every outgoing connection of every other lane draws from: between closing the probe socket and
the server binding, another connection can take it (a clean-clone CI run failed on
``Port 39103 is in use``). These ports come from just below the ephemeral range, are probed the
way a server binds (all addresses, SO_REUSEADDR), and are never handed out twice in a process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_HANDED_OUT: set[int] = set()
_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int:
    try:
        return int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default lower bound


def free_port() -> int:
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(max(1024, low - 12000), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free TCP port below the ephemeral range")


def free_ports(n: int) -> list[int]:
    return [free_port() for _ in range(n)]
