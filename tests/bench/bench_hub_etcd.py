#!/usr/bin/env python3
"""Load benchmark for several hubs on etcd (issue 16; a script, not a test): run as root.

    .venv/bin/python tests/bench/bench_hub_etcd.py [--n 1000] [--hubs 3] [--procs 3] [--threads 16]
        [--rounds 3]

In one private network namespace: a 3-member etcd cluster (Debian's etcd-server) on its
loopback, HUBS real `builder hub serve` on it (store.kind etcd, each with its own
wireguard-go interface), N enrollments spread over the hubs by P client processes x T
threads (fresh TLS connection each). Then, in the same round, the single SQLite hub
(tests/bench/bench_hub.py's case "hub") with the same N/P/T, and the ratio; ROUNDS rounds
(a fresh lab each), medians printed.
Prints throughput, p50/p99, hub CPU per enrollment (all hub processes: servers + writers),
etcd CPU, duplicates (must be 0) and the compare-and-swap conflicts seen by the hubs.
Everything shares the machine's cores (2 here): read the figures against `uptime`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the repository: tests.support
sys.path.insert(0, str(HERE.parent / "integration"))
sys.path.insert(0, str(HERE))

from bench_hub import children, proc_cpu, run_case  # noqa: E402
from enroll_lab import BUILDER, CLIENT, REPO, Lab, missing_tools, records, sh  # noqa: E402
from etcd_lab import EtcdCluster, missing  # noqa: E402

LIST = (
    "import json,sys;from builder.hub import config,stores;"
    "s=stores.open_store(config.load(sys.argv[1]),secret=False);"
    "print(json.dumps({'ips':[n['ip'] for n in s.list_nodes() if n['ip']],"
    "'used':[t['used'] for t in s.list_tokens()]}))"
)


def setup_hubs(lab: Lab, cluster: EtcdCluster, hubs: int, cidr_prefix: str) -> list[dict]:
    first = lab.tmp / "etcd-hub0"
    sh([*BUILDER, "hub", "init", str(first), "--endpoint", "192.168.77.1:51900",
        "--url", "https://192.168.77.1:8460", "--overlay-cidr", f"{cidr_prefix}.0.0/16"],
       cwd=REPO)  # fmt: skip
    out = []
    for i in range(hubs):
        d = lab.tmp / f"etcd-hub{i}"
        if i:
            shutil.copytree(first, d)
            (d / "wg.key").write_text(sh(["wg", "genkey"]).stdout)
        cfg = json.loads((d / "hub.json").read_text())
        cfg["listen"] = f"0.0.0.0:{8460 + i}"
        cfg["url"] = f"https://192.168.77.1:{8460 + i}"
        w = cfg["wireguard"]
        w.update(
            interface=f"nfx{i}{lab.tag}"[:15],
            listen_port=51900 + i,
            endpoint=f"192.168.77.1:{51900 + i}",
            hub_overlay_ip=f"{cidr_prefix}.0.{i + 1}",
            reserved=[f"{cidr_prefix}.0.{j + 1}" for j in range(hubs) if j != i],
            private_key_file=str(d / "wg.key"),
        )
        cfg["join"] = {
            "provider": "static",
            "token": "abcdef.0123456789abcdef",
            "ca_cert_hashes": ["sha256:" + "0" * 64],
        }
        cfg["limits"] = {
            "per_ip_rate": 0,
            "per_token_rate": 0,
            "request_timeout": 60,
            "per_source_connections": 1024,
        }
        cfg["store"] = {"kind": "etcd", "endpoints": cluster.endpoints, "prefix": "/bench",
                        "name": f"hub{i}"}  # fmt: skip
        (d / "hub.json").write_text(json.dumps(cfg))
        out.append({"dir": d, "config": d / "hub.json", "url": cfg["url"], "iface": w["interface"]})
    return out


def etcd_case(lab: Lab, n: int, hubs: int, procs: int, threads: int) -> dict:
    cluster = EtcdCluster(lab.tmp / "etcd", members=3, netns=lab.hub_ns).start()
    try:
        hs = setup_hubs(lab, cluster, hubs, "10.110")
        for h in hs:
            h["proc"] = lab.start_hub(h["config"], h["dir"] / "hub.log")
        for h in hs:
            lab.wait_healthy(h["url"], h["dir"] / "ca.pem", h["proc"], h["dir"] / "hub.log")
        argv = [*BUILDER, "hub", "token", "create", "--config", str(hs[0]["config"])]
        token = lab.hx(
            [*argv, "--site", "lab", "--new-site", "--uses", str(n)], cwd=REPO
        ).stdout.strip()
        cpu0 = {h["url"]: hub_cpu(h["proc"].pid) for h in hs}
        etcd0 = sum(proc_cpu(p.pid) for p in cluster.procs.values())
        out = lab.tmp / "etcd-results.jsonl"
        nproc = max(procs, hubs)
        start_at = time.time() + 3.0
        ps = []
        for k in range(nproc):
            h = hs[k % hubs]
            idx = list(range(k, n, nproc))
            ps.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        lab.hub_ns,
                        sys.executable,
                        str(CLIENT),
                        "burst",
                        "--url",
                        h["url"],
                        "--ca",
                        str(h["dir"] / "ca.pem"),
                        "--token",
                        token,
                        "--n",
                        str(n),
                        "--threads",
                        str(threads),
                        "--prefix",
                        "etcd",
                        "--out",
                        str(out),
                        "--only",
                        ",".join(map(str, idx)),
                        "--start-at",
                        str(start_at),
                    ]  # fmt: skip
                )
            )
        for p in ps:
            p.wait()
        res = records(out)
        wall = max(r["t_end"] for r in res) - start_at
        ok = [r for r in res if r["status"] == 200]
        lat = sorted(r["latency"] for r in ok)
        cpu = sum(hub_cpu(h["proc"].pid) - cpu0[h["url"]] for h in hs)
        etcd_cpu = sum(proc_cpu(p.pid) for p in cluster.procs.values()) - etcd0
        time.sleep(2)  # the watch brings every hub's interface in line
        state = json.loads(
            lab.hx([sys.executable, "-c", LIST, str(hs[0]["config"])], cwd=REPO).stdout
        )
        given = [r["address"] for r in ok]
        wg_missing = 0
        for h in hs:
            wg = {f[0] for f in lab.wg_dump(lab.hub_ns, h["iface"])}
            wg_missing += sum(1 for r in ok if r["pubkey"] not in wg)
        for h in hs:
            h["proc"].terminate()
            h["proc"].wait(15)
        return {
            "case": f"etcd x{hubs}",
            "n": n,
            "ok": len(ok),
            "errors": len(res) - len(ok),
            "error_kinds": sorted({r["status"] for r in res if r["status"] != 200}),
            "seconds": wall,
            "per_second": len(ok) / wall,
            "p50": statistics.median(lat) if lat else float("nan"),
            "p99": lat[int(0.99 * (len(lat) - 1))] if lat else float("nan"),
            "dup_answers": len(given) - len(set(given)),
            "dup_store": len(state["ips"]) - len(set(state["ips"])),
            "token_used": max(state["used"]),
            "missing_on_interfaces": wg_missing,
            "hub_cpu_s": cpu,
            "hub_cpu_ms_per_enrollment": 1000 * cpu / max(1, len(ok)),
            "etcd_cpu_s": etcd_cpu,
        }
    finally:
        cluster.stop()


def hub_cpu(pid: int) -> float:
    return proc_cpu(pid) + sum(proc_cpu(c) for c in children(pid))


def one_round(tmp: Path, tag: str, a: argparse.Namespace) -> tuple[dict, dict]:
    """One etcd case and one SQLite case, side by side, in a fresh lab (namespace, etcd)."""
    tmp.mkdir()
    lab = Lab(tmp, tag)
    try:
        e = etcd_case(lab, a.n, a.hubs, a.procs, a.threads)
        s = run_case(
            lab, False, "sqlite", 8443, 51820, "10.100.0.0/16", a.n, a.procs, a.threads, 256
        )
        s["hub_cpu_ms_per_enrollment"] = 1000 * s["hub_cpu_s"] / max(1, s["ok"])
    finally:
        lab.close()
    return e, s


def show(r: dict) -> str:
    return (
        f"{r['case']:10} ok {r['ok']:5d} err {r['errors']:4d} {r['per_second']:7.0f}/s "
        f"p50 {r['p50'] * 1000:7.1f} ms p99 {r['p99'] * 1000:7.1f} ms "
        f"hub CPU {r['hub_cpu_ms_per_enrollment']:.1f} ms/enrollment"
    )


def ratios(e: dict, s: dict) -> dict[str, float]:
    return {
        "throughput": e["per_second"] / s["per_second"],
        "p99": e["p99"] / s["p99"],
        "hub_cpu": e["hub_cpu_ms_per_enrollment"] / s["hub_cpu_ms_per_enrollment"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--hubs", type=int, default=3)
    ap.add_argument("--procs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="etcd and SQLite side by side, N times")
    a = ap.parse_args()
    miss = missing_tools() + ([missing()] if missing() else [])
    if miss:
        print(f"bench_hub_etcd: needs {', '.join(m for m in miss if m)}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-hub-etcd-"))
    rounds = []
    for i in range(a.rounds):
        e, s = one_round(tmp / f"round{i}", str((os.getpid() + i) % 10000), a)
        rounds.append((e, s))
        print(f"round {i + 1}/{a.rounds}  (load average {os.getloadavg()[0]:.1f})")
        for r in (e, s):
            print("  " + show(r))
        print(
            f"  etcd: CPU {e['etcd_cpu_s']:.1f}s (3 members); duplicates answers/store "
            f"{e['dup_answers']}/{e['dup_store']}; token used {e['token_used']} of {e['n']}; "
            f"200s missing on a hub interface after 2 s: {e['missing_on_interfaces']}"
        )
    med = {k: statistics.median(ratios(e, s)[k] for e, s in rounds) for k in ratios(*rounds[0])}
    for key, label in (("per_second", "throughput/s"), ("p50", "p50 s"), ("p99", "p99 s"),
                       ("hub_cpu_ms_per_enrollment", "hub CPU ms/enrollment")):  # fmt: skip
        e_med = statistics.median(e[key] for e, _ in rounds)
        s_med = statistics.median(s[key] for _, s in rounds)
        print(f"median of {a.rounds}: {label:22} etcd x{a.hubs} {e_med:9.3f}  sqlite {s_med:9.3f}")
    print(
        f"ratio etcd/sqlite (median of the {a.rounds} per-round ratios): throughput "
        f"x{med['throughput']:.2f}, p99 x{med['p99']:.2f}, hub CPU/enrollment x{med['hub_cpu']:.2f}"
    )
    print(json.dumps([[e, s] for e, s in rounds]))
    bad = sum(e["dup_answers"] + e["dup_store"] + e["missing_on_interfaces"] for e, _ in rounds)
    return 0 if bad == 0 and all(e["token_used"] <= e["n"] for e, _ in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
