#!/usr/bin/env python3
"""Runs builder.hub.doctor (or routing.enable_forwarding) inside the test's namespace.

argv[1] = JSON: {"target": {...}, "probes": {...}} for doctor, or {"enable": "wg0"}.
Prints one JSON line: {"exit": N, "checks": [...]} or {"done": [...]}.
"""

import ipaddress
import json
import sys
from pathlib import Path

from builder.hub import doctor, routing

spec = json.loads(sys.argv[1])
if "enable" in spec:
    print(json.dumps({"done": routing.enable_forwarding(spec["enable"])}))
    sys.exit(0)
t = spec["target"]
target = doctor.Target(
    interface=t["interface"],
    hub_ip=ipaddress.IPv4Address(t["hub_ip"]),
    network=ipaddress.IPv4Network(t["network"]),
    mtu=t["mtu"],
    api_port=t.get("api_port", 6443),
    config_path=t.get("config_path", "hub.json"),
    join=t.get("join", {}),
)
paths = {k: Path(v) for k, v in spec.get("probes", {}).items()}
checks = doctor.doctor(target, doctor.Probes(**paths))
print(json.dumps({"exit": doctor.exit_code(checks), "checks": [c.as_dict() for c in checks]}))
