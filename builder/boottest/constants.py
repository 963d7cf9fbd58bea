"""Boot tests: the values every part shares (ports, addresses, kernel arguments, the logger)."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("builder.boottest")

FORMAT = 1  # bump when the cached hub identity (lab.py) changes in a way its key does not show
HUB_HOST = "10.0.2.2"  # QEMU user networking: the host side, i.e. the namespace's loopback
HUB_PORT = 8443
HUB_URL = f"https://{HUB_HOST}:{HUB_PORT}"  # the lab hub's enrollment URL, as nodes see it
WG_PORT = 51820
# a bootstrap token for the hub's `static` join provider: no cluster here, kubeadm on the
# node only gets join material it cannot use against a real API server
STATIC_JOIN_TOKEN = "nfboot.0123456789abcdef"
# the public-key pin (sha256 of the DER SubjectPublicKeyInfo) of the stand-in cluster's CA
# (tests/support/standin_programs/cluster-ca.crt), which the stand-in kubeadm verifies
STATIC_CA_HASH = "sha256:fc5fc6e016af1ec2bdf9c4fe00af25201e9ee72df71cf2c02a8b3e0dfc16b30c"
API_SERVER = "10.200.0.1:6443"
BUILDER = [sys.executable, "-c", "from builder.cli import main; main()"]
# direct kernel boot (--kernel): a whole-disk root file system on the first virtio disk
# no_timer_check: skip the kernel's boot-time test of the timer interrupt (x86 kernel
# parameter, "x86_64: Add option to disable timer check", linux 14d98cad, 2005), which
# a TCG guest on a loaded host fails ("IO-APIC + timer doesn't work!" panic, seen
# 2026-11-30 with 8 helpers on 2 cores)
APPEND = "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.show_status=1 no_timer_check"
HUB_POLL = 3.0  # seconds between looks at the hub while a node boots
