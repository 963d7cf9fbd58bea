"""The hub's state in etcd: several hubs, one store.

Layout under ``prefix`` (``hub.json`` ``store.prefix``)::

    PREFIX/state/token/<id>        JSON row of the token (hash only, never the secret)
    PREFIX/state/node/<node_id>    JSON row of the node
    PREFIX/state/quarantine/<ip>   JSON row: an address that rests before it is reused
    PREFIX/state/rev               written by every state change: the compare-and-swap key
    PREFIX/audit/<ns>-<hub>-<n>    JSON list of the audit rows of one transaction
    PREFIX/hubs/<name>             a hub: public key, endpoint, overlay address
    PREFIX/routes/<node_id>        the hub a node last reported routing through (api.route);
                                   deleted in the transaction that revokes the node

Every change is optimistic and serializable: read the whole ``state/`` range at one revision
(one linearizable range call), run the SAME rules the SQLite store runs (``store.Store`` and
its ``enroll.EnrollMixin``) on that snapshot in an in-memory SQLite database, then commit
the difference as ONE etcd transaction whose compare is "``state/rev`` still has the
mod_revision I read". If another hub committed in between, the compare fails, nothing is
written, and the change runs again on a fresh snapshot. So two hubs can never hand out the
same address or the same token use, and no lock is held across a network call.

Enrollment batches are committed in chunks (``CHUNK``) to stay under etcd's default
``--max-txn-ops`` (128). A 200 is given only after its chunk's transaction succeeded.
"""

from __future__ import annotations

import json
import logging
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from builder.errors import BuilderError

from ..config import StoreConfig
from ..store import SCHEMA, EnrollRequest, Outcome, Pool, Store
from .etcd_client import EtcdClient, StoreUnavailable, b64, delete, prefix_end, put

log = logging.getLogger("nodeforge.hub")
T = TypeVar("T")

TABLES = {
    "token": ("tokens", "id"),
    "node": ("nodes", "node_id"),
    "quarantine": ("quarantine", "ip"),
}
CHUNK = 30  # enrollments per transaction: <= 4 operations each, + marker + audit <= 128
LIVE = ("active", "joined")  # an enrolled node (the api's tunnel check accepts the same)
ATTEMPTS = 50  # compare failures in a row before a change gives up (503, the node retries)
COLUMN = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # a column a newer hub added (see _add_columns)


class _Snapshot(Store):
    """A ``Store`` on an in-memory SQLite database holding one revision of the etcd state."""

    def __init__(self, parent: EtcdStore) -> None:  # noqa: D107 - no file, no schema upgrade
        self.path = Path(":memory:")
        self.secret_key = parent.secret_key
        self.replay_grace_seconds = parent.replay_grace_seconds
        self.pool = parent.pool
        self.quarantine_seconds = parent.quarantine_seconds
        self.clock = parent.clock
        self._local = threading.local()
        c = sqlite3.connect(":memory:", isolation_level=None)
        c.row_factory = sqlite3.Row
        c.executescript(SCHEMA)
        c.execute("CREATE TABLE dirty(kind TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY(kind, id))")
        for kind, (table, pk) in TABLES.items():
            for ev, ref in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
                c.execute(
                    f"CREATE TRIGGER {table}_{ev.lower()} AFTER {ev} ON {table} BEGIN"
                    f" INSERT OR IGNORE INTO dirty VALUES ('{kind}', {ref}.{pk}); END"
                )
                if ev == "UPDATE":  # a changed primary key leaves the old one behind
                    c.execute(
                        f"CREATE TRIGGER {table}_update_old AFTER UPDATE ON {table} BEGIN"
                        f" INSERT OR IGNORE INTO dirty VALUES ('{kind}', OLD.{pk}); END"
                    )
        self._local.conn = c
        self.logged: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.rev = 0  # the etcd revision this snapshot reflects
        self.marker_mod = 0  # mod_revision of the marker key at that revision
        self.columns = {
            table: {r[1] for r in c.execute(f"PRAGMA table_info({table})")}
            for table, _ in TABLES.values()
        }

    def _tx(self) -> Any:  # inside the snapshot's own transaction (see EtcdStore._mutate)
        return _Savepoint(self.conn())

    def apply(self, name: str, value: str) -> None:
        """One key of ``state/`` as etcd has it now (``""``: deleted)."""
        kind, _, ident = name.partition("/")
        if kind not in TABLES:
            return
        table, pk = TABLES[kind]
        c = self.conn()
        c.execute(f"DELETE FROM {table} WHERE {pk}=?", (ident,))  # noqa: S608
        if value:
            d = json.loads(value)
            self._add_columns(table, d)
            cols, marks = ",".join(d), ",".join("?" * len(d))
            c.execute(f"INSERT INTO {table}({cols}) VALUES ({marks})", list(d.values()))

    def _add_columns(self, table: str, row: dict[str, Any]) -> None:
        """Hubs are upgraded one at a time: a newer hub's row may carry a column this hub's
        schema lacks (as ``store.ADDED_COLUMNS`` came after the first release). It is added
        to this snapshot's table, untyped, so the row loads and a change this hub makes to
        it writes the value back as it was. Only a plain identifier becomes a column."""
        known = self.columns[table]
        for col in row:
            if col in known:
                continue
            if not COLUMN.fullmatch(col):
                raise StoreUnavailable(f"etcd: a {table} row has a bad column name {col[:40]!r}")
            self.conn().execute(f"ALTER TABLE {table} ADD COLUMN {col}")
            known.add(col)

    def begin(self) -> None:
        c = self.conn()
        c.execute("DELETE FROM dirty")
        c.execute("DELETE FROM audit")
        self.logged = []
        c.execute("BEGIN")

    def changes(self) -> dict[str, str]:
        """``kind/id`` -> JSON row (``""``: deleted) of every row changed since ``begin``."""
        c = self.conn()
        out = {}
        for kind, ident in c.execute("SELECT kind, id FROM dirty").fetchall():
            table, pk = TABLES[kind]
            r = c.execute(f"SELECT * FROM {table} WHERE {pk}=?", (ident,)).fetchone()  # noqa: S608
            out[f"{kind}/{ident}"] = json.dumps(dict(r), sort_keys=True) if r else ""
        return out

    def _log_audit(self, row: tuple[Any, ...], detail: dict[str, Any]) -> None:  # type: ignore[override]
        self.logged.append((row, detail))  # logged once the transaction committed

    def load(self, rows: dict[str, str]) -> None:
        for name, value in rows.items():
            self.apply(name, value)
        self.conn().execute("DELETE FROM dirty")

    def audit_rows(self) -> list[list[Any]]:
        c = self.conn()
        q = "SELECT ts, event, node_id, token_id, remote, detail FROM audit ORDER BY id"
        return [list(r) for r in c.execute(q)]


class _Savepoint:
    def __init__(self, c: sqlite3.Connection) -> None:
        self.c = c

    def __enter__(self) -> sqlite3.Connection:
        self.c.execute("SAVEPOINT tx")
        return self.c

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.c.execute("ROLLBACK TO tx")
        self.c.execute("RELEASE tx")


class EtcdStore:
    def __init__(
        self,
        cfg: StoreConfig,
        pool: Pool,
        quarantine_seconds: int = 86400,
        clock: Callable[[], float] = time.time,
        secret_key: bytes = b"",
        replay_grace_seconds: float = 120,
        client: EtcdClient | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name or "hub"
        self.client = client or EtcdClient(cfg.endpoints, cfg.ca, cfg.cert, cfg.key)
        self.pool = pool
        self.quarantine_seconds = quarantine_seconds
        self.clock = clock
        self.secret_key = secret_key
        self.replay_grace_seconds = replay_grace_seconds
        self.state = cfg.prefix + "/state/"
        self.marker = self.state + "rev"
        self.audit_prefix = cfg.prefix + "/audit/"
        self._seq = 0
        self._lock = threading.Lock()  # only for the sequence counter, never across I/O
        self.conflicts = 0  # compare failures so far, each followed by a re-run (/metrics)
        self.giveups = 0  # changes that gave up after ATTEMPTS compare failures (/metrics)
        self._tls = threading.local()  # each thread its own snapshot: no lock across I/O

    # -- snapshot and commit ------------------------------------------------------------------
    def _load(self) -> tuple[_Snapshot, dict[str, str], int]:
        """A fresh snapshot of the whole state (and its rows: ``kind/id`` -> JSON)."""
        rev, kvs = self.client.range(self.state, prefix_end(self.state))
        rows: dict[str, str] = {}
        marker_mod = 0
        for key, value, mod in kvs:
            if key == self.marker:
                marker_mod = mod
            elif value:  # "" is a deleted row (kept so that changes can be read incrementally)
                rows[key[len(self.state) :]] = value
        snap = _Snapshot(self)
        snap.load(rows)
        snap.rev, snap.marker_mod = rev, marker_mod
        return snap, rows, marker_mod

    def _snapshot(self) -> _Snapshot:
        """This thread's snapshot, brought up to date with ONE range call that returns only
        the keys changed since its revision (deletions are written as empty values)."""
        snap: _Snapshot | None = getattr(self._tls, "snap", None)
        if snap is None:
            snap = self._load()[0]
            self._tls.snap = snap
            return snap
        rev, kvs = self.client.range(
            self.state, prefix_end(self.state), min_mod_revision=snap.rev + 1
        )
        c = snap.conn()
        c.execute("BEGIN")
        for key, value, mod in kvs:
            if key == self.marker:
                snap.marker_mod = mod
            else:
                snap.apply(key[len(self.state) :], value)
        c.execute("DELETE FROM dirty")
        c.execute("COMMIT")
        snap.rev = rev
        return snap

    def _audit_key(self) -> str:
        with self._lock:
            self._seq += 1
            seq = self._seq
        return f"{self.audit_prefix}{time.time_ns():020d}-{self.name}-{seq:08d}"

    def _commit(self, snap: _Snapshot) -> bool:
        """Write the snapshot's changes in one transaction, if nobody else changed
        ``state/`` since the snapshot was read. A node that ends revoked (``builder hub
        revoke``, or replaced by an approved reinstall) loses its route report in the same
        transaction: ``builder hub nodes`` would show it still routing through a hub."""
        changes = snap.changes()
        ops = [put(self.state + k, v) for k, v in changes.items()]
        also = [
            delete(self._route(k.partition("/")[2]))
            for k, v in changes.items()
            if k.startswith("node/") and v and json.loads(v).get("state") == "revoked"
        ]  # only revoke and approve revoke a node: enrollment chunks keep their op budget
        audit = snap.audit_rows()
        extra = [put(self._audit_key(), json.dumps(audit))] if audit else []
        if not ops:  # nothing changed (a denial, a replay): only the audit rows
            if extra:
                self.client.txn([], extra)
            return True
        if snap.marker_mod:
            cmp = {"target": "MOD", "result": "EQUAL", "mod_revision": str(snap.marker_mod)}
        else:
            cmp = {"target": "VERSION", "result": "EQUAL", "version": "0"}
        cmp["key"] = b64(self.marker)
        ok, rev = self.client.txn_rev([cmp], [*ops, put(self.marker, self.name), *also, *extra])
        if ok:  # the snapshot now is the state at ``rev``: nobody else wrote in between
            snap.rev = snap.marker_mod = rev
        return ok

    def _mutate(self, fn: Callable[[_Snapshot], T]) -> T:
        for attempt in range(ATTEMPTS):
            snap = self._snapshot()
            snap.begin()
            c = snap.conn()
            try:
                result = fn(snap)
                ok = self._commit(snap)
            except BaseException:
                c.execute("ROLLBACK")
                raise
            if ok:
                c.execute("COMMIT")
                for row, detail in snap.logged:
                    Store._log_audit(row, detail)
                return result
            c.execute("ROLLBACK")
            self.conflicts += 1
            time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
        self.giveups += 1
        raise StoreUnavailable(f"etcd: {ATTEMPTS} conflicting transactions in a row; try again")

    def _read(self, fn: Callable[[_Snapshot], T]) -> T:
        return fn(self._snapshot())

    # -- the HubStore interface ------------------------------------------------------------
    def create_token(
        self, site: str, uses: int, ttl: int, approve: bool, description: str = ""
    ) -> tuple[str, str]:
        return self._mutate(lambda s: s.create_token(site, uses, ttl, approve, description))

    def list_tokens(self) -> list[dict[str, Any]]:
        return self._read(lambda s: s.list_tokens())

    def revoke_token(self, tid: str) -> None:
        self._mutate(lambda s: s.revoke_token(tid))

    def token_usable(self, tid: str) -> bool:
        return self._read(lambda s: s.token_usable(tid))

    def list_nodes(self) -> list[dict[str, Any]]:
        return self._read(lambda s: s.list_nodes())

    def node(self, node_id: str) -> dict[str, Any] | None:
        return self._read(lambda s: s.node(node_id))

    def node_by_ip(self, ip: str) -> dict[str, Any] | None:
        return self._read(lambda s: s.node_by_ip(ip))

    def active_peers(self) -> list[tuple[str, str]]:
        return self._read(lambda s: s.active_peers())

    def approve(self, node_id: str) -> dict[str, Any]:
        return self._mutate(lambda s: s.approve(node_id))

    def revoke_node(self, node_id: str) -> dict[str, Any]:
        return self._mutate(lambda s: s.revoke_node(node_id))

    def set_bootstrap_token(
        self, node_id: str, token_id: str | None, remote: str | None = None
    ) -> str | None:
        return self._mutate(lambda s: s.set_bootstrap_token(node_id, token_id, remote))

    def complete(self, node_id: str, remote: str | None = None) -> str | None:
        return self._mutate(lambda s: s.complete(node_id, remote))

    def enroll_many(self, reqs: Sequence[EnrollRequest]) -> list[Outcome]:
        out: list[Outcome] = []
        for i in range(0, len(reqs), CHUNK):
            chunk = reqs[i : i + CHUNK]
            try:
                out += self._mutate(lambda s, c=chunk: s.enroll_many(c))  # type: ignore[misc]
            except BuilderError as exc:  # this chunk failed alone; nothing of it was written
                log.error("enrollment chunk of %d failed: %s", len(chunk), exc.message)
                out += [Outcome(503, "store unavailable", retry_after=5) for _ in chunk]
        return out

    def enroll(self, req: EnrollRequest) -> Outcome:
        return self.enroll_many([req])[0]

    def audit_events(self, limit: int = 100) -> list[dict[str, Any]]:
        _, kvs = self.client.range(
            self.audit_prefix, prefix_end(self.audit_prefix), limit=limit, descend=True
        )
        events: list[dict[str, Any]] = []
        for _, value, _ in kvs:
            for ts, event, node_id, token_id, remote, detail in reversed(json.loads(value)):
                events.append(
                    {
                        "ts": ts,
                        "event": event,
                        "node_id": node_id,
                        "token_id": token_id,
                        "remote": remote,
                        "detail": detail,
                    }
                )
        for i, e in enumerate(reversed(events[:limit])):
            e["id"] = i + 1
        return events[:limit]

    # -- the hubs sharing this store (nodes get them all as peers) ------------------------
    def register_hub(self, info: dict[str, Any]) -> None:
        self.client.txn([], [put(f"{self.cfg.prefix}/hubs/{self.name}", json.dumps(info))])

    def hubs(self) -> list[dict[str, Any]]:
        p = f"{self.cfg.prefix}/hubs/"
        return [json.loads(v) for _, v, _ in self.client.range(p, prefix_end(p))[1]]

    # -- which hub each node routes through (the node's own report, see api.route) -----
    def _route(self, node_id: str) -> str:
        return f"{self.cfg.prefix}/routes/{node_id}"

    def set_route(self, node_id: str, info: dict[str, Any]) -> bool:
        """Last writer wins, per node, outside ``state/`` (no watch event) -- while the node
        is enrolled (``LIVE``, as the api's tunnel check): the write compares the node's row
        as read here, so a revocation that commits in between (it deletes the report, see
        ``_commit``) is never undone by a report in flight. False: the node is not enrolled
        (any more); nothing written."""
        key = self.state + "node/" + node_id
        _, kvs = self.client.range(key)
        if not kvs or not kvs[0][1] or json.loads(kvs[0][1]).get("state") not in LIVE:
            return False
        cmp = {"target": "MOD", "result": "EQUAL", "mod_revision": str(kvs[0][2]), "key": b64(key)}
        return self.client.txn([cmp], [put(self._route(node_id), json.dumps(info))])

    def routes(self) -> dict[str, dict[str, Any]]:
        p = f"{self.cfg.prefix}/routes/"
        kvs = self.client.range(p, prefix_end(p))[1]
        return {k[len(p) :]: json.loads(v) for k, v, _ in kvs if v}

    def ping(self) -> None:
        self.client.range(self.marker)

    def node_states(self) -> dict[str, int]:
        return self._read(lambda s: s.node_states())

    def close(self) -> None:
        self.client.close()

    # -- watching ---------------------------------------------------------------------------
    def watch(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Call ``on_change`` whenever a node changes in the store (and after every
        (re)connection of the watch, which may have missed changes); until ``stop``."""
        nodes = self.state + "node/"
        while not stop.is_set():
            try:
                for _events in self.client.watch(nodes, prefix_end(nodes), idle_timeout=10):
                    on_change()  # the first message (0 events) says the watch is in place
                    if stop.is_set():
                        return
            except (BuilderError, ValueError) as exc:
                log.warning("store watch: %s", getattr(exc, "message", exc))
                stop.wait(1)
