#!/usr/bin/env python3
"""Load benchmark for the enrollment hub (a script, not a test): run as root.

    .venv/bin/python tests/bench/bench_hub.py [--n 1000] [--procs 4] [--threads 16]

A real `builder hub serve` in a private network namespace with a real wireguard-go
interface (WireGuard apply included: every 200 is committed to SQLite *and* on the
interface), hammered with N enrollments from P client processes x T threads, each
enrollment a fresh TLS connection (as real nodes do). Prints throughput, p50/p99 latency and
duplicates (addresses given twice in the DB or on the interface: must be 0), for:
  - hub:       the shipped settings (group commit: one transaction + one `wg set` per batch)
  - baseline:  the same hub with batch_max=1 (one transaction + one `wg set` per enrollment)
  - hub-ka:    the shipped hub, clients reusing one keep-alive connection per thread (the
               hub's own capacity, without paying a client TLS handshake per enrollment on
               the same 2 cores)
and, with BEFORE_REV=<git rev> in the environment, "hub-<rev>": the shipped settings with
that commit's hub code (its tree from `git archive`, ahead on the hub's sys.path), run in
the same session as "hub" so both meet the same machine load;
and the ratio hub/baseline. Goal: >= 500 enrollments/s, p99 < 1 s on 2 cores. Clients and
hub share the machine's cores: the CPU seconds of each side are printed so the figures can
be read against the load other jobs put on the machine (see `uptime`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

from enroll_lab import BUILDER, CLIENT, REPO, Lab, missing_tools, records, sh  # noqa: E402


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


def start_hub(lab: Lab, config: Path, log: Path, code: Path | None) -> subprocess.Popen:
    """`builder hub serve`, from ``code`` (another commit's tree) when given."""
    if code is None:
        return lab.start_hub(config, log)
    fh = open(log, "a")  # noqa: SIM115 - the hub process keeps it
    boot = f"import sys; sys.path.insert(0, {str(code)!r}); from builder.cli import main; main()"
    p = subprocess.Popen(
        ["ip", "netns", "exec", lab.hub_ns, sys.executable, "-c", boot]
        + ["hub", "serve", "--config", str(config)],
        cwd=REPO,
        stdout=fh,
        stderr=subprocess.STDOUT,
    )
    lab.procs.append(p)
    return p


def hub_cpu_now(pid: int) -> float:
    """CPU seconds of the hub: the server process and its children (the writer)."""
    return proc_cpu(pid) + sum(proc_cpu(c) for c in children(pid))


def run_case(
    lab: Lab,
    keepalive: bool,
    name: str,
    port: int,
    wg_port: int,
    cidr: str,
    n: int,
    procs: int,
    threads: int,
    batch_max: int,
    code: Path | None = None,
) -> dict:
    d = lab.tmp / name
    sh(
        [
            *BUILDER,
            "hub",
            "init",
            str(d),
            "--endpoint",
            f"192.168.77.1:{wg_port}",
            "--url",
            f"https://192.168.77.1:{port}",
            "--overlay-cidr",
            cidr,
        ],
        cwd=REPO,
    )
    cfg = json.loads((d / "hub.json").read_text())
    cfg["wireguard"]["interface"] = f"nfb{port % 100}x{lab.tag}"[:15]
    cfg["join"] = {
        "provider": "static",
        "token": "abcdef.0123456789abcdef",
        "ca_cert_hashes": ["sha256:" + "0" * 64],
    }
    cfg["limits"] = {
        "per_ip_rate": 0,
        "per_token_rate": 0,
        "batch_max": batch_max,
        "request_timeout": 30,
        # every client process sends from the lab's one address: let them all in
        "per_source_connections": 1024,
    }
    (d / "hub.json").write_text(json.dumps(cfg))
    url = f"https://192.168.77.1:{port}"
    log = d / "hub.log"
    hub = start_hub(lab, d / "hub.json", log, code)
    lab.wait_healthy(url, d / "ca.pem", hub, log)
    token = sh(
        [
            *BUILDER,
            "hub",
            "token",
            "create",
            "--config",
            str(d / "hub.json"),
            "--site",
            "lab",
            "--new-site",
            "--uses",
            str(n),
        ],
        cwd=REPO,
    ).stdout.strip()
    out = d / "results.jsonl"
    chunks = [list(range(i, n, procs)) for i in range(procs)]
    hub_cpu0 = hub_cpu_now(hub.pid)  # start-up (imports, keys, the writer process) so far
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = ru.ru_utime + ru.ru_stime
    start_at = time.time() + 3.0  # clients import, make their keys, then start together
    ps = [
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
                url,
                "--ca",
                str(d / "ca.pem"),
                "--token",
                token,
                "--n",
                str(n),
                "--threads",
                str(threads),
                "--prefix",
                name,
                "--out",
                str(out),
                "--only",
                ",".join(map(str, c)),
                "--start-at",
                str(start_at),
                *(["--keepalive"] if keepalive else []),
            ]
        )
        for c in chunks
    ]
    for p in ps:
        p.wait()
    res = records(out)
    wall = max(r["t_end"] for r in res) - start_at
    ok = [r for r in res if r["status"] == 200]
    lat = sorted(r["latency"] for r in ok)
    db = sqlite3.connect(d / "hub.db")
    ips = [r[0] for r in db.execute("SELECT ip FROM nodes WHERE ip IS NOT NULL")]
    db.close()
    wg = [f[3] for f in lab.wg_dump(lab.hub_ns, cfg["wireguard"]["interface"])]
    given = [r["address"] for r in ok]
    m = lab.client(
        lab.hub_ns,
        "request",
        "--url",
        url,
        "--ca",
        str(d / "ca.pem"),
        "--method",
        "GET",
        "--path",
        "/metrics",
    )["body"]
    metrics = {
        k: float(v)
        for k, v in (
            line.split()
            for line in m.splitlines()
            if line.startswith(("nodeforge_hub_batch", "nodeforge_hub_db_s", "nodeforge_hub_wg_s"))
        )
    }
    hub_cpu = hub_cpu_now(hub.pid)  # + writer
    client_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu_s = client_cpu.ru_utime + client_cpu.ru_stime - cpu0
    hub.terminate()
    hub.wait(timeout=15)
    return {
        "case": name,
        "n": n,
        "ok": len(ok),
        "errors": len(res) - len(ok),
        "seconds": wall,
        "per_second": len(ok) / wall,
        "p50": statistics.median(lat) if lat else float("nan"),
        "p99": lat[int(0.99 * (len(lat) - 1))] if lat else float("nan"),
        "dup_answers": len(given) - len(set(given)),
        "dup_db": len(ips) - len(set(ips)),
        "dup_wg": len(wg) - len(set(wg)),
        "db_nodes": len(ips),
        "wg_peers": len(wg),
        "hub_cpu_s": hub_cpu,
        "hub_burst_cpu_s": hub_cpu - hub_cpu0,
        "metrics": metrics,
        "client_cpu_s": client_cpu_s,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--no-baseline", action="store_true")
    a = ap.parse_args()
    miss = missing_tools()
    if miss:
        print(f"bench_hub: needs {', '.join(miss)}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    lab = Lab(tmp, str(os.getpid() % 10000))
    results = []
    try:
        common = (a.n, a.procs, a.threads)
        results.append(run_case(lab, False, "hub", 8443, 51820, "10.100.0.0/16", *common, 256))
        rev = os.environ.get("BEFORE_REV")
        if rev:
            old = tmp / "before-src"
            old.mkdir()
            tar = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True)
            subprocess.run(["tar", "-x", "-C", old], input=tar.stdout, check=True)
            results.append(
                run_case(
                    lab, False, f"hub-{rev}"[:10], 8446, 51823, "10.103.0.0/16", *common, 256, old
                )  # fmt: skip
            )
        results.append(run_case(lab, True, "hub-ka", 8445, 51822, "10.102.0.0/16", *common, 256))
        if not a.no_baseline:
            results.append(
                run_case(lab, False, "baseline", 8444, 51821, "10.101.0.0/16", *common, 1)
            )
    finally:
        lab.close()
    print(
        f"{'case':10} {'ok':>5} {'err':>4} {'enroll/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'dups(ans/db/wg)':>16} {'db/wg':>10}"
    )
    for r in results:
        print(
            f"{r['case']:10} {r['ok']:5d} {r['errors']:4d} {r['per_second']:9.0f} "
            f"{r['p50'] * 1000:8.1f} {r['p99'] * 1000:8.1f} "
            f"{r['dup_answers']:>6}/{r['dup_db']}/{r['dup_wg']:<7} "
            f"{r['db_nodes']:>5}/{r['wg_peers']}"
        )
    for r in results:
        print(
            f"{r['case']}: hub CPU {r['hub_cpu_s']:.1f}s (server + writer, incl. start-up), "
            f"{r['hub_burst_cpu_s']:.2f}s over the burst = "
            f"{r['hub_burst_cpu_s'] / max(1, r['ok']) * 1000:.2f} ms per enrollment; "
            f"client CPU {r['client_cpu_s']:.1f}s (incl. set-up) over {r['seconds']:.1f}s wall"
        )
        m = r["metrics"]
        batches = m.get("nodeforge_hub_batches_total", 0)
        avg = m.get("nodeforge_hub_batch_items_total", 0) / max(1, batches)
        print(
            f"{r['case']}: {batches:.0f} batches (avg {avg:.1f}), "
            f"writer time: sqlite {m.get('nodeforge_hub_db_seconds_total', 0):.2f}s, "
            f"wg apply {m.get('nodeforge_hub_wg_seconds_total', 0):.2f}s"
        )
    by = {r["case"]: r for r in results}
    h = by["hub"]
    if "baseline" in by:
        b = by["baseline"]
        print(
            f"ratio hub/baseline: throughput x{h['per_second'] / b['per_second']:.2f}, "
            f"p99 x{h['p99'] / b['p99']:.2f}"
        )
    for r in results:
        if r["case"].startswith("hub-") and r["case"] != "hub-ka":  # another commit's hub
            ours, theirs = h["hub_burst_cpu_s"] / h["ok"], r["hub_burst_cpu_s"] / r["ok"]
            print(
                f"hub CPU per enrollment over the burst: {ours * 1000:.2f} ms vs "
                f"{theirs * 1000:.2f} ms ({r['case']}): x{ours / theirs:.2f}"
            )
    hub = results[0]
    goal = hub["per_second"] >= 500 and hub["p99"] < 1.0
    dups = sum(r["dup_answers"] + r["dup_db"] + r["dup_wg"] for r in results)
    print(f"goal (>=500/s, p99<1s): {'met' if goal else 'NOT met'}; duplicates: {dups}")
    print(json.dumps(results))
    return 0 if dups == 0 and all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
