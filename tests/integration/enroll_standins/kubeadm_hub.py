#!/usr/bin/env python3
"""STAND-IN for `kubeadm token create/delete` on the control plane (no cluster here).

`token create …` prints a fresh bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`; `token delete
ID` succeeds. Every call is appended to $NF_STANDIN_RECORD (JSON lines) with the token it
printed, so the test can match the token a node used and the one the hub deleted.
"""

import json
import os
import secrets
import string
import sys

alphabet = string.ascii_lowercase + string.digits
args = sys.argv[1:]
entry = {"argv": args}
if args[:2] == ["token", "create"]:
    tok = (
        "".join(secrets.choice(alphabet) for _ in range(6))
        + "."
        + "".join(secrets.choice(alphabet) for _ in range(16))
    )
    entry["token"] = tok
    print(tok)
elif args[:2] != ["token", "delete"]:
    print("stand-in kubeadm: unsupported", args, file=sys.stderr)
    sys.exit(2)
with open(os.environ["NF_STANDIN_RECORD"], "a") as fh:
    fh.write(json.dumps(entry) + "\n")
