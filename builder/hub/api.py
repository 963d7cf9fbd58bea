"""The hub's HTTPS API: routes and what they check; served by ``server.HttpServer`` (asyncio).

Routes: ``POST /v1/enroll`` (Bearer enrollment token; or, to re-enroll an active node with
a new key, its node secret), ``GET /v1/join`` and ``POST /v1/complete`` (only through the
tunnel: the connection must arrive on the hub's overlay address from a node's overlay
address whose WireGuard peer key matches, with the node secret as Bearer; so does
``POST /v1/route``, a node's report of the hub it routes through), ``GET /healthz``
(200 only while the writer is alive), ``GET /metrics`` (Prometheus text).

Enrollments go to the single writer through ``dispatch.WriterLink`` (batches: one SQLite
transaction and one ``wg set`` each); a 200 means "in the database and on the interface".
Blocking work (SQLite reads, ``wg show``, the join provider) runs in a small thread pool so
the event loop only parses, checks limits and moves bytes.

Failed authentications (unknown or malformed tokens, wrong node secrets) spend a site-wide
budget (``limits.failed_auth_rate``/``failed_auth_burst``), whatever address they come from.
While it is spent, requests naming a token that cannot succeed (unknown, used up, expired,
revoked, malformed) get 429 without being evaluated, and a usable token that keeps failing
is throttled on its own: guessing gets slow, nodes with a good token still enroll.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from builder.errors import BuilderError

from . import tokens as tok
from .config import HubConfig
from .dispatch import WriterLink
from .metrics import Metrics
from .pki import wg_public_key
from .provider import Provider
from .server import HttpServer, Request, Response
from .store import EnrollRequest, Outcome
from .stores import HubStore
from .wg import WgInterface
from .wire import NODE_SECRET_RE, HttpError, parse_enroll_body
from .writer import open_store, store_counts

log = logging.getLogger("nodeforge.hub")

ROUTES = ("/v1/enroll", "/v1/join", "/v1/complete", "/v1/route", "/healthz", "/metrics")
T = TypeVar("T")


def json_response(
    status: int, body: Any, retry_after: float | None = None, close: bool = False
) -> Response:
    return Response(
        status,
        (json.dumps(body) + "\n").encode(),
        retry_after=None if retry_after is None else max(1, math.ceil(retry_after)),
        close=close,
    )


def error_response(status: int, message: str) -> Response:
    return json_response(status, {"error": message}, close=True)


class Hub:
    """Everything the handlers share: config, store, interface, provider, limits, writer."""

    def __init__(self, cfg: HubConfig, on_fatal: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.store: HubStore = open_store(cfg)
        self.wg = WgInterface(cfg.wg.interface, cfg.wg.private_key_file, cfg.wg.listen_port)
        self.hub_pubkey = wg_public_key(cfg.wg.private_key_file.read_text().strip())
        self.secret_key = cfg.secret_key()
        self.provider = Provider(cfg.join)
        lim = cfg.limits
        self.ip_limit = tok.RateLimiter(lim.per_ip_rate, lim.per_ip_burst)
        self.token_limit = tok.RateLimiter(lim.per_token_rate, lim.per_token_burst)
        self.auth_budget = tok.RateLimiter(lim.failed_auth_rate, lim.failed_auth_burst)
        self.metrics = Metrics()
        self.metrics.hub = cfg.store.name or "hub"
        self.link = WriterLink(cfg, self.metrics, on_fatal)
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="hub-io")
        self.hubs: list[dict[str, Any]] = []
        self.hubs_at = 0.0

    def start(self) -> None:
        self.link.start()
        register = getattr(self.store, "register_hub", None)
        if register is not None:  # several hubs on one store: nodes get every hub as a peer
            register(self.hub_info())
            self.hubs = self.store.hubs()  # type: ignore[attr-defined]
            self.hubs_at = time.monotonic()

    def hub_info(self) -> dict[str, Any]:
        return {
            "pubkey": self.hub_pubkey,
            "endpoint": self.cfg.wg.endpoint,
            "overlay_ip": str(self.cfg.wg.hub_ip),
        }

    async def other_hubs(self) -> list[dict[str, Any]]:
        """The other hubs on this store (refreshed every 30 s, at every enrollment while
        this hub knows no other: one may have started since; [] on SQLite)."""
        if not hasattr(self.store, "hubs"):
            return []
        alone = all(h.get("pubkey") == self.hub_pubkey for h in self.hubs)
        if alone or time.monotonic() - self.hubs_at > 30:
            try:
                self.hubs = await self.io(self.store.hubs)  # type: ignore[attr-defined]
            except BuilderError as exc:
                log.warning("hub list: %s", exc.message)
            self.hubs_at = time.monotonic()
        return [h for h in self.hubs if h.get("pubkey") != self.hub_pubkey]

    def stop(self) -> None:
        self.link.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # -- dispatch ---------------------------------------------------------------------------
    async def handle(self, req: Request) -> Response:
        path = req.path
        route = path if path in ROUTES else "other"
        try:
            resp = await self._route(req, path)
        except HttpError as exc:
            resp = json_response(exc.status, {"error": exc.message}, exc.retry_after)
        except Exception as exc:
            log.exception("internal error on %s %s", req.method, path)
            resp = error_response(500, f"internal error: {type(exc).__name__}")
        self.metrics.request(route, resp.status)
        return resp

    async def _route(self, req: Request, path: str) -> Response:
        if path.startswith("/v1/"):
            wait = self.ip_limit.check(req.peer)
            if wait:
                raise HttpError(429, "too many requests from this address", wait)
        if req.query and ("token" in req.query.lower() or path == "/v1/enroll"):
            raise HttpError(400, "credentials belong in the Authorization header, not the URL")
        handler = {
            ("POST", "/v1/enroll"): self.enroll,
            ("GET", "/v1/join"): self.join,
            ("POST", "/v1/complete"): self.complete,
            ("POST", "/v1/route"): self.route,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/metrics"): self.metrics_text,
        }.get((req.method, path))
        if handler is None:
            if path in ROUTES:
                raise HttpError(405, "method not allowed")
            raise HttpError(404, "not found")
        return await handler(req)

    # -- failed-auth budget -------------------------------------------------------------
    def auth_failed(self, key: str) -> None:
        self.metrics.add("auth_failures")
        self.auth_budget.check("site")
        self.auth_budget.check("id:" + key)

    async def auth_gate(self, tid: str | None) -> None:
        """429 before any evaluation while the site-wide budget is spent, unless the token
        named is usable and has not been failing itself."""
        if self.auth_budget.rate <= 0 or self.auth_budget.peek("site") >= 1:
            return
        usable = tid is not None and await self.io(self.store.token_usable, tid)
        wait = self.auth_budget.peek_wait("id:" + (tid or "-"))
        if usable and not wait:
            return
        self.metrics.add("auth_throttled")
        raise HttpError(
            429,
            "too many failed authentications on this hub: try again later",
            wait or self.auth_budget.peek_wait("site"),
        )

    # -- routes -----------------------------------------------------------------------------
    async def enroll(self, req: Request) -> Response:
        t0 = time.monotonic()
        auth = req.header("authorization")
        bearer = auth[7:].strip() if auth.startswith("Bearer ") else ""
        if not bearer:
            raise HttpError(401, "missing enrollment token (Authorization: Bearer …)")
        body = parse_enroll_body(req.body, self.hub_pubkey)
        if NODE_SECRET_RE.match(bearer):  # re-enrollment proven by the node's own secret
            await self.auth_gate(None)
            token, body["node_secret"], tid = "", bearer, "secret:" + body["node_id"]
        else:
            parsed = tok.parse_token(bearer)
            await self.auth_gate(parsed[0] if parsed else None)
            if parsed is None:
                self.auth_failed("-")
                raise HttpError(401, "malformed enrollment token")
            token, tid = bearer, parsed[0]
            wait = self.token_limit.check(tid)
            if wait:
                raise HttpError(429, "too many enrollments with this token", wait)
        fut = self.link.submit(EnrollRequest(token=token, remote=req.peer, **body))
        try:
            out = await asyncio.wait_for(asyncio.wrap_future(fut), self.cfg.limits.request_timeout)
        except TimeoutError:
            out = Outcome(503, "hub busy", retry_after=5)
        if out.status == 401:
            self.auth_failed(tid if token else "-")
        result = {200: "ok", 202: "pending"}.get(out.status, str(out.status))
        self.metrics.enrolled(result + ("_replay" if out.replay else ""), time.monotonic() - t0)
        if out.status == 200 and out.node:
            answer = self.enroll_response(out.node)
            others = await self.other_hubs()
            if others:
                answer["other_hubs"] = others
            return json_response(200, answer)
        if out.status == 202:
            return json_response(
                202, {"status": "pending", "detail": out.error}, self.cfg.pending_retry_seconds
            )
        return json_response(out.status, {"error": out.error}, out.retry_after)

    def enroll_response(self, node: dict[str, Any]) -> dict[str, Any]:
        return {
            "node_id": node["node_id"],
            "address": node["ip"],
            "overlay_cidr": str(self.cfg.wg.network),
            "hub": {
                "pubkey": self.hub_pubkey,
                "endpoint": self.cfg.wg.endpoint,
                "overlay_ip": str(self.cfg.wg.hub_ip),
            },
            "mtu": self.cfg.wg.mtu,
            "keepalive": self.cfg.wg.keepalive,
            "node_secret": tok.node_secret(
                self.secret_key, node["node_id"], node["pubkey"], node["generation"]
            ),
            "join_url": self.cfg.join_url,
        }

    def tunnel_node(self, local_ip: str, remote_ip: str, auth: str) -> dict[str, Any]:
        """The node a tunnelled request comes from, or HttpError (runs in the pool)."""
        if local_ip != str(self.cfg.wg.hub_ip):
            raise HttpError(403, "only answered through the WireGuard tunnel")
        node = self.store.node_by_ip(remote_ip)
        if node is None or node["state"] not in ("active", "joined"):
            raise HttpError(403, "no enrolled node at this overlay address")
        given = auth[7:] if auth.startswith("Bearer ") else ""
        if not tok.check_node_secret(
            self.secret_key, node["node_id"], node["pubkey"], node["generation"], given
        ):
            self.auth_failed("node:" + node["node_id"])
            raise HttpError(401, "bad node secret")
        if not self.cfg.wg.apply:
            raise HttpError(503, "WireGuard is disabled on this hub")
        peers = {p.pubkey: p for p in self.wg.dump()}
        peer = peers.get(node["pubkey"])
        if peer is None or f"{remote_ip}/32" not in peer.allowed_ips or not peer.latest_handshake:
            raise HttpError(403, "WireGuard peer does not match this node")
        return node

    def _join(self, req: Request) -> dict[str, Any]:
        node = self.tunnel_node(req.local, req.peer, req.header("authorization"))
        try:
            mat = self.provider.material(node)
        except BuilderError as exc:
            log.error("join material for %s: %s", node["node_id"], exc.message)
            raise HttpError(503, "join material unavailable", 30) from exc
        prev = self.store.set_bootstrap_token(node["node_id"], mat.get("token_id"), req.peer)
        if prev and prev != mat.get("token_id"):
            try:
                self.provider.delete(prev)
            except BuilderError as exc:
                log.warning("could not delete old bootstrap token %s: %s", prev, exc.message)
        return mat

    async def join(self, req: Request) -> Response:
        return json_response(200, await self.io(self._join, req))

    def _complete(self, req: Request) -> dict[str, Any]:
        node = self.tunnel_node(req.local, req.peer, req.header("authorization"))
        tid = self.store.complete(node["node_id"], req.peer)
        try:
            self.provider.delete(tid)
        except BuilderError as exc:
            log.warning("could not delete bootstrap token %s: %s", tid, exc.message)
        return {"status": "joined", "node_id": node["node_id"]}

    async def complete(self, req: Request) -> Response:
        return json_response(200, await self.io(self._complete, req))

    def _route_report(self, req: Request) -> dict[str, Any]:
        """A node says its overlay route goes through this hub. Only the node knows: every
        hub holds a live WireGuard session with every node (keepalives, probes), so no hub
        can tell from its own interface which one carries the node's traffic. The report
        comes through this hub's tunnel with the node secret (``tunnel_node``), names this
        hub's key, and is stored with the time; ``builder hub nodes`` shows it and its age."""
        node = self.tunnel_node(req.local, req.peer, req.header("authorization"))
        try:
            body = json.loads(req.body or b"{}")
        except ValueError as exc:
            raise HttpError(400, "body: not JSON") from exc
        if not isinstance(body, dict) or body.get("hub") != self.hub_pubkey:
            raise HttpError(400, "hub: a node reports its route to the hub it goes through")
        set_route = getattr(self.store, "set_route", None)
        if set_route is None:
            raise HttpError(404, "one hub on this store: there is no route to choose")
        info = {"hub": self.metrics.hub, "hub_ip": str(self.cfg.wg.hub_ip), "at": time.time()}
        if not set_route(node["node_id"], info):  # revoked since tunnel_node read it
            raise HttpError(403, "no enrolled node at this overlay address")
        return {"status": "ok", **info}

    async def route(self, req: Request) -> Response:
        return json_response(200, await self.io(self._route_report, req))

    def _db_ok(self) -> None:
        self.store.ping()

    async def healthz(self, req: Request) -> Response:
        try:
            await self.io(self._db_ok)
        except Exception as exc:
            raise HttpError(503, f"database: {exc}") from exc
        if not self.link.alive():
            return json_response(503, {"status": "writer down", "writer": False}, retry_after=5)
        return json_response(200, {"status": "ok", "writer": True, "writer_pid": self.link.pid()})

    def _node_states(self) -> dict[str, int]:
        return self.store.node_states()

    async def metrics_text(self, req: Request) -> Response:
        text = self.metrics.render(await self.io(self._node_states), store_counts(self.store))
        return Response(200, text.encode(), content_type="text/plain; version=0.0.4")


def tls_context(cfg: HubConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.num_tickets = 0  # nodes connect a few times, never resume: no tickets to mint
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise BuilderError(f"{cfg.path}: tls_cert/tls_key: cannot load: {exc}") from exc
    return ctx


def serve(cfg: HubConfig, ready: Callable[[Hub], None] | None = None) -> None:
    """Run the hub until SIGTERM/SIGINT (or until its writer cannot be restarted: then
    exit 70 so the service manager starts the hub again)."""
    ctx = tls_context(cfg)
    asyncio.run(_serve(cfg, ctx, ready))


async def _serve(cfg: HubConfig, ctx: ssl.SSLContext, ready: Any) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    fatal = threading.Event()

    def on_fatal() -> None:
        fatal.set()
        loop.call_soon_threadsafe(done.set)

    hub = Hub(cfg, on_fatal)
    server = HttpServer(
        hub.handle, error_response, ctx, cfg.limits, hub.metrics, cfg.limits.max_body_bytes
    )
    try:
        await server.start(cfg.listen_host, cfg.listen_port)
    except OSError as exc:
        raise BuilderError(f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: {exc}") from exc
    await loop.run_in_executor(None, hub.start)
    log.info(
        "nodeforge hub listening on https://%s:%d (interface %s, overlay %s)",
        cfg.listen_host,
        cfg.listen_port,
        cfg.wg.interface,
        cfg.wg.network,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    if ready:
        ready(hub)
    try:
        await done.wait()
    finally:
        await server.close()
        await loop.run_in_executor(None, hub.stop)
    if fatal.is_set():
        log.critical("hub writer could not be restarted: exiting with status 70")
        os._exit(70)
