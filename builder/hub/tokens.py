"""Enrollment tokens, node secrets and rate limits.

A token reads ``nf1.<id>.<secret>``: ``id`` (16 hex) is the database key and is safe to
print; only ``sha256(secret)`` is stored. Comparisons are constant-time.

Node secrets are *derived*, not stored: ``HMAC-SHA256(hub secret key, node_id|pubkey|
generation)``. A replayed enrollment (same node_id and key) therefore gets the same secret
back; re-enrollment with a new key or a revocation (generation + 1) changes it. The secret
alone is worth nothing: ``/v1/join`` also requires the request to arrive through the tunnel
from the peer holding the node's WireGuard key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time

from builder.errors import UsageError

TOKEN_RE = re.compile(r"^nf1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
_DUMMY_HASH = hashlib.sha256(b"nodeforge-dummy").hexdigest()


def new_token() -> tuple[str, str, str]:
    """Return (token, id, hash-of-secret)."""
    tid = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"nf1.{tid}.{secret}", tid, hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """Return (id, secret) or None when the string is not a token."""
    m = TOKEN_RE.match(token.strip())
    return (m.group(1), m.group(2)) if m else None


def secret_matches(secret: str, stored_hash: str | None) -> bool:
    """Constant-time check; a missing row is compared against a dummy hash."""
    ok = hmac.compare_digest(hash_secret(secret), stored_hash or _DUMMY_HASH)
    return ok and stored_hash is not None


def node_secret(key: bytes, node_id: str, pubkey: str, generation: int) -> str:
    mac = hmac.new(key, f"{node_id}\n{pubkey}\n{generation}".encode(), hashlib.sha256)
    return "nfs1." + base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def check_node_secret(key: bytes, node_id: str, pubkey: str, generation: int, given: str) -> bool:
    return hmac.compare_digest(node_secret(key, node_id, pubkey, generation), given)


_DURATION_RE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, what: str = "--ttl") -> int:
    """``90s``, ``15m``, ``72h``, ``7d``, ``2w`` → seconds."""
    m = _DURATION_RE.match(str(text).strip())
    if not m or int(m.group(1)) <= 0:
        raise UsageError(f"{what}: {text!r} is not a duration (e.g. 15m, 72h, 7d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


class RateLimiter:
    """Token buckets keyed by a string (client IP, token id); thread-safe.

    ``check(key)`` returns 0 when the request may proceed, else the seconds to wait.
    ``clock`` is injected so tests need no sleeps.
    """

    def __init__(self, rate: float, burst: float, clock=time.monotonic, max_keys: int = 100_000):
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> float:
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            if len(self._buckets) > self.max_keys:
                self._prune(now)
        return wait

    def peek(self, key: str) -> float:
        """Tokens in ``key``'s bucket now, without taking one."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def peek_wait(self, key: str) -> float:
        """Seconds until ``key`` may proceed (0: now), without taking a token."""
        if self.rate <= 0:
            return 0.0
        return max(0.0, (1.0 - self.peek(key)) / self.rate)

    def _prune(self, now: float) -> None:
        full = [
            k
            for k, (t, last) in self._buckets.items()
            if t + (now - last) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]
