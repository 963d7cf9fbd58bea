"""Boot tests: the values every part shares (ports, paths, kernel arguments, the logger)."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("builder.boottest")

FORMAT = 1  # bump when the disk recipe (disk.py) changes in a way the inputs do not show
MARKER = "NODEFORGE-BOOTCHECK"
HUB_HOST = "10.0.2.2"  # QEMU user networking: the host side, i.e. the namespace's loopback
HUB_PORT = 8443
WG_PORT = 51820
REPO_IN_ROOT = "/srv/nodeforge-standin-repo"
BUILD_IN_ROOT = "/var/tmp/nodeforge-build"
# a bootstrap token for the hub's `static` join provider: no cluster here, the stand-in
# kubeadm only records what it was given
STATIC_JOIN_TOKEN = "nfboot.0123456789abcdef"
STATIC_CA_HASH = "sha256:" + "ab" * 32
API_SERVER = "10.200.0.1:6443"
BUILDER = [sys.executable, "-c", "from builder.cli import main; main()"]
APPEND = "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.show_status=1"
APPEND_UEFI = "root=/dev/vda2 rw console=ttyS0 net.ifnames=0 systemd.show_status=1"
BOOTCHECK_WAIT = 600  # seconds the check unit waits for "joined" (TCG on a loaded host is slow)
# an Ubuntu cloud image has e2fsprogs (cloud-init's resizefs needs resize2fs)
ROOTFS_EXTRA = ("e2fsprogs",)
REQUIRED_SYSCTLS = (
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.ip_forward",
)
