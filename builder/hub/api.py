"""The hub's HTTPS API (stdlib ``ThreadingHTTPServer`` + ``ssl``).

Routes: ``POST /v1/enroll`` (Bearer enrollment token), ``GET /v1/join`` and
``POST /v1/complete`` (only through the tunnel: the connection must arrive on the hub's
overlay address from a node's overlay address whose WireGuard peer key matches, with the
node secret as Bearer), ``GET /healthz``, ``GET /metrics`` (Prometheus text).

Enrollments are handed to ONE writer thread that takes every request waiting in its queue,
runs them in one SQLite transaction (group commit), then applies all new peers with one
``wg set`` and only then answers: a 200 means "in the database and on the interface".
The same thread reconciles the whole database into the interface (``wg syncconf``) at start
and every ``reconcile_seconds``, so admin changes made with the CLI reach the interface.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import math
import multiprocessing
import os
import queue
import re
import signal
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from builder.errors import BuilderError

from . import tokens as tok
from .config import HubConfig
from .pki import wg_public_key
from .provider import Provider
from .store import EnrollRequest, Outcome, Pool, Store
from .wg import WgInterface
from .writer import WriterCore, writer_main

log = logging.getLogger("nodeforge.hub")

SITE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
TEXT_RE = re.compile(r"^[\x21-\x7e]{0,128}$")
LAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class HttpError(Exception):
    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


def valid_pubkey(s: Any) -> bool:
    if not isinstance(s, str) or len(s) != 44:
        return False
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return False
    # canonical encoding only: `wg` rejects keys whose padding bits are not zero
    return len(raw) == 32 and base64.b64encode(raw).decode() == s


def parse_enroll_body(body: bytes) -> dict[str, str]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"malformed JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HttpError(400, "body must be a JSON object")
    problems = []
    rules = {"site": SITE_RE, "node_id": NODE_ID_RE}
    for key, rx in rules.items():
        v = data.get(key)
        if not isinstance(v, str) or not rx.match(v):
            problems.append(f"{key}: missing or invalid")
    if not valid_pubkey(data.get("wg_pubkey")):
        problems.append("wg_pubkey: not a WireGuard public key")
    for key, rx in (("hostname", HOST_RE), ("fingerprint", TEXT_RE), ("image_version", TEXT_RE)):
        v = data.get(key, "")
        if v and (not isinstance(v, str) or not rx.match(v)):
            problems.append(f"{key}: invalid")
    if problems:
        raise HttpError(400, "; ".join(sorted(problems)))
    return {
        k: data.get(k) or ""
        for k in ("site", "node_id", "wg_pubkey", "hostname", "fingerprint", "image_version")
    }


@dataclass
class Job:
    req: EnrollRequest
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.enroll: Counter[str] = Counter()
        self.lat_buckets = [0] * (len(LAT_BUCKETS) + 1)
        self.lat_sum = 0.0
        self.lat_count = 0
        self.batches = 0
        self.batch_items = 0
        self.wg_errors = 0
        self.db_seconds = 0.0
        self.wg_seconds = 0.0

    def request(self, path: str, status: int) -> None:
        with self.lock:
            self.requests[(path, status)] += 1

    def enrolled(self, result: str, seconds: float) -> None:
        with self.lock:
            self.enroll[result] += 1
            self.lat_sum += seconds
            self.lat_count += 1
            for i, b in enumerate(LAT_BUCKETS):
                if seconds <= b:
                    self.lat_buckets[i] += 1
                    break
            else:
                self.lat_buckets[-1] += 1

    def render(self, node_states: dict[str, int]) -> str:
        out = []
        with self.lock:
            out.append("# HELP nodeforge_hub_requests_total HTTP requests by path and status.")
            out.append("# TYPE nodeforge_hub_requests_total counter")
            for (path, status), n in sorted(self.requests.items()):
                out.append(f'nodeforge_hub_requests_total{{path="{path}",code="{status}"}} {n}')
            out.append("# HELP nodeforge_hub_enrollments_total Enrollment results.")
            out.append("# TYPE nodeforge_hub_enrollments_total counter")
            for result, n in sorted(self.enroll.items()):
                out.append(f'nodeforge_hub_enrollments_total{{result="{result}"}} {n}')
            out.append("# HELP nodeforge_hub_enroll_seconds Enrollment latency (queue+db+wg).")
            out.append("# TYPE nodeforge_hub_enroll_seconds histogram")
            acc = 0
            for b, n in zip(LAT_BUCKETS, self.lat_buckets, strict=False):
                acc += n
                out.append(f'nodeforge_hub_enroll_seconds_bucket{{le="{b}"}} {acc}')
            out.append(f'nodeforge_hub_enroll_seconds_bucket{{le="+Inf"}} {self.lat_count}')
            out.append(f"nodeforge_hub_enroll_seconds_sum {self.lat_sum:.6f}")
            out.append(f"nodeforge_hub_enroll_seconds_count {self.lat_count}")
            out.append("# TYPE nodeforge_hub_batches_total counter")
            out.append(f"nodeforge_hub_batches_total {self.batches}")
            out.append(f"nodeforge_hub_batch_items_total {self.batch_items}")
            out.append("# HELP nodeforge_hub_db_seconds_total Writer time in SQLite.")
            out.append("# TYPE nodeforge_hub_db_seconds_total counter")
            out.append(f"nodeforge_hub_db_seconds_total {self.db_seconds:.6f}")
            out.append("# HELP nodeforge_hub_wg_seconds_total Writer time applying peers.")
            out.append("# TYPE nodeforge_hub_wg_seconds_total counter")
            out.append(f"nodeforge_hub_wg_seconds_total {self.wg_seconds:.6f}")
            out.append("# TYPE nodeforge_hub_wg_errors_total counter")
            out.append(f"nodeforge_hub_wg_errors_total {self.wg_errors}")
        out.append("# HELP nodeforge_hub_nodes Nodes by state.")
        out.append("# TYPE nodeforge_hub_nodes gauge")
        for state in ("pending", "active", "joined", "revoked"):
            out.append(f'nodeforge_hub_nodes{{state="{state}"}} {node_states.get(state, 0)}')
        return "\n".join(out) + "\n"


class Hub:
    """Everything the handlers share: config, store, interface, provider, limits, writer."""

    def __init__(self, cfg: HubConfig) -> None:
        self.cfg = cfg
        self.pool = Pool(cfg.wg.network, cfg.wg.hub_ip, cfg.wg.reserved)
        self.store = Store(cfg.database, self.pool, cfg.quarantine_seconds)
        self.wg = WgInterface(cfg.wg.interface, cfg.wg.private_key_file, cfg.wg.listen_port)
        self.hub_pubkey = wg_public_key(cfg.wg.private_key_file.read_text().strip())
        self.secret_key = cfg.secret_key()
        self.provider = Provider(cfg.join)
        lim = cfg.limits
        self.ip_limit = tok.RateLimiter(lim.per_ip_rate, lim.per_ip_burst)
        self.token_limit = tok.RateLimiter(lim.per_token_rate, lim.per_token_burst)
        self.metrics = Metrics()
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.stopping = threading.Event()
        self.writer = threading.Thread(target=self._writer, name="hub-writer", daemon=True)
        self.core: WriterCore | None = None
        self.proc: Any = None
        self.pipe: Any = None

    # -- writer -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer (own process unless limits.writer_process is false): it creates
        the interface if missing and reconciles the database into it before we serve."""
        if self.cfg.limits.writer_process:
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            self.proc = ctx.Process(
                target=writer_main,
                args=(str(self.cfg.path), child),
                name="nodeforge-hub-writer",
                daemon=True,
            )
            self.proc.start()
            child.close()
            self.pipe = parent
            if not parent.poll(120):
                raise BuilderError("hub writer did not start within 120 s")
            try:
                kind, msg = parent.recv()
            except EOFError as exc:
                raise BuilderError("hub writer exited during start-up (see its log above)") from exc
            if kind != "ready":
                raise BuilderError(f"hub writer: {msg}")
        else:
            self.core = WriterCore(self.cfg)
            self.core.start()
        self.writer.start()

    def _writer(self) -> None:
        batch_max = self.cfg.limits.batch_max
        while not self.stopping.is_set():
            idle = self.core.idle_seconds() if self.core else 1.0
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
            self._process(batch)

    def _process(self, batch: list[Job]) -> None:
        reqs = [j.req for j in batch]
        if self.core:
            res = self.core.process(reqs)
        else:
            try:
                self.pipe.send(reqs)
                res = self.pipe.recv()
            except (EOFError, OSError) as exc:
                # the writer died: answer 503 (nodes retry) and let systemd restart us
                log.error("hub writer process is gone (%s): exiting", exc)
                for j in batch:
                    j.outcome = Outcome(503, "hub restarting", retry_after=5)
                    j.done.set()
                os._exit(70)
        with self.metrics.lock:
            self.metrics.batches += 1
            self.metrics.batch_items += len(batch)
            self.metrics.db_seconds += res.db_seconds
            self.metrics.wg_seconds += res.wg_seconds
            self.metrics.wg_errors += res.wg_errors
        for j, o in zip(batch, res.outcomes, strict=True):
            j.outcome = o
            j.done.set()

    def submit(self, req: EnrollRequest) -> Outcome:
        job = Job(req)
        self.jobs.put(job)
        if not job.done.wait(self.cfg.limits.request_timeout):
            return Outcome(503, "hub busy", retry_after=5)
        assert job.outcome is not None
        return job.outcome

    def stop(self) -> None:
        self.stopping.set()
        self.jobs.put(None)
        if self.pipe is not None:
            with contextlib.suppress(OSError):
                self.pipe.close()
        if self.proc is not None:
            self.proc.join(10)

    # -- responses ------------------------------------------------------------------------
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
        """The node a tunnelled request comes from, or HttpError."""
        if local_ip != str(self.cfg.wg.hub_ip):
            raise HttpError(403, "only answered through the WireGuard tunnel")
        node = self.store.node_by_ip(remote_ip)
        if node is None or node["state"] not in ("active", "joined"):
            raise HttpError(403, "no enrolled node at this overlay address")
        given = auth[7:] if auth.startswith("Bearer ") else ""
        if not tok.check_node_secret(
            self.secret_key, node["node_id"], node["pubkey"], node["generation"], given
        ):
            raise HttpError(401, "bad node secret")
        if not self.cfg.wg.apply:
            raise HttpError(503, "WireGuard is disabled on this hub")
        peers = {p.pubkey: p for p in self.wg.dump()}
        peer = peers.get(node["pubkey"])
        if peer is None or f"{remote_ip}/32" not in peer.allowed_ips or not peer.latest_handshake:
            raise HttpError(403, "WireGuard peer does not match this node")
        return node


class Handler(BaseHTTPRequestHandler):
    server: HubHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "nodeforge-hub"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.hub.cfg.limits.request_timeout  # type: ignore[misc]
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def _send(
        self,
        status: int,
        body: Any,
        retry_after: float | None = None,
        ctype: str = "application/json",
    ) -> None:
        data = body if isinstance(body, bytes) else (json.dumps(body) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if retry_after is not None:
            self.send_header("Retry-After", str(max(1, math.ceil(retry_after))))
        self.end_headers()
        self.wfile.write(data)
        self.server.hub.metrics.request(self._route, status)

    def _route_of(self) -> tuple[str, str]:
        u = urlsplit(self.path)
        return u.path, u.query

    def _drain(self) -> None:
        """Consume an unread small body so closing the connection does not reset it."""
        length = self.headers.get("Content-Length", "")
        if getattr(self, "_body_read", False) or not length.isdigit():
            return
        if int(length) <= self.server.hub.cfg.limits.max_body_bytes:
            with contextlib.suppress(OSError):
                self.rfile.read(int(length))
        self._body_read = True

    def _body(self) -> bytes:
        hub = self.server.hub
        self._body_read = True
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise HttpError(411, "Content-Length required")
        if int(length) > hub.cfg.limits.max_body_bytes:
            self.close_connection = True
            # discard (never parse) up to 1 MiB so the client can read the 413
            left = min(int(length), 1 << 20)
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
            raise HttpError(413, f"body larger than {hub.cfg.limits.max_body_bytes} bytes")
        return self.rfile.read(int(length))

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        path, query = self._route_of()
        self._route = (
            path
            if path in ("/v1/enroll", "/v1/join", "/v1/complete", "/healthz", "/metrics")
            else "other"
        )
        hub = self.server.hub
        try:
            wait = hub.ip_limit.check(self.client_address[0]) if path.startswith("/v1/") else 0
            if wait:
                self.close_connection = True
                raise HttpError(429, "too many requests from this address", wait)
            if query and ("token" in query.lower() or path == "/v1/enroll"):
                raise HttpError(400, "credentials belong in the Authorization header, not the URL")
            route = {
                ("POST", "/v1/enroll"): self.enroll,
                ("GET", "/v1/join"): self.join,
                ("POST", "/v1/complete"): self.complete,
                ("GET", "/healthz"): self.healthz,
                ("GET", "/metrics"): self.metrics,
            }.get((method, path))
            if route is None:
                known = path in ("/v1/enroll", "/v1/join", "/v1/complete", "/healthz", "/metrics")
                raise HttpError(
                    405 if known else 404, "method not allowed" if known else "not found"
                )
            route()
        except HttpError as exc:
            self._drain()
            self._send(exc.status, {"error": exc.message}, exc.retry_after)
        except (ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True
        except Exception as exc:
            log.exception("internal error on %s %s", method, path)
            self.close_connection = True
            with contextlib.suppress(Exception):
                self._send(500, {"error": f"internal error: {type(exc).__name__}"})

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    # -- routes ---------------------------------------------------------------------------
    def enroll(self) -> None:
        hub = self.server.hub
        t0 = time.monotonic()
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            self._body()
            raise HttpError(401, "missing enrollment token (Authorization: Bearer …)")
        token = auth[7:].strip()
        body = parse_enroll_body(self._body())
        parsed = tok.parse_token(token)
        if parsed is None:
            raise HttpError(401, "malformed enrollment token")
        wait = hub.token_limit.check(parsed[0])
        if wait:
            raise HttpError(429, "too many enrollments with this token", wait)
        out = hub.submit(EnrollRequest(token=token, remote=self.client_address[0], **body))
        result = {200: "ok", 202: "pending"}.get(out.status, str(out.status))
        hub.metrics.enrolled(result + ("_replay" if out.replay else ""), time.monotonic() - t0)
        if out.status == 200 and out.node:
            self._send(200, hub.enroll_response(out.node))
        elif out.status == 202:
            self._send(
                202, {"status": "pending", "detail": out.error}, hub.cfg.pending_retry_seconds
            )
        else:
            self._send(out.status, {"error": out.error}, out.retry_after)

    def _tunnel(self) -> dict[str, Any]:
        local = self.connection.getsockname()[0]
        return self.server.hub.tunnel_node(
            local, self.client_address[0], self.headers.get("Authorization", "")
        )

    def join(self) -> None:
        hub = self.server.hub
        node = self._tunnel()
        try:
            mat = hub.provider.material(node)
        except BuilderError as exc:
            log.error("join material for %s: %s", node["node_id"], exc.message)
            raise HttpError(503, "join material unavailable", 30) from exc
        prev = hub.store.set_bootstrap_token(
            node["node_id"], mat.get("token_id"), self.client_address[0]
        )
        if prev and prev != mat.get("token_id"):
            try:
                hub.provider.delete(prev)
            except BuilderError as exc:
                log.warning("could not delete old bootstrap token %s: %s", prev, exc.message)
        self._send(200, mat)

    def complete(self) -> None:
        hub = self.server.hub
        self._body()
        node = self._tunnel()
        tid = hub.store.complete(node["node_id"], self.client_address[0])
        try:
            hub.provider.delete(tid)
        except BuilderError as exc:
            log.warning("could not delete bootstrap token %s: %s", tid, exc.message)
        self._send(200, {"status": "joined", "node_id": node["node_id"]})

    def healthz(self) -> None:
        hub = self.server.hub
        try:
            hub.store.conn().execute("SELECT 1").fetchone()
        except Exception as exc:
            raise HttpError(503, f"database: {exc}") from exc
        self._send(200, {"status": "ok", "writer": hub.writer.is_alive()})

    def metrics(self) -> None:
        hub = self.server.hub
        rows = hub.store.conn().execute("SELECT state, count(*) FROM nodes GROUP BY state")
        text = hub.metrics.render({r[0]: r[1] for r in rows})
        self._send(200, text.encode(), ctype="text/plain; version=0.0.4")


class HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, hub: Hub, ctx: ssl.SSLContext) -> None:
        self.hub = hub
        self.ctx = ctx
        self.slots = threading.BoundedSemaphore(hub.cfg.limits.max_connections)
        host = hub.cfg.listen_host
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), hub.cfg.listen_port), Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # bounded: a flood of idle connections cannot start unbounded threads
        if not self.slots.acquire(blocking=False):
            log.warning("connection limit reached: dropping %s", client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # the TLS handshake runs here, in the connection's own thread, under a timeout
        request.settimeout(self.hub.cfg.limits.request_timeout)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)


def tls_context(cfg: HubConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.num_tickets = 0  # nodes connect a few times, never resume: no tickets to mint
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise BuilderError(f"{cfg.path}: tls_cert/tls_key: cannot load: {exc}") from exc
    return ctx


def make_server(cfg: HubConfig) -> HubHTTPServer:
    hub = Hub(cfg)
    try:
        return HubHTTPServer(hub, tls_context(cfg))
    except OSError as exc:
        raise BuilderError(f"cannot listen on {cfg.listen_host}:{cfg.listen_port}: {exc}") from exc


def serve(cfg: HubConfig, ready: Any = None) -> None:
    """Run the hub until SIGTERM/SIGINT."""
    srv = make_server(cfg)
    srv.hub.start()
    log.info(
        "nodeforge hub listening on https://%s:%d (interface %s, overlay %s)",
        cfg.listen_host,
        cfg.listen_port,
        cfg.wg.interface,
        cfg.wg.network,
    )

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    if ready:
        ready(srv)
    try:
        srv.serve_forever(poll_interval=0.5)
    finally:
        srv.hub.stop()
        srv.server_close()
