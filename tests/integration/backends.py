"""The unit lane's single-hub tests, collected again to run on the etcd backend.

The unit modules build their stores and hubs through tests/support/hubstore.py; a module here
takes a unit module's test functions (the same functions, not copies) and its fixtures into
its own namespace, and runs them with the ``on_etcd`` fixture (conftest.py): every store they
build lives in a real etcd. Left out:

- tests marked ``sqlite_only(reason)``: they read the SQLite file itself; where etcd has an
  equivalent, it is a test of its own (e.g. test_token_is_stored_hashed_in_etcd);
- tests that build no store or hub (no ``store``, ``hub``, ``hubdir`` or ``tmp_path``
  argument: the address pool's arithmetic, the config parser): a second run checks nothing new.
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any

import pytest

BUILDS_A_STORE = {"store", "hub", "hubdir", "tmp_path"}


def sqlite_only(fn: Any) -> bool:
    return any(m.name == "sqlite_only" for m in getattr(fn, "pytestmark", []))


def on_etcd(
    base: ModuleType,
    namespace: dict[str, Any],
    fixtures: tuple[str, ...],
    names: tuple[str, ...] = (),
) -> list[str]:
    """Put ``base``'s store-building tests (or the ones ``names`` lists) and the named
    fixtures into ``namespace`` (a test module's globals) and mark that module to run them
    on etcd; the names taken."""
    taken = []
    for name, fn in vars(base).items():
        if not name.startswith("test_") or not callable(fn) or sqlite_only(fn):
            continue
        if name in names or (not names and BUILDS_A_STORE & set(inspect.signature(fn).parameters)):
            namespace[name] = fn
            taken.append(name)
    for name in fixtures:
        namespace[name] = getattr(base, name)
    namespace["pytestmark"] = [pytest.mark.integration, pytest.mark.usefixtures("on_etcd")]
    return taken
