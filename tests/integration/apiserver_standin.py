#!/usr/bin/env python3
"""STAND-IN for kube-apiserver as a joining node sees it before it trusts anything.

Serves TLS on --bind:--port with the given certificate (made by the test, with or without
the overlay IP as a SAN) and answers the anonymous discovery request kubeadm makes,
``GET /api/v1/namespaces/kube-public/configmaps/cluster-info``, with a ConfigMap whose
``data.kubeconfig`` names ``--server`` (the cluster's controlPlaneEndpoint), like the real
API server does for kubeadm's bootstrap RBAC rule; ``--status`` makes it refuse (403).
Every other path is 404. Prints "ready" once listening. Runs inside the test's namespace.
"""

import argparse
import http.server
import json
import ssl
import sys

import yaml

ap = argparse.ArgumentParser()
ap.add_argument("--bind", required=True)
ap.add_argument("--port", type=int, default=6443)
ap.add_argument("--cert", required=True)
ap.add_argument("--key", required=True)
ap.add_argument("--server", required=True)
ap.add_argument("--status", type=int, default=200)
args = ap.parse_args()

kubeconfig = yaml.safe_dump(
    {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "",
                "cluster": {"certificate-authority-data": "LS0tLQ==", "server": args.server},
            }
        ],
        "contexts": [],
        "users": [],
    }
)
configmap = {
    "kind": "ConfigMap",
    "apiVersion": "v1",
    "metadata": {"name": "cluster-info", "namespace": "kube-public"},
    "data": {"kubeconfig": kubeconfig, "jws-kubeconfig-abcdef": "stand-in..signature"},
}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/api/v1/namespaces/kube-public/configmaps/cluster-info":
            status = args.status
            body = configmap if status == 200 else {"kind": "Status", "code": status}
        else:
            status, body = 404, {"kind": "Status", "code": 404}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(args.cert, args.key)
srv = http.server.ThreadingHTTPServer((args.bind, args.port), Handler)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
sys.stdout.close()
srv.serve_forever()
