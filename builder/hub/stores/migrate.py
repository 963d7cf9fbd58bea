"""``builder hub migrate --to etcd``: copy a SQLite hub's state into etcd, verify, switch.

1. read tokens, nodes and the address quarantine from the SQLite file in ONE read
   transaction (a consistent snapshot, even while the hub runs);
2. write them under ``PREFIX/state/`` in transactions of at most ``CHUNK`` operations, the
   first one only if the prefix holds no state yet (or exactly this state: a re-run), each
   following one only if nobody else wrote meanwhile (compare on the marker key);
3. read everything back and compare it row by row with the snapshot;
4. read the SQLite file again: if the hub changed it during the copy, stop (run again with
   the hub stopped); otherwise write ``store`` into ``hub.json`` (atomically, 0600 kept).

Nodes keep their addresses, keys and secrets (the secret key file stays the same), so no
node enrolls again. The SQLite file is left as it was (the way back).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from builder.errors import BuilderError, UsageError
from builder.fsutil import atomic_write

from ..config import HubConfig, StoreConfig
from ..store import Pool
from .etcd import TABLES, EtcdStore
from .etcd_client import b64, put

CHUNK = 100
MIGRATE = "migrate"  # the marker's value while only this command has written


@dataclass(frozen=True)
class Migrated:
    tokens: int
    nodes: int
    quarantine: int
    config_updated: bool


def sqlite_rows(path: Any) -> dict[str, str]:
    """``kind/id`` -> JSON row, the etcd layout, read in one transaction."""
    c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    c.row_factory = sqlite3.Row
    try:
        c.execute("BEGIN")
        out = {}
        for kind, (table, pk) in TABLES.items():
            for r in c.execute(f"SELECT * FROM {table}"):  # noqa: S608 - fixed table names
                d = dict(r)
                out[f"{kind}/{d[pk]}"] = json.dumps(d, sort_keys=True)
        c.execute("COMMIT")
        return out
    except sqlite3.Error as exc:
        raise UsageError(f"{path}: cannot read the hub database: {exc}") from exc
    finally:
        c.close()


def _same(a: dict[str, str], b: dict[str, str]) -> bool:
    return a.keys() == b.keys() and all(json.loads(a[k]) == json.loads(b[k]) for k in a)


def to_etcd(cfg: HubConfig, target: StoreConfig, write_config: bool = True) -> Migrated:
    if not cfg.database.exists():
        raise UsageError(f"{cfg.database}: no hub database to migrate")
    rows = sqlite_rows(cfg.database)
    pool = Pool(cfg.wg.network, cfg.wg.hub_ip, cfg.wg.reserved)
    st = EtcdStore(target, pool, cfg.quarantine_seconds)
    _, existing, marker_mod = st._load()
    marker = st.client.range(st.marker)[1]
    if existing and not (marker and marker[0][1] == MIGRATE):
        raise UsageError(
            f"etcd prefix {target.prefix}: already holds the state of running hubs",
            hint="choose another store.prefix, or empty it with etcdctl del --prefix",
        )
    ops = [put(st.state + k, v) for k, v in sorted(rows.items()) if existing.get(k) != v]
    ops += [put(st.state + k, "") for k in sorted(existing) if k not in rows]  # deleted
    for i in range(0, len(ops), CHUNK):
        if marker_mod:
            cmp = {"target": "MOD", "result": "EQUAL", "mod_revision": str(marker_mod)}
        else:
            cmp = {"target": "VERSION", "result": "EQUAL", "version": "0"}
        cmp["key"] = b64(st.marker)
        if not st.client.txn([cmp], [*ops[i : i + CHUNK], put(st.marker, MIGRATE)]):
            raise BuilderError(f"etcd prefix {target.prefix}: written by someone else meanwhile")
        marker_mod = st.client.range(st.marker)[1][0][2]
    _, back, _ = st._load()
    if not _same(back, rows):
        missing = sorted(set(rows) - set(back))[:5]
        raise BuilderError(f"etcd copy differs from the database (e.g. {missing})")
    if not _same(sqlite_rows(cfg.database), rows):
        raise UsageError(
            f"{cfg.database}: the hub changed its state during the copy",
            hint="stop the hub and run again: the copy is compared and completed",
        )
    counts = {k: sum(1 for r in rows if r.startswith(k + "/")) for k in TABLES}
    if write_config:
        raw = json.loads(cfg.path.read_text())
        raw["store"] = {"kind": "etcd", "endpoints": list(target.endpoints)}
        raw["store"]["prefix"] = target.prefix
        if target.ca:
            raw["store"]["tls"] = {"ca": str(target.ca), "cert": str(target.cert or "")}
            raw["store"]["tls"]["key"] = str(target.key or "")
        atomic_write(
            cfg.path, json.dumps(raw, indent=2) + "\n", mode=cfg.path.stat().st_mode & 0o777
        )
    return Migrated(counts["token"], counts["node"], counts["quarantine"], write_config)
