#!/usr/bin/env python3
"""STAND-IN for `kubeadm token create --dry-run` on the control plane (no cluster here).

Like the real command it loads the admin kubeconfig first and fails when it is missing
("failed to load admin kubeconfig: open PATH: no such file or directory", exit 1); with
--dry-run it prints the actions it would perform, then the generated token on the last
line, and creates nothing. Without --dry-run it refuses: the doctor must never mint.
"""

import os
import secrets
import string
import sys

args = sys.argv[1:]
if args[:2] != ["token", "create"]:
    print(f"stand-in kubeadm: unsupported {args}", file=sys.stderr)
    sys.exit(2)
if "--dry-run" not in args:
    print("stand-in kubeadm: the doctor must not create tokens", file=sys.stderr)
    sys.exit(3)
kubeconfig = args[args.index("--kubeconfig") + 1] if "--kubeconfig" in args else ""
if not os.path.exists(kubeconfig):
    print(
        f"failed to load admin kubeconfig: open {kubeconfig}: no such file or directory",
        file=sys.stderr,
    )
    sys.exit(1)
alphabet = string.ascii_lowercase + string.digits
tid = "".join(secrets.choice(alphabet) for _ in range(6))
sec = "".join(secrets.choice(alphabet) for _ in range(16))
print('[dryrun] Would perform action GET on resource "secrets" in API group "core/v1"')
print(f'[dryrun] Resource name: "bootstrap-token-{tid}"')
print('[dryrun] Would perform action CREATE on resource "secrets" in API group "core/v1"')
print(f"{tid}.{sec}")
