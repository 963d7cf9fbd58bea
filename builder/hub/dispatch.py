"""The server's link to the single writer: a job queue, one batching thread, supervision.

Enrollments are put on a queue; ONE thread takes every job waiting, hands the batch to the
writer (its own process by default, fed over a pipe; or an in-process ``WriterCore``) and
resolves each job's future with its outcome. The writer runs the batch in one SQLite
transaction and one ``wg set``, so a 200 means "in the database and on the interface".

The writer is watched: when its process dies, ``alive()`` turns false at once (``/healthz``
answers 503), queued and new enrollments get 503 with ``Retry-After``, and a new writer is
started (its start-up reconciles the database into the interface). When that fails
``restart_attempts`` times in a row, ``on_fatal`` is called: the service exits non-zero and
systemd starts it again.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from builder.errors import BuilderError

from .config import HubConfig
from .metrics import Metrics
from .store import EnrollRequest, Outcome
from .writer import WriterCore, writer_main

log = logging.getLogger("nodeforge.hub")

RESTARTING = "hub writer restarting"


@dataclass
class Job:
    req: EnrollRequest
    future: Future[Outcome]


def _resolve(fut: Future[Outcome], outcome: Outcome) -> None:
    """Answer a job unless its request gave up waiting (its future is then cancelled)."""
    with contextlib.suppress(InvalidStateError):
        fut.set_result(outcome)


class WriterLink:
    restart_attempts = 5
    start_timeout = 120.0

    def __init__(
        self, cfg: HubConfig, metrics: Metrics, on_fatal: Callable[[], None] | None = None
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hub-writer-link", daemon=True)
        self.core: WriterCore | None = None
        self.proc: Any = None
        self.pipe: Any = None
        self.up = False

    # -- life -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer: it creates the interface if missing and reconciles the database
        into it before we serve. Raises BuilderError when that fails."""
        if self.cfg.limits.writer_process:
            self._spawn()
        else:
            self.core = WriterCore(self.cfg)
            self.core.start()
        self.up = True
        self.thread.start()

    def _spawn(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=writer_main,
            args=(str(self.cfg.path), child),
            name="nodeforge-hub-writer",
            daemon=True,
        )
        proc.start()
        child.close()
        try:
            if not parent.poll(self.start_timeout):
                raise BuilderError(f"hub writer did not start within {self.start_timeout:g} s")
            try:
                kind, msg = parent.recv()
            except EOFError as exc:
                raise BuilderError("hub writer exited during start-up (see its log)") from exc
            if kind != "ready":
                raise BuilderError(f"hub writer: {msg}")
        except BaseException:
            parent.close()
            if proc.is_alive():
                proc.kill()
            proc.join(5)
            raise
        self.proc, self.pipe = proc, parent

    def stop(self) -> None:
        self.stopping.set()
        self.jobs.put(None)
        if self.pipe is not None:
            with contextlib.suppress(OSError):
                self.pipe.close()
        if self.proc is not None:
            self.proc.join(10)

    def alive(self) -> bool:
        if self.core is not None:
            return self.up and self.thread.is_alive()
        return self.up and self.proc is not None and self.proc.is_alive()

    def pid(self) -> int:
        return int(self.proc.pid) if self.proc is not None else os.getpid()

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, req: EnrollRequest) -> Future[Outcome]:
        fut: Future[Outcome] = Future()
        if not self.alive():
            fut.set_result(Outcome(503, RESTARTING, retry_after=5))
        else:
            self.jobs.put(Job(req, fut))
        return fut

    def _run(self) -> None:
        batch_max = self.cfg.limits.batch_max
        while not self.stopping.is_set():
            if self.core is None and not self.proc.is_alive():
                self._writer_died(f"exit code {self.proc.exitcode}")
                continue
            idle = min(0.25, self.core.idle_seconds()) if self.core else 0.25
            try:
                job = self.jobs.get(timeout=idle)
            except queue.Empty:
                job = None
            if job is None:
                if self.core:
                    self.core.maybe_reconcile()
                continue
            batch = [job]
            while len(batch) < batch_max:
                try:
                    j = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if j is not None:
                    batch.append(j)
            try:
                self._process(batch)
            except Exception:  # never lose the link over one batch
                log.exception("enrollment batch of %d failed", len(batch))
                self._answer(batch, Outcome(503, "hub error", retry_after=5))

    def _process(self, batch: list[Job]) -> None:
        reqs = [j.req for j in batch]
        if self.core:
            res = self.core.process(reqs)
        else:
            try:
                self.pipe.send(reqs)
                res = self.pipe.recv()
            except (EOFError, OSError) as exc:
                self._answer(batch, Outcome(503, RESTARTING, retry_after=5))
                self._writer_died(str(exc) or type(exc).__name__)
                return
        with self.metrics.lock:
            self.metrics.batches += 1
            self.metrics.batch_items += len(batch)
            self.metrics.db_seconds += res.db_seconds
            self.metrics.wg_seconds += res.wg_seconds
            self.metrics.wg_errors += res.wg_errors
            self.metrics.store_conflicts += res.store_conflicts
            self.metrics.store_giveups += res.store_giveups
        for j, o in zip(batch, res.outcomes, strict=True):
            _resolve(j.future, o)

    @staticmethod
    def _answer(batch: list[Job], outcome: Outcome) -> None:
        for j in batch:
            _resolve(j.future, outcome)

    # -- supervision ------------------------------------------------------------------------
    def _writer_died(self, why: str) -> None:
        """Answer what is queued with 503, then start a new writer (or give up)."""
        self.up = False
        log.error("hub writer process is gone (%s): restarting it", why)
        with contextlib.suppress(OSError):
            self.pipe.close()
        self.proc.join(1)
        pending: list[Job] = []
        while True:
            try:
                j = self.jobs.get_nowait()
            except queue.Empty:
                break
            if j is not None:
                pending.append(j)
        self._answer(pending, Outcome(503, RESTARTING, retry_after=5))
        delay = 0.5
        for attempt in range(1, self.restart_attempts + 1):
            if self.stopping.is_set():
                return
            try:
                self._spawn()
            except BuilderError as exc:
                log.error("restarting the hub writer (attempt %d): %s", attempt, exc.message)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.up = True
            self.metrics.add("writer_restarts")
            log.warning("hub writer restarted (pid %d)", self.proc.pid)
            return
        log.critical("cannot restart the hub writer: exiting so the service manager restarts us")
        self.stopping.set()
        if self.on_fatal is not None:
            self.on_fatal()
        else:  # pragma: no cover - serve() always passes on_fatal
            os._exit(70)
