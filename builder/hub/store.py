"""SQLite (WAL) store: tokens (hashed), nodes, address quarantine, audit. The source of truth.

Every write runs in ``BEGIN IMMEDIATE`` … ``COMMIT``. ``enroll_many`` handles a batch of
enrollments in ONE transaction (one fsync for the batch: group commit), each request in its
own SAVEPOINT so one bad request cannot spoil the others. Token use and address allocation
for a request happen in that same transaction, so a crash leaves either both or neither.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import BuilderError, UsageError

from . import tokens as tok

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
  bootstrap_token_id TEXT);
CREATE INDEX IF NOT EXISTS nodes_fingerprint ON nodes(fingerprint);
CREATE TABLE IF NOT EXISTS quarantine(ip TEXT PRIMARY KEY, until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit(
  id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, event TEXT NOT NULL,
  node_id TEXT, token_id TEXT, remote TEXT, detail TEXT NOT NULL DEFAULT '{}');
"""

ACTIVE = ("active", "joined")
AUDIT_INSERT = (
    "INSERT INTO audit(ts, event, node_id, token_id, remote, detail) VALUES (?,?,?,?,?,?)"
)


class PoolExhausted(BuilderError):
    pass


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


@dataclass
class EnrollRequest:
    token: str
    site: str
    node_id: str
    wg_pubkey: str
    hostname: str = ""
    fingerprint: str = ""
    image_version: str = ""
    remote: str = ""


@dataclass
class Outcome:
    status: int
    error: str = ""
    node: dict[str, Any] | None = None
    retry_after: int | None = None
    add_peer: tuple[str, str] | None = None  # (pubkey, ip) to apply after commit
    remove_peers: list[str] = field(default_factory=list)
    replay: bool = False


class Store:
    def __init__(self, path: Path, pool: Pool, quarantine_seconds: int = 86400, clock=time.time):
        self.path = Path(path)
        self.pool = pool
        self.quarantine_seconds = quarantine_seconds
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self.conn()
        conn.executescript(SCHEMA)

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
                " token_id, created_at, updated_at, joined_at FROM nodes ORDER BY created_at"
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
        now = self.clock()
        taken = {
            int(ipaddress.IPv4Address(r[0]))
            for r in c.execute("SELECT ip FROM nodes WHERE ip IS NOT NULL")
        }
        taken |= {
            int(ipaddress.IPv4Address(r[0]))
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

    def approve(self, node_id: str) -> dict[str, Any]:
        with self._tx() as c:
            n = c.execute("SELECT * FROM nodes WHERE node_id=?", (node_id,)).fetchone()
            if n is None:
                raise UsageError(f"no node {node_id!r}", hint="see `builder hub nodes`")
            if n["state"] != "pending":
                raise UsageError(f"node {node_id} is {n['state']}, not pending")
            ip = self._allocate(c, {})
            c.execute(
                "UPDATE nodes SET state='active', ip=?, updated_at=? WHERE node_id=?",
                (ip, self.clock(), node_id),
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

    def audit_events(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = (
            self.conn().execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        )
        return [dict(r) for r in rows]

    # -- enrollment -----------------------------------------------------------------------
    def enroll_many(self, reqs: Sequence[EnrollRequest]) -> list[Outcome]:
        out: list[Outcome] = []
        ctx: dict[str, Any] = {}
        buf: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self._local.audit_buf = buf
        try:
            with self._tx() as c:
                for i, r in enumerate(reqs):
                    mark = len(buf)
                    c.execute(f"SAVEPOINT e{i}")
                    try:
                        o = self._enroll_one(c, r, ctx)
                    except PoolExhausted as exc:
                        c.execute(f"ROLLBACK TO e{i}")
                        del buf[mark:]
                        o = Outcome(503, str(exc), retry_after=300)
                    except Exception as exc:  # keep the batch alive; this request fails alone
                        c.execute(f"ROLLBACK TO e{i}")
                        del buf[mark:]
                        log.exception("enrollment of %s failed", r.node_id)
                        o = Outcome(500, f"internal error: {type(exc).__name__}")
                        ctx.pop("taken", None)
                    c.execute(f"RELEASE e{i}")
                    out.append(o)
                c.executemany(AUDIT_INSERT, [row for row, _ in buf])
        finally:
            self._local.audit_buf = None
        for row, detail in buf:
            self._log_audit(row, detail)
        return out

    def enroll(self, req: EnrollRequest) -> Outcome:
        return self.enroll_many([req])[0]

    def _enroll_one(self, c: sqlite3.Connection, r: EnrollRequest, ctx: dict[str, Any]) -> Outcome:
        now = self.clock()
        parsed = tok.parse_token(r.token)
        row = None
        if parsed:
            row = c.execute("SELECT * FROM tokens WHERE id=?", (parsed[0],)).fetchone()
        if not parsed or not tok.secret_matches(parsed[1], row["hash"] if row else None):
            self._audit(
                c,
                "enroll.denied",
                r.node_id,
                parsed[0] if parsed else None,
                r.remote,
                reason="unknown token",
            )
            return Outcome(401, "unknown enrollment token")
        assert row is not None  # secret_matches() is False without a row
        tid = row["id"]

        def deny(status: int, why: str) -> Outcome:
            self._audit(c, "enroll.denied", r.node_id, tid, r.remote, reason=why)
            return Outcome(status, why)

        if row["site"] != r.site:
            return deny(403, f"token is for site {row['site']!r}, not {r.site!r}")
        if row["revoked_at"] is not None:
            return deny(403, "token revoked")
        by_key = c.execute("SELECT * FROM nodes WHERE pubkey=?", (r.wg_pubkey,)).fetchone()
        if by_key is not None:
            if by_key["node_id"] != r.node_id:
                return deny(409, "this WireGuard key belongs to another node")
            return self._replay(c, dict(by_key), r, tid)
        old = c.execute("SELECT * FROM nodes WHERE node_id=?", (r.node_id,)).fetchone()
        if old is None and r.fingerprint:
            old = c.execute(
                "SELECT * FROM nodes WHERE fingerprint=? AND site=? AND state != 'revoked'"
                " ORDER BY updated_at DESC LIMIT 1",
                (r.fingerprint, r.site),
            ).fetchone()
        if old is not None and old["state"] == "revoked":
            return deny(403, "node revoked")
        if old is not None and old["site"] != r.site:
            return deny(409, "node id registered for another site")
        # new node or re-enrollment: both use the token, in this transaction
        cur = c.execute(
            "UPDATE tokens SET used = used + 1 WHERE id=? AND used < max_uses AND expires_at > ?"
            " AND revoked_at IS NULL",
            (tid, now),
        )
        if cur.rowcount != 1:
            why = "token expired" if row["expires_at"] <= now else "token used up"
            return deny(403, why)
        if old is not None:
            return self._reenroll(c, dict(old), r, tid, now)
        state = "pending" if row["approve"] else "active"
        ip = self._allocate(c, ctx) if state == "active" else None
        c.execute(
            "INSERT INTO nodes(node_id, site, pubkey, ip, state, hostname, fingerprint,"
            " image_version, token_id, remote, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                r.node_id,
                r.site,
                r.wg_pubkey,
                ip,
                state,
                r.hostname,
                r.fingerprint,
                r.image_version,
                tid,
                r.remote,
                now,
                now,
            ),
        )
        self._audit(
            c,
            "enroll." + ("pending" if ip is None else "ok"),
            r.node_id,
            tid,
            r.remote,
            ip=ip,
            hostname=r.hostname,
        )
        n = dict(c.execute("SELECT * FROM nodes WHERE node_id=?", (r.node_id,)).fetchone())
        if ip is None:
            return Outcome(202, "pending approval", node=n, retry_after=30)
        return Outcome(200, node=n, add_peer=(r.wg_pubkey, ip))

    def _replay(
        self, c: sqlite3.Connection, n: dict[str, Any], r: EnrollRequest, tid: str
    ) -> Outcome:
        if n["token_id"] != tid:
            self._audit(
                c, "enroll.denied", r.node_id, tid, r.remote, reason="replay with another token"
            )
            return Outcome(403, "this node enrolled with a different token")
        if n["state"] == "revoked":
            self._audit(c, "enroll.denied", r.node_id, tid, r.remote, reason="node revoked")
            return Outcome(403, "node revoked")
        self._audit(c, "enroll.replay", r.node_id, tid, r.remote, ip=n["ip"], state=n["state"])
        if n["state"] == "pending":
            return Outcome(202, "pending approval", node=n, retry_after=30, replay=True)
        return Outcome(200, node=n, add_peer=(n["pubkey"], n["ip"]), replay=True)

    def _reenroll(
        self, c: sqlite3.Connection, old: dict[str, Any], r: EnrollRequest, tid: str, now: float
    ) -> Outcome:
        """Reinstalled hardware: same node_id or fingerprint, new key → same address."""
        ip = old["ip"]
        if old["state"] in ACTIVE and not ip:
            ip = self._allocate(c, {})
        c.execute(
            "UPDATE nodes SET node_id=?, pubkey=?, ip=?, generation=generation+1, hostname=?,"
            " fingerprint=?, image_version=?, token_id=?, remote=?, updated_at=?,"
            " state=CASE WHEN state='joined' THEN 'active' ELSE state END,"
            " bootstrap_token_id=NULL WHERE node_id=?",
            (
                r.node_id,
                r.wg_pubkey,
                ip,
                r.hostname,
                r.fingerprint,
                r.image_version,
                tid,
                r.remote,
                now,
                old["node_id"],
            ),
        )
        self._audit(
            c,
            "enroll.reenroll",
            r.node_id,
            tid,
            r.remote,
            ip=ip,
            old_node_id=old["node_id"],
            old_pubkey=old["pubkey"],
        )
        n = dict(c.execute("SELECT * FROM nodes WHERE node_id=?", (r.node_id,)).fetchone())
        if n["state"] == "pending":
            return Outcome(202, "pending approval", node=n, retry_after=30)
        return Outcome(200, node=n, add_peer=(r.wg_pubkey, ip), remove_peers=[old["pubkey"]])


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
