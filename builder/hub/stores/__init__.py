"""The hub's state behind one interface: ``HubStore``; two backends.

``sqlite`` (``builder.hub.store.Store``, the default: one hub, one file) and ``etcd``
(``builder.hub.stores.etcd.EtcdStore``: several hubs on one etcd cluster). ``open_store``
picks the one ``hub.json``'s ``store.kind`` names. Both run the same enrollment rules (the
etcd backend runs them on a snapshot of the state and commits the result as one etcd
transaction, see ``etcd.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..config import HubConfig
from ..store import EnrollRequest, Outcome, Pool, Store


class HubStore(Protocol):
    """What the API, the writer and the admin commands use of a store."""

    def create_token(
        self, site: str, uses: int, ttl: int, approve: bool, description: str = ""
    ) -> tuple[str, str]: ...
    def list_tokens(self) -> list[dict[str, Any]]: ...
    def revoke_token(self, tid: str) -> None: ...
    def token_usable(self, tid: str) -> bool: ...
    def list_nodes(self) -> list[dict[str, Any]]: ...
    def node(self, node_id: str) -> dict[str, Any] | None: ...
    def node_by_ip(self, ip: str) -> dict[str, Any] | None: ...
    def active_peers(self) -> list[tuple[str, str]]: ...
    def approve(self, node_id: str) -> dict[str, Any]: ...
    def revoke_node(self, node_id: str) -> dict[str, Any]: ...
    def set_bootstrap_token(
        self, node_id: str, token_id: str | None, remote: str | None = None
    ) -> str | None: ...
    def complete(self, node_id: str, remote: str | None = None) -> str | None: ...
    def enroll_many(self, reqs: Sequence[EnrollRequest]) -> list[Outcome]: ...
    def enroll(self, req: EnrollRequest) -> Outcome: ...
    def audit_events(self, limit: int = 100) -> list[dict[str, Any]]: ...
    def ping(self) -> None: ...
    def node_states(self) -> dict[str, int]: ...
    def close(self) -> None: ...


def open_store(
    cfg: HubConfig, secret: bool = True, clock: Callable[[], float] | None = None
) -> HubStore:
    """The store ``cfg`` names, with the pool, quarantine, node secrets (``secret``: the
    hub's key; the admin commands do without) and replay window of the config."""
    pool = Pool(cfg.wg.network, cfg.wg.hub_ip, cfg.wg.reserved)
    kw: dict[str, Any] = {
        "secret_key": cfg.secret_key() if secret else b"",
        "replay_grace_seconds": cfg.limits.replay_grace_seconds,
    }
    if clock is not None:
        kw["clock"] = clock
    if cfg.store.kind == "etcd":
        from .etcd import EtcdStore

        return EtcdStore(cfg.store, pool, cfg.quarantine_seconds, **kw)
    return Store(cfg.database, pool, cfg.quarantine_seconds, **kw)
