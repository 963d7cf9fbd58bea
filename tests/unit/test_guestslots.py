"""The boot lane's cap on guests at once (tests/support/guestslots.py)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.guestslots import GuestSlots, guests_of


def _run(slots: GuestSlots, n: int, log: list[tuple[str, int]], name: str, hold: float) -> None:
    with slots.hold(n):
        log.append((name, slots.in_use))
        time.sleep(hold)


def test_never_more_than_the_capacity_and_both_slots_used() -> None:
    slots = GuestSlots(2)
    log: list[tuple[str, int]] = []
    jobs = [(2, "a"), (1, "b"), (1, "c"), (2, "d"), (1, "e"), (1, "f")]
    threads = [threading.Thread(target=_run, args=(slots, n, log, name, 0.05))
               for n, name in jobs]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(name for name, _ in log) == ["a", "b", "c", "d", "e", "f"]
    assert slots.peak == 2 and slots.in_use == 0
    assert all(used <= 2 for _, used in log)


def test_a_single_guest_fills_the_free_slot_while_a_pair_waits() -> None:
    slots = GuestSlots(2)
    order: list[str] = []
    first = slots.hold(1)
    first.__enter__()  # one slot busy: a pair cannot start, a single can
    pair = threading.Thread(target=lambda: _run(slots, 2, [], "pair", 0) or order.append("pair"))
    pair.start()
    time.sleep(0.1)
    single = threading.Thread(target=lambda: _run(slots, 1, [], "one", 0) or order.append("one"))
    single.start()
    single.join(timeout=5)
    assert order == ["one"] and pair.is_alive()
    first.__exit__(None, None, None)
    pair.join(timeout=5)
    assert order == ["one", "pair"] and slots.in_use == 0


def test_first_come_first_served_among_those_that_fit() -> None:
    slots = GuestSlots(1)
    order: list[str] = []
    gate = slots.hold(1)
    gate.__enter__()
    threads = []
    for name in ("x", "y", "z"):
        t = threading.Thread(target=lambda n=name: _run(slots, 1, [], n, 0) or order.append(n))
        t.start()
        threads.append(t)
        time.sleep(0.05)
    gate.__exit__(None, None, None)
    for t in threads:
        t.join(timeout=5)
    assert order == ["x", "y", "z"]


def test_first_goes_before_every_earlier_waiter() -> None:
    slots = GuestSlots(1)
    order: list[str] = []
    busy = slots.hold(1)
    busy.__enter__()
    early = threading.Thread(target=lambda: _run(slots, 1, [], "early", 0) or order.append("early"))
    early.start()
    time.sleep(0.1)

    def top_up() -> None:
        n = slots.acquire(1, first=True)
        order.append("top-up")
        slots.release(n)

    late = threading.Thread(target=top_up)
    late.start()
    time.sleep(0.1)
    busy.__exit__(None, None, None)
    for t in (early, late):
        t.join(timeout=5)
    assert order == ["top-up", "early"] and slots.in_use == 0


def test_more_than_the_capacity_is_one_at_a_time_not_a_deadlock() -> None:
    slots = GuestSlots(2)
    with slots.hold(5):
        assert slots.in_use == 2


def test_guests_of_a_boot_test_command_line() -> None:
    assert guests_of(["--image", "d.qcow2", "--nodes", "2", "--no-reboot"]) == 2
    assert guests_of(["--image", "d.qcow2"]) == 1
    with pytest.raises(ValueError):
        GuestSlots(0)
