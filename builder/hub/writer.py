"""The hub's single writer: enrollment batches into SQLite, then peers onto the interface.

``WriterCore`` takes a batch of enrollment requests, runs them in ONE transaction (group
commit), then applies every new peer with ONE ``wg set``; it also reconciles the whole
database into the interface with ``wg syncconf`` (at start and every ``reconcile_seconds``).

By default it runs in its own process (``writer_main``), fed batches over a pipe by the
server: the HTTP threads and the writer then no longer take turns on one GIL (measured in
tests/bench/bench_hub.py). If the server dies, the pipe closes and the writer exits after
finishing (committing, applying) the batch it holds - the same as a crash after commit, which
the next start's reconcile covers.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from builder.errors import BuilderError

from . import routing, stores
from .config import HubConfig
from .config import load as load_config
from .store import EnrollRequest, Outcome
from .stores import HubStore
from .wg import WgInterface

log = logging.getLogger("nodeforge.hub")


@dataclass
class BatchResult:
    outcomes: list[Outcome]
    db_seconds: float = 0.0
    wg_seconds: float = 0.0
    wg_errors: int = 0
    store_conflicts: int = 0  # etcd compare failures (re-runs) during this batch
    store_giveups: int = 0
    notes: list[str] = field(default_factory=list)


def open_store(cfg: HubConfig) -> HubStore:
    """The hub's store with everything the config says about it (backend, pool,
    quarantine, node secrets, replay window)."""
    return stores.open_store(cfg)


def store_counts(store: HubStore) -> tuple[int, int]:
    """(compare failures, give-ups) of an etcd store so far; (0, 0) on SQLite (one writer,
    nothing to compare)."""
    return getattr(store, "conflicts", 0), getattr(store, "giveups", 0)


class WriterCore:
    def __init__(self, cfg: HubConfig) -> None:
        self.cfg = cfg
        self.store = open_store(cfg)
        self.wg = WgInterface(cfg.wg.interface, cfg.wg.private_key_file, cfg.wg.listen_port)
        self.next_reconcile = 0.0
        # several hubs on one store (etcd): the store's watch marks the interface stale
        self.changed = threading.Event()
        self.stop_watch = threading.Event()
        self.watching = False
        self.last_reconcile = 0.0

    def start(self) -> None:
        if not self.cfg.wg.apply:
            return
        watch = getattr(self.store, "watch", None)
        if watch is not None:
            threading.Thread(
                target=watch,
                args=(self.changed.set, self.stop_watch),
                daemon=True,
                name="store-watch",
            ).start()
            self.watching = True
        if self.cfg.wg.create_interface:
            created = self.wg.ensure(
                str(self.cfg.wg.hub_ip), self.cfg.wg.network.prefixlen, self.cfg.wg.mtu
            )
            if created:
                log.info("created interface %s", self.cfg.wg.interface)
        if self.cfg.wg.forward:
            for change in routing.enable_forwarding(self.cfg.wg.interface):
                log.info("routing: %s", change)
        self.reconcile()

    def reconcile(self) -> None:
        peers = self.store.active_peers()
        self.wg.syncconf(peers)
        self.last_reconcile = time.monotonic()
        self.next_reconcile = time.monotonic() + self.cfg.reconcile_seconds
        log.info("reconciled %d peers into %s", len(peers), self.cfg.wg.interface)

    def maybe_reconcile(self) -> None:
        if not self.cfg.wg.apply:
            return
        due = self.cfg.reconcile_seconds > 0 and time.monotonic() >= self.next_reconcile
        if self.changed.is_set() and time.monotonic() - self.last_reconcile >= 0.5:
            self.changed.clear()
            due = True
        if not due:
            return
        try:
            self.reconcile()
        except BuilderError as exc:
            log.error("reconcile failed: %s", exc.message)
            self.next_reconcile = time.monotonic() + 5

    def idle_seconds(self) -> float:
        if self.watching:
            return 0.2
        if not self.cfg.wg.apply or self.cfg.reconcile_seconds <= 0:
            return 1.0
        return max(0.05, self.next_reconcile - time.monotonic())

    def process(self, reqs: list[EnrollRequest]) -> BatchResult:
        t0 = time.monotonic()
        before = store_counts(self.store)
        try:
            outcomes = self.store.enroll_many(reqs)
        except Exception as exc:  # database trouble: every request in the batch fails
            log.error("enrollment batch failed: %s", exc)
            outcomes = [Outcome(503, "database unavailable", retry_after=5) for _ in reqs]
        res = BatchResult(outcomes, db_seconds=time.monotonic() - t0)
        after = store_counts(self.store)
        res.store_conflicts, res.store_giveups = after[0] - before[0], after[1] - before[1]
        adds = [o.add_peer for o in outcomes if o.status == 200 and o.add_peer]
        removes = [k for o in outcomes if o.status == 200 for k in o.remove_peers]
        t1 = time.monotonic()
        if self.cfg.wg.apply and (adds or removes):
            try:
                self.wg.apply(adds, removes)
            except BuilderError as exc:
                log.error("wg set for a batch of %d failed: %s", len(adds), exc.message)
                res.wg_errors = self._apply_one_by_one(outcomes)
        res.wg_seconds = time.monotonic() - t1
        if self.watching:  # peers other hubs enrolled meanwhile (debounced)
            self.maybe_reconcile()
        return res

    def _apply_one_by_one(self, outcomes: list[Outcome]) -> int:
        """A batch ``wg set`` failed: apply peer by peer so one bad peer fails alone.
        A peer that cannot be applied is committed but answered 503; the node's retry is a
        replay and is applied again (and the periodic reconcile covers it as well)."""
        errors = 0
        for o in outcomes:
            if o.status != 200 or not o.add_peer:
                continue
            try:
                self.wg.apply([o.add_peer], o.remove_peers)
            except BuilderError as exc:
                log.error("wg set for %s failed: %s", o.add_peer[0], exc.message)
                errors += 1
                o.status, o.error, o.retry_after = 503, "WireGuard apply failed", 5
        return errors


def writer_main(config_path: str, conn: Any) -> None:
    """Child process: ``("ready", None)`` or ``("error", msg)`` first, then one
    BatchResult per batch received; exits when the pipe closes or on ``None``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        core = WriterCore(load_config(config_path))
        core.start()
    except BuilderError as exc:
        conn.send(("error", exc.message + (f"\nhint: {exc.hint}" if exc.hint else "")))
        return
    conn.send(("ready", None))
    while True:
        try:
            if not conn.poll(core.idle_seconds()):
                core.maybe_reconcile()
                continue
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        res = core.process(msg)
        try:
            conn.send(res)
        except (BrokenPipeError, OSError):
            return
