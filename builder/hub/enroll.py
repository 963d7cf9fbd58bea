"""Enrollment rules of the store: new nodes, replays, re-enrollment, takeover refusal.

Part of ``store.Store`` (a mixin: the connection, audit and address helpers live there).
``enroll_many`` handles a batch in ONE transaction (group commit), each request in its own
SAVEPOINT so one bad request cannot spoil the others; token use and address allocation
for a request happen in that same transaction.

Identity rules: a token only ever creates a node or replays that node's own enrollment;
re-enrolling an identity that is active (same node_id, new key) needs that node's secret
(``node_secret``) or an operator's ``builder hub approve``; a hardware fingerprint is a
claim, never proof, so a new node claiming an active node's hardware waits for approval
(which then moves the address); a token made with ``--approve`` always waits for approval.
The node secret is handed out again on a replay only while the enrollment is fresh
(``replay_grace_seconds``, secret not yet used) or to a request that presents it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from builder.errors import BuilderError

from . import tokens as tok

log = logging.getLogger("nodeforge.hub")

ACTIVE = ("active", "joined")
AUDIT_INSERT = (
    "INSERT INTO audit(ts, event, node_id, token_id, remote, detail) VALUES (?,?,?,?,?,?)"
)


class PoolExhausted(BuilderError):
    pass


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
    node_secret: str = ""  # the node's own secret: proof for re-enrolling an active identity


@dataclass
class Outcome:
    status: int
    error: str = ""
    node: dict[str, Any] | None = None
    retry_after: int | None = None
    add_peer: tuple[str, str] | None = None  # (pubkey, ip) to apply after commit
    remove_peers: list[str] = field(default_factory=list)
    replay: bool = False


class EnrollMixin:
    if TYPE_CHECKING:  # provided by store.Store
        clock: Callable[[], float]
        secret_key: bytes
        replay_grace_seconds: float
        _local: threading.local

        def _tx(self) -> Any: ...
        def _audit(self, c: sqlite3.Connection, event: str, *a: Any, **kw: Any) -> None: ...
        def _log_audit(self, row: tuple[Any, ...], detail: dict[str, Any]) -> None: ...
        def _allocate(self, c: sqlite3.Connection, ctx: dict[str, Any]) -> str: ...

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

    def secret_ok(self, n: dict[str, Any] | sqlite3.Row, given: str) -> bool:
        return bool(given) and tok.check_node_secret(
            self.secret_key, n["node_id"], n["pubkey"], n["generation"], given
        )

    def _enroll_one(self, c: sqlite3.Connection, r: EnrollRequest, ctx: dict[str, Any]) -> Outcome:
        """One enrollment. Rules: a token only ever creates a node or replays its own
        enrollment; taking over an identity that is active (same node_id, new key) needs
        that node's secret or an operator's approval; a hardware fingerprint is a claim,
        so a new node claiming an active node's hardware waits for approval; a token
        made with ``--approve`` always waits for approval."""
        now = self.clock()
        if not r.token:
            return self._rekey_with_secret(c, r, now)
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
            return self._replay(c, dict(by_key), r, tid, now)
        old = c.execute("SELECT * FROM nodes WHERE node_id=?", (r.node_id,)).fetchone()
        proof = False
        if old is not None:
            if old["state"] == "revoked":
                return deny(403, "node revoked")
            if old["site"] != r.site:
                return deny(409, "node id registered for another site")
            if old["state"] == "pending":
                return deny(409, "this node id is waiting for approval with another key")
            if old["pending_pubkey"] == r.wg_pubkey:  # replay of a re-key waiting for approval
                if old["pending_token_id"] != tid:
                    return deny(403, "this node enrolled with a different token")
                return Outcome(202, "re-enrollment waits for approval", retry_after=30, replay=True)
            proof = self.secret_ok(old, r.node_secret)
            if r.node_secret and not proof:
                return deny(401, "bad node secret")
            if proof and not row["approve"]:
                self._audit(c, "enroll.rekey_proven", r.node_id, tid, r.remote)
                return self._rekey(c, dict(old), r, tid, now)
        claim = None
        if old is None and r.fingerprint:
            claim = c.execute(
                "SELECT node_id FROM nodes WHERE fingerprint=? AND site=? AND state IN"
                " ('active','joined') ORDER BY updated_at DESC LIMIT 1",
                (r.fingerprint, r.site),
            ).fetchone()
        # a new node, a claimed replacement or an unproven re-key: each uses the token
        cur = c.execute(
            "UPDATE tokens SET used = used + 1 WHERE id=? AND used < max_uses AND expires_at > ?"
            " AND revoked_at IS NULL",
            (tid, now),
        )
        if cur.rowcount != 1:
            why = "token expired" if row["expires_at"] <= now else "token used up"
            return deny(403, why)
        if old is not None:  # same identity, new key, no proof: the operator decides
            c.execute(
                "UPDATE nodes SET pending_pubkey=?, pending_token_id=?, pending_at=?"
                " WHERE node_id=?",
                (r.wg_pubkey, tid, now, r.node_id),
            )
            self._audit(c, "enroll.rekey_pending", r.node_id, tid, r.remote, hostname=r.hostname)
            return Outcome(
                202,
                "node is active: re-enrollment needs its node secret or `builder hub approve`",
                retry_after=30,
            )
        state = "pending" if row["approve"] or claim else "active"
        ip = self._allocate(c, ctx) if state == "active" else None
        c.execute(
            "INSERT INTO nodes(node_id, site, pubkey, ip, state, hostname, fingerprint,"
            " image_version, token_id, remote, created_at, updated_at, replaces)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                claim["node_id"] if claim else None,
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
            replaces=claim["node_id"] if claim else None,
        )
        n = dict(c.execute("SELECT * FROM nodes WHERE node_id=?", (r.node_id,)).fetchone())
        if ip is None:
            why = "pending approval"
            if claim:
                why = f"hardware of active node {claim['node_id']}: pending approval"
            return Outcome(202, why, node=n, retry_after=30)
        return Outcome(200, node=n, add_peer=(r.wg_pubkey, ip))

    def _replay(
        self, c: sqlite3.Connection, n: dict[str, Any], r: EnrollRequest, tid: str, now: float
    ) -> Outcome:
        """The same node (id + key + token) asks again, e.g. after a lost answer. The node
        secret is handed out again only to a request proving it already has it, or while
        the enrollment is fresh: within ``replay_grace_seconds`` and before the secret was
        first used (join material fetched)."""
        if n["token_id"] != tid:
            self._audit(
                c, "enroll.denied", r.node_id, tid, r.remote, reason="replay with another token"
            )
            return Outcome(403, "this node enrolled with a different token")
        if n["state"] == "revoked":
            self._audit(c, "enroll.denied", r.node_id, tid, r.remote, reason="node revoked")
            return Outcome(403, "node revoked")
        if n["state"] == "pending":
            self._audit(c, "enroll.replay", r.node_id, tid, r.remote, state="pending")
            return Outcome(202, "pending approval", node=n, retry_after=30, replay=True)
        fresh = (
            n["state"] == "active"
            and n["bootstrap_token_id"] is None
            and now - n["updated_at"] <= self.replay_grace_seconds
        )
        if not fresh and not self.secret_ok(n, r.node_secret):
            self._audit(c, "enroll.denied", r.node_id, tid, r.remote, reason="stale replay")
            return Outcome(
                409, "already enrolled: the token is used; the node secret is not handed out again"
            )
        self._audit(c, "enroll.replay", r.node_id, tid, r.remote, ip=n["ip"], state=n["state"])
        return Outcome(200, node=n, add_peer=(n["pubkey"], n["ip"]), replay=True)

    def _rekey_with_secret(self, c: sqlite3.Connection, r: EnrollRequest, now: float) -> Outcome:
        """Re-enrollment with the node secret as the only credential (no token)."""
        n = c.execute("SELECT * FROM nodes WHERE node_id=?", (r.node_id,)).fetchone()
        if n is None or n["state"] not in ACTIVE or not self.secret_ok(n, r.node_secret):
            self._audit(c, "enroll.denied", r.node_id, None, r.remote, reason="bad node secret")
            return Outcome(401, "bad node secret")
        if n["site"] != r.site:
            return Outcome(409, "node id registered for another site")
        if n["pubkey"] == r.wg_pubkey:
            return Outcome(200, node=dict(n), add_peer=(n["pubkey"], n["ip"]), replay=True)
        other = c.execute("SELECT 1 FROM nodes WHERE pubkey=?", (r.wg_pubkey,)).fetchone()
        if other:
            return Outcome(409, "this WireGuard key belongs to another node")
        return self._rekey(c, dict(n), r, n["token_id"], now)

    def _rekey(
        self, c: sqlite3.Connection, old: dict[str, Any], r: EnrollRequest, tid: str, now: float
    ) -> Outcome:
        """A proven re-enrollment: same node, new key, same address, old secret void."""
        ip = old["ip"] or self._allocate(c, {})
        c.execute(
            "UPDATE nodes SET pubkey=?, ip=?, generation=generation+1, hostname=?,"
            " fingerprint=?, image_version=?, token_id=?, remote=?, updated_at=?,"
            " state=CASE WHEN state='joined' THEN 'active' ELSE state END,"
            " bootstrap_token_id=NULL, pending_pubkey=NULL, pending_token_id=NULL,"
            " pending_at=NULL WHERE node_id=?",
            (
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
        self._audit(c, "enroll.reenroll", r.node_id, tid, r.remote, ip=ip, old_pubkey=old["pubkey"])
        n = dict(c.execute("SELECT * FROM nodes WHERE node_id=?", (r.node_id,)).fetchone())
        return Outcome(200, node=n, add_peer=(r.wg_pubkey, ip), remove_peers=[old["pubkey"]])
