"""A small etcd v3 client over etcd's JSON gRPC gateway (``/v3/kv/range``, ``/v3/kv/txn``,
``/v3/watch``), with ``requests``.

Why not a client library (checked 2026-11-30 against PyPI's package index): ``etcd3`` (gRPC)
had its last release, 0.12.0, in 2020-03 and pulls in grpcio/protobuf; ``etcd3gw`` (the
OpenStack JSON-gateway client, 2.7.0, 2026-06) is maintained, but it is a wrapper over the
same three gateway calls we make and brings its own dependencies. The hub needs range reads,
transactions whose compare covers a revision, and one watch; ``requests`` is already a
dependency. Gateway paths: etcd 3.4 serves ``/v3/*`` (and still ``/v3beta/*``), 3.5+ only
``/v3/*`` (etcd.io docs, dev-guide/api_grpc_gateway). Keys and values are base64 in JSON;
int64 fields are JSON strings; a failed compare answers without ``succeeded``.

Every call is bounded in time; a connection error moves on to the next endpoint.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import requests

from builder.errors import BuilderError

TIMEOUT = (3.0, 10.0)  # connect, read
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops


class StoreUnavailable(BuilderError):
    pass


def b64(b: bytes | str) -> str:
    return base64.b64encode(b.encode() if isinstance(b, str) else b).decode()


def unb64(s: str | None) -> bytes:
    return base64.b64decode(s or "")


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with ``prefix`` (its last byte + 1)."""
    b = prefix.encode()
    return (b[:-1] + bytes([b[-1] + 1])).decode()


def put(key: str, value: str) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


class EtcdClient:
    def __init__(
        self,
        endpoints: Sequence[str],
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
    ) -> None:
        if not endpoints:
            raise BuilderError("etcd: no endpoints")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.verify: str | bool = str(ca) if ca else True
        self.cert = (str(cert), str(key)) if cert and key else None
        self._local = threading.local()
        self._good = 0  # index of the endpoint that answered last

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.verify = self.verify
            if self.cert:
                s.cert = self.cert
            self._local.session = s
        return s

    def close(self) -> None:
        s = getattr(self._local, "session", None)
        if s is not None:
            s.close()
            self._local.session = None

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        errors = []
        n = len(self.endpoints)
        for i in range(n):
            idx = (self._good + i) % n
            url = self.endpoints[idx] + path
            try:
                r = self._session().post(url, json=body, timeout=TIMEOUT)
            except requests.RequestException as exc:
                errors.append(f"{self.endpoints[idx]}: {type(exc).__name__}")
                continue
            if r.status_code != 200:
                errors.append(f"{self.endpoints[idx]}: HTTP {r.status_code} {r.text[:200]}")
                if r.status_code >= 500:
                    continue
                break
            self._good = idx
            data = r.json()
            if not isinstance(data, dict):
                raise StoreUnavailable(f"etcd: {url}: answer is not a JSON object")
            return data
        raise StoreUnavailable("etcd: no endpoint answered: " + "; ".join(errors))

    def range(
        self,
        key: str,
        range_end: str | None = None,
        limit: int = 0,
        descend: bool = False,
        min_mod_revision: int = 0,
    ) -> tuple[int, list[tuple[str, str, int]]]:
        """(revision, [(key, value, mod_revision)]) at one revision."""
        body: dict[str, Any] = {"key": b64(key)}
        if min_mod_revision:
            body["min_mod_revision"] = str(min_mod_revision)
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if limit:
            body["limit"] = str(limit)
        if descend:
            body["sort_order"] = "DESCEND"
            body["sort_target"] = "KEY"
        data = self.post("/v3/kv/range", body)
        rev = int(data.get("header", {}).get("revision", 0))
        kvs = [
            (unb64(kv["key"]).decode(), unb64(kv.get("value")).decode(), int(kv["mod_revision"]))
            for kv in data.get("kvs", [])
        ]
        return rev, kvs

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> bool:
        return self.txn_rev(compare, success)[0]

    def txn_rev(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]]
    ) -> tuple[bool, int]:
        """(succeeded, revision after the transaction)."""
        if len(success) > MAX_TXN_OPS:
            raise BuilderError(f"etcd: a transaction of {len(success)} operations is too big")
        data = self.post("/v3/kv/txn", {"compare": compare, "success": success})
        rev = int(data.get("header", {}).get("revision", 0))
        return bool(data.get("succeeded")), rev

    def watch(self, key: str, range_end: str, idle_timeout: float = 30.0) -> Iterator[int]:
        """Yields the number of events of each watch response (the first, 0, says the watch
        is in place); returns after ``idle_timeout`` seconds without a message."""
        body = {"create_request": {"key": b64(key), "range_end": b64(range_end)}}
        url = self.endpoints[self._good] + "/v3/watch"
        established = False
        try:
            with self._session().post(
                url, data=json.dumps(body), stream=True, timeout=(TIMEOUT[0], idle_timeout)
            ) as r:
                if r.status_code != 200:
                    raise StoreUnavailable(f"etcd: {url}: HTTP {r.status_code}")
                for line in r.iter_lines(chunk_size=65536):  # chunked: yields per HTTP chunk
                    if not line:
                        continue
                    msg = json.loads(line)
                    established = True
                    yield len((msg.get("result") or {}).get("events") or [])
        except requests.RequestException as exc:
            if established:  # idle for idle_timeout (or the member went away): reconnect
                return
            self._good = (self._good + 1) % len(self.endpoints)
            raise StoreUnavailable(f"etcd: watch {url}: {type(exc).__name__}") from exc
