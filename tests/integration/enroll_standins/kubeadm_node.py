#!/usr/bin/env python3
"""STAND-IN for `kubeadm` on a node (the real one is unreachable offline).

Records its arguments and the JoinConfiguration it was given into $NF_STANDIN_RECORD
(JSON lines) and checks that the config is a kubeadm v1beta4 JoinConfiguration on a
private (0600) path whose node-ip matches $NF_STANDIN_EXPECT_IP when set, and whose
caCertHashes pin the cluster CA beside its bin directory (``cluster-ca.pem``, the CA the
cluster-info ConfigMap would carry) when the lab put one there.
With $NF_STANDIN_FAIL_FIRST_JOIN set to a path, the first `join` fails (and creates the
path) so the agent's `kubeadm reset -f` + fresh join material path is exercised.
"""

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import yaml

record = os.environ["NF_STANDIN_RECORD"]
args = sys.argv[1:]
entry = {"argv": args}
rc = 0
if args[:1] == ["join"]:
    path = args[args.index("--config") + 1]
    st = os.stat(path)
    entry["mode"] = oct(stat.S_IMODE(st.st_mode))
    entry["config_path"] = path
    with open(path) as fh:
        cfg = yaml.safe_load(fh)
    entry["config"] = cfg
    problems = []
    if cfg.get("apiVersion") != "kubeadm.k8s.io/v1beta4" or cfg.get("kind") != "JoinConfiguration":
        problems.append("not a v1beta4 JoinConfiguration")
    args_list = cfg["nodeRegistration"]["kubeletExtraArgs"]
    node_ip = {a["name"]: a["value"] for a in args_list}.get("node-ip")
    want = os.environ.get("NF_STANDIN_EXPECT_IP")
    if want and node_ip != want:
        problems.append(f"node-ip {node_ip} != {want}")
    bt = cfg["discovery"]["bootstrapToken"]
    if not bt.get("token") or not bt.get("caCertHashes"):
        problems.append("no bootstrap token / CA hash")
    # discovery: the cluster CA (what cluster-info would carry) must be pinned: sha256 of
    # its DER SubjectPublicKeyInfo, as kubeadm's pubkeypin (UPSTREAM.md, "join: CA pin")
    cluster_ca = Path(__file__).resolve().parent.parent / "cluster-ca.pem"
    if cluster_ca.exists():
        pub = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", str(cluster_ca)],
                             capture_output=True, check=True).stdout  # fmt: skip
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub,
                             capture_output=True, check=True).stdout  # fmt: skip
        got = "sha256:" + hashlib.sha256(der).hexdigest()
        entry["cluster_ca_pin"] = got
        if got not in [str(h).lower() for h in bt.get("caCertHashes") or []]:
            problems.append(f'none of the public keys "{got}" are pinned')
    entry["problems"] = problems
    fail_first = os.environ.get("NF_STANDIN_FAIL_FIRST_JOIN")
    if problems:
        rc = 3
    elif fail_first and not os.path.exists(fail_first):
        open(fail_first, "w").close()
        entry["failed_on_purpose"] = True
        rc = 1
with open(record, "a") as fh:
    fh.write(json.dumps(entry) + "\n")
if rc:
    print("stand-in kubeadm: join failed", entry.get("problems"), file=sys.stderr)
sys.exit(rc)
