"""How many QEMU guests the boot lane runs at once (tests only): one cap for the process.

Under TCG a guest's vCPU is one busy host thread, so on a machine with 2 cores a third guest
only stretches every boot (4-6 at once pushed boots past their time limits, 2026-11-30).
Every boot of the lane takes its guests from ``GUESTS`` first — the scenarios of the boot
pool and the tests run in the test thread alike, and a ``builder boot-test`` subprocess
one for each guest it runs (tests/support/guestgate.py) — so both cores stay busy and
never more than ``NF_BOOT_GUESTS`` (default: the CPUs this process may use, at least 1)
guests run.

Grants go in arrival order, except that a waiter that fits in the free slots goes before
an earlier one that does not (a single guest fills the second core while a two-node boot
waits for both): the lane's boots are few, so a two-node boot waits at most for the single
ones queued before it is served, and no core idles while anything that fits is waiting.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


def default_capacity() -> int:
    env = os.environ.get("NF_BOOT_GUESTS", "").strip()
    if env:
        return max(1, int(env))
    return max(1, len(os.sched_getaffinity(0)))


class GuestSlots:
    """A counting semaphore with weights: the first waiter in line that fits is served."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()
        self._queue: deque[tuple[object, int]] = deque()

    def _my_turn(self, ticket: tuple[object, int]) -> bool:
        free = self.capacity - self.in_use
        for t in self._queue:  # arrival order: the first that fits goes
            if t[1] <= free:
                return t is ticket
        return False

    def acquire(self, guests: int = 1, *, first: bool = False) -> int:
        """Wait until ``guests`` slots are free and no earlier waiter that fits is left, take
        them and return how many were taken (more than the capacity is clamped to it).
        ``first``: go before every waiter — for a caller whose slots already held sit idle
        until it has these too (a `builder boot-test` whose nodes start together)."""
        n = max(1, min(guests, self.capacity))
        ticket = (object(), n)
        with self._cond:
            if first:
                self._queue.appendleft(ticket)
            else:
                self._queue.append(ticket)
            try:
                while not self._my_turn(ticket):
                    self._cond.wait()
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
            self.in_use += n
            self.peak = max(self.peak, self.in_use)
        return n

    def release(self, n: int) -> None:
        """Give back ``n`` slots taken by ``acquire``."""
        with self._cond:
            self.in_use -= n
            self._cond.notify_all()

    @contextmanager
    def hold(self, guests: int = 1) -> Iterator[None]:
        """``acquire(guests)`` for the block."""
        n = self.acquire(guests)
        try:
            yield
        finally:
            self.release(n)


def guests_of(args: Sequence[str]) -> int:
    """Guests a ``builder boot-test`` command line boots at once: its ``--nodes`` (1)."""
    args = list(args)
    if "--nodes" in args:
        return int(args[args.index("--nodes") + 1])
    return 1


GUESTS = GuestSlots(default_capacity())
