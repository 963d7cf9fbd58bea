"""SQLite (WAL) store: tokens (hashed), nodes, address quarantine, audit. The source of truth.

Every write runs in ``BEGIN IMMEDIATE`` … ``COMMIT``. The enrollment rules (batches in one
transaction, replays, re-enrollment) are in ``enroll.py``; this module holds the schema,
tokens, the address pool and the operator's actions (approve, revoke).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from builder.errors import UsageError

from . import tokens as tok
from .enroll import (  # noqa: F401 - re-exported: callers import them from here
    ACTIVE,
    AUDIT_INSERT,
    EnrollMixin,
    EnrollRequest,
    Outcome,
    PoolExhausted,
)

log = logging.getLogger("nodeforge.hub")
audit_log = logging.getLogger("nodeforge.hub.audit")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens(
  id TEXT PRIMARY KEY, hash TEXT NOT NULL, site TEXT NOT NULL,
  max_uses INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0,
  approve INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, expires_at REAL NOT NULL,
  revoked_at REAL, description TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS nodes(
  node_id TEXT PRIMARY KEY, site TEXT NOT NULL, pubkey TEXT NOT NULL UNIQUE,
  ip TEXT UNIQUE,
  state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'joined', 'revoked')),
  generation INTEGER NOT NULL DEFAULT 1,
  hostname TEXT NOT NULL DEFAULT '', fingerprint TEXT NOT NULL DEFAULT '',
  image_version TEXT NOT NULL DEFAULT '', token_id TEXT, remote TEXT,
  created_at REAL NOT NULL, updated_at REAL NOT NULL, joined_at REAL,
  bootstrap_token_id TEXT, replaces TEXT, pending_pubkey TEXT, pending_token_id TEXT,
  pending_at REAL);
CREATE INDEX IF NOT EXISTS nodes_fingerprint ON nodes(fingerprint);
CREATE TABLE IF NOT EXISTS quarantine(ip TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit(
  id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, event TEXT NOT NULL,
  node_id TEXT, token_id TEXT, remote TEXT, detail TEXT NOT NULL DEFAULT '{}');
"""

# columns added after the first release: (name, type) added to an older database on open
ADDED_COLUMNS = (
    ("replaces", "TEXT"),
    ("pending_pubkey", "TEXT"),
    ("pending_token_id", "TEXT"),
    ("pending_at", "REAL"),
)


class Pool:
    """Host addresses of the overlay, minus network, broadcast, hub and reserved ones."""

    def __init__(
        self,
        network: ipaddress.IPv4Network,
        hub_ip: ipaddress.IPv4Address,
        reserved: Iterable[ipaddress.IPv4Address] = (),
    ) -> None:
        self.network = network
        self.first = int(network.network_address) + 1
        self.last = int(network.broadcast_address) - 1
        self.excluded = {int(hub_ip), *(int(r) for r in reserved)}

    def pick(self, taken: set[int], start: int | None = None) -> int:
        """Lowest free address at or above ``start``; raises PoolExhausted."""
        i = max(start or self.first, self.first)
        while i <= self.last:
            if i not in taken and i not in self.excluded:
                return i
            i += 1
        raise PoolExhausted(f"address pool {self.network} is exhausted")

    def usable(self, ip: int) -> bool:
        return self.first <= ip <= self.last and ip not in self.excluded


class Store(EnrollMixin):
    def __init__(
        self,
        path: Path,
        pool: Pool,
        quarantine_seconds: int = 86400,
        clock=time.time,
        secret_key: bytes = b"",
        replay_grace_seconds: float = 120,
    ):
        self.path = Path(path)
        self.secret_key = secret_key  # the hub's: node secrets are checked with it
        self.replay_grace_seconds = replay_grace_seconds
        self.pool = pool
        self.quarantine_seconds = quarantine_seconds
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self.conn()
        conn.executescript(SCHEMA)
        have = {r[1] for r in conn.execute("PRAGMA table_info(nodes)")}
        for name, kind in ADDED_COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE nodes ADD COLUMN {name} {kind}")

    # -- connections ----------------------------------------------------------------------
    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            new = not self.path.exists()
            c = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            if new:
                self.path.chmod(0o600)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA foreign_keys=ON")
            c.execute("PRAGMA busy_timeout=30000")
            self._local.conn = c
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def _tx(self) -> _Tx:
        return _Tx(self.conn())

    def _audit(
        self,
        c: sqlite3.Connection,
        event: str,
        node_id=None,
        token_id=None,
        remote=None,
        **detail: Any,
    ) -> None:
        now = self.clock()
        row = (now, event, node_id, token_id, remote, json.dumps(detail, sort_keys=True))
        buf = getattr(self._local, "audit_buf", None)
        if buf is not None:  # inside enroll_many: written with one executemany before COMMIT
            buf.append((row, detail))
            return
        c.execute(AUDIT_INSERT, row)
        self._log_audit(row, detail)

    @staticmethod
    def _log_audit(row: tuple[Any, ...], detail: dict[str, Any]) -> None:
        now, event, node_id, token_id, remote, _ = row
        audit_log.info(
            "%s",
            json.dumps(
                {
                    "ts": round(now, 3),
                    "event": event,
                    "node_id": node_id,
                    "token_id": token_id,
                    "remote": remote,
                    **detail,
                },
                sort_keys=True,
            ),
        )

    # -- tokens ---------------------------------------------------------------------------
    def create_token(
        self, site: str, uses: int, ttl: int, approve: bool, description: str = ""
    ) -> tuple[str, str]:
        if uses < 1:
            raise UsageError("--uses must be at least 1")
        if not site:
            raise UsageError("--site is required")
        token, tid, h = tok.new_token()
        now = self.clock()
        with self._tx() as c:
            c.execute(
                "INSERT INTO tokens(id, hash, site, max_uses, approve, created_at, expires_at,"
                " description) VALUES (?,?,?,?,?,?,?,?)",
                (tid, h, site, uses, int(approve), now, now + ttl, description),
            )
            self._audit(
                c, "token.create", token_id=tid, site=site, uses=uses, ttl=ttl, approve=approve
            )
        return token, tid

    def list_tokens(self) -> list[dict[str, Any]]:
        rows = (
            self.conn()
            .execute(
                "SELECT id, site, max_uses, used, approve, created_at, expires_at, revoked_at,"
                " description FROM tokens ORDER BY created_at"
            )
            .fetchall()
        )
        return [dict(r) for r in rows]

    def revoke_token(self, tid: str) -> None:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE tokens SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
                (self.clock(), tid),
            )
            exists = c.execute("SELECT 1 FROM tokens WHERE id=?", (tid,)).fetchone()
            if cur.rowcount == 0 and exists is None:
                raise UsageError(f"no token with id {tid!r}", hint="see `builder hub token list`")
            self._audit(c, "token.revoke", token_id=tid)

    # -- nodes ----------------------------------------------------------------------------
    def list_nodes(self) -> list[dict[str, Any]]:
        rows = (
            self.conn()
            .execute(
                "SELECT node_id, site, hostname, ip, state, pubkey, fingerprint, image_version,"
                " token_id, created_at, updated_at, joined_at, replaces,"
                " pending_pubkey IS NOT NULL AS rekey_pending FROM nodes ORDER BY created_at"
            )
            .fetchall()
        )
        return [dict(r) for r in rows]

    def node(self, node_id: str) -> dict[str, Any] | None:
        r = self.conn().execute("SELECT * FROM nodes WHERE node_id=?", (node_id,)).fetchone()
        return dict(r) if r else None

    def node_by_ip(self, ip: str) -> dict[str, Any] | None:
        r = self.conn().execute("SELECT * FROM nodes WHERE ip=?", (ip,)).fetchone()
        return dict(r) if r else None

    def active_peers(self) -> list[tuple[str, str]]:
        rows = (
            self.conn()
            .execute(
                "SELECT pubkey, ip FROM nodes WHERE state IN ('active','joined') AND ip IS NOT NULL"
                " ORDER BY ip"
            )
            .fetchall()
        )
        return [(r["pubkey"], r["ip"]) for r in rows]

    def _taken(self, c: sqlite3.Connection) -> set[int]:
        """Every address in use or quarantined, as integers: read once per batch, so it is
        a scan of the table; inet_pton (strict dotted quad, as ipaddress) is ten times
        quicker than ipaddress.IPv4Address (issue 17)."""
        now = self.clock()
        pton, af = socket.inet_pton, socket.AF_INET
        taken = {
            int.from_bytes(pton(af, r[0]), "big")
            for r in c.execute("SELECT ip FROM nodes WHERE ip IS NOT NULL")
        }
        taken |= {
            int.from_bytes(pton(af, r[0]), "big")
            for r in c.execute("SELECT ip FROM quarantine WHERE until > ?", (now,))
        }
        return taken

    def _allocate(self, c: sqlite3.Connection, ctx: dict[str, Any]) -> str:
        if "taken" not in ctx:
            ctx["taken"] = self._taken(c)
            ctx["cursor"] = self.pool.first
        ip = self.pool.pick(ctx["taken"], ctx["cursor"])
        ctx["taken"].add(ip)
        ctx["cursor"] = ip + 1
        addr = str(ipaddress.IPv4Address(ip))
        c.execute("DELETE FROM quarantine WHERE ip=?", (addr,))
        return addr

    def _release(self, c: sqlite3.Connection, ip: str | None) -> None:
        if ip:
            c.execute(
                "INSERT OR REPLACE INTO quarantine(ip, until) VALUES (?, ?)",
                (ip, self.clock() + self.quarantine_seconds),
            )

    def token_usable(self, tid: str) -> bool:
        """A known token that can still be used (read-only; the failed-auth budget asks)."""
        r = (
            self.conn()
            .execute(
                "SELECT 1 FROM tokens WHERE id=? AND revoked_at IS NULL AND expires_at > ?"
                " AND used < max_uses",
                (tid, self.clock()),
            )
            .fetchone()
        )
        return r is not None

    def approve(self, node_id: str) -> dict[str, Any]:
        """An operator's yes: a pending node gets an address (the one of the node its
        hardware replaces, when it claimed one), an active node with a pending re-key
        gets its new key. The node picks the answer up at its next poll."""
        with self._tx() as c:
            n = c.execute("SELECT * FROM nodes WHERE node_id=?", (node_id,)).fetchone()
            if n is None:
                raise UsageError(f"no node {node_id!r}", hint="see `builder hub nodes`")
            now = self.clock()
            if n["state"] in ACTIVE and n["pending_pubkey"]:
                if c.execute(
                    "SELECT 1 FROM nodes WHERE pubkey=?", (n["pending_pubkey"],)
                ).fetchone():
                    raise UsageError(f"the new key of {node_id} now belongs to another node")
                c.execute(
                    "UPDATE nodes SET pubkey=pending_pubkey, token_id=pending_token_id,"
                    " generation=generation+1, bootstrap_token_id=NULL, pending_pubkey=NULL,"
                    " pending_token_id=NULL, pending_at=NULL, updated_at=?,"
                    " state=CASE WHEN state='joined' THEN 'active' ELSE state END"
                    " WHERE node_id=?",
                    (now, node_id),
                )
                self._audit(
                    c, "node.approve_rekey", node_id=node_id, ip=n["ip"], old_pubkey=n["pubkey"]
                )
                return dict(c.execute("SELECT * FROM nodes WHERE node_id=?", (node_id,)).fetchone())
            if n["state"] != "pending":
                raise UsageError(f"node {node_id} is {n['state']}, not pending")
            old = None
            if n["replaces"]:
                old = c.execute(
                    "SELECT * FROM nodes WHERE node_id=? AND site=? AND state IN"
                    " ('active','joined') AND ip IS NOT NULL",
                    (n["replaces"], n["site"]),
                ).fetchone()
            if old is not None:  # reinstalled hardware: the old identity ends, its address moves
                ip = old["ip"]
                c.execute(
                    "UPDATE nodes SET state='revoked', ip=NULL, generation=generation+1,"
                    " updated_at=? WHERE node_id=?",
                    (now, old["node_id"]),
                )
                self._audit(c, "node.replaced", node_id=old["node_id"], by=node_id, ip=ip)
            else:
                ip = self._allocate(c, {})
            c.execute(
                "UPDATE nodes SET state='active', ip=?, updated_at=? WHERE node_id=?",
                (ip, now, node_id),
            )
            self._audit(c, "node.approve", node_id=node_id, ip=ip)
        return self.node(node_id) or {}

    def revoke_node(self, node_id: str) -> dict[str, Any]:
        """Peer to be removed, secret invalid (generation + 1), address quarantined."""
        with self._tx() as c:
            n = c.execute("SELECT * FROM nodes WHERE node_id=?", (node_id,)).fetchone()
            if n is None:
                raise UsageError(f"no node {node_id!r}", hint="see `builder hub nodes`")
            self._release(c, n["ip"])
            c.execute(
                "UPDATE nodes SET state='revoked', ip=NULL, generation=generation+1,"
                " updated_at=? WHERE node_id=?",
                (self.clock(), node_id),
            )
            self._audit(c, "node.revoke", node_id=node_id, ip=n["ip"])
            return dict(n)

    def set_bootstrap_token(
        self, node_id: str, token_id: str | None, remote: str | None = None
    ) -> str | None:
        """Remember the node's current bootstrap token; return the previous one."""
        with self._tx() as c:
            r = c.execute(
                "SELECT bootstrap_token_id FROM nodes WHERE node_id=?", (node_id,)
            ).fetchone()
            c.execute("UPDATE nodes SET bootstrap_token_id=? WHERE node_id=?", (token_id, node_id))
            self._audit(c, "node.join_material", node_id=node_id, remote=remote)
            return r[0] if r else None

    def complete(self, node_id: str, remote: str | None = None) -> str | None:
        with self._tx() as c:
            r = c.execute(
                "SELECT bootstrap_token_id FROM nodes WHERE node_id=?", (node_id,)
            ).fetchone()
            c.execute(
                "UPDATE nodes SET state='joined', joined_at=?, bootstrap_token_id=NULL,"
                " updated_at=? WHERE node_id=? AND state IN ('active','joined')",
                (self.clock(), self.clock(), node_id),
            )
            self._audit(c, "node.complete", node_id=node_id, remote=remote)
            return r[0] if r else None

    def ping(self) -> None:
        """Raises when the store cannot be read (``/healthz``)."""
        self.conn().execute("SELECT 1").fetchone()

    def node_states(self) -> dict[str, int]:
        rows = self.conn().execute("SELECT state, count(*) FROM nodes GROUP BY state")
        return {r[0]: r[1] for r in rows}

    def audit_events(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = (
            self.conn().execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        )
        return [dict(r) for r in rows]


class _Tx:
    def __init__(self, c: sqlite3.Connection) -> None:
        self.c = c

    def __enter__(self) -> sqlite3.Connection:
        self.c.execute("BEGIN IMMEDIATE")
        return self.c

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.c.execute("COMMIT")
        else:
            self.c.execute("ROLLBACK")
