"""What the hub accepts from the network: the enrollment body, WireGuard public keys.

Network input is hostile: the body is size-bounded by the server, nesting is bounded here
before ``json.loads`` sees it (a 4 KB body can nest 2,000 levels deep and make the decoder
recurse until ``RecursionError``), and every field is checked against a strict pattern.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

SITE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
TEXT_RE = re.compile(r"^[\x21-\x7e]{0,128}$")
NODE_SECRET_RE = re.compile(r"^nfs1\.[A-Za-z0-9_-]{43}$")
MAX_JSON_DEPTH = 8
FIELDS = ("site", "node_id", "wg_pubkey", "hostname", "fingerprint", "image_version")

# Curve25519 keys WireGuard must never get as a peer. Source: D. J. Bernstein, "A
# state-of-the-art Diffie-Hellman function", https://cr.yp.to/ecdh.html (read 2026-11-30):
# the 32-byte strings to reject "to ensure contributory behavior" are, little-endian, 0, 1,
# the two points of order 8 below, p-1, p, p+1, p+each order-8 point, 2p-1, 2p and 2p+1.
# A real public key (``wg pubkey``, any X25519 output) is the canonical u < p, so a string
# >= p is refused as non-canonical (that covers the second half of the list and every
# string with bit 255 set), and below p the five small-order values remain.
P25519 = 2**255 - 19
_ORDER8 = (
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
)
SMALL_ORDER_U = frozenset({0, 1, *_ORDER8, P25519 - 1})


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


def small_order(s: str) -> bool:
    """True for a key WireGuard must never get as a peer: all-zero, a small-order point
    or a non-canonical encoding (u >= p) of anything."""
    u = int.from_bytes(base64.b64decode(s), "little")
    return u >= P25519 or u in SMALL_ORDER_U


def json_depth_ok(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Nesting of ``[``/``{`` outside strings stays within ``limit`` (a linear scan)."""
    depth, in_str, esc = 0, False, False
    for b in body:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:  # backslash
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


def parse_enroll_body(body: bytes, hub_pubkey: str = "") -> dict[str, str]:
    if not json_depth_ok(body):
        raise HttpError(400, f"malformed JSON: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise HttpError(400, f"malformed JSON: {type(exc).__name__}") from exc
    if not isinstance(data, dict):
        raise HttpError(400, "body must be a JSON object")
    problems = []
    for key, rx in (("site", SITE_RE), ("node_id", NODE_ID_RE)):
        v = data.get(key)
        if not isinstance(v, str) or not rx.match(v):
            problems.append(f"{key}: missing or invalid")
    pub = data.get("wg_pubkey")
    if not valid_pubkey(pub):
        problems.append("wg_pubkey: not a WireGuard public key")
    elif small_order(str(pub)):
        problems.append("wg_pubkey: a small-order or non-canonical Curve25519 point")
    elif hub_pubkey and pub == hub_pubkey:
        problems.append("wg_pubkey: this is the hub's own key")
    for k, rx in (
        ("hostname", HOST_RE),
        ("fingerprint", TEXT_RE),
        ("image_version", TEXT_RE),
        ("node_secret", NODE_SECRET_RE),
    ):
        v = data.get(k, "")
        if v and (not isinstance(v, str) or not rx.match(v)):
            problems.append(f"{k}: invalid")
    if problems:
        raise HttpError(400, "; ".join(sorted(problems)))
    out = {k: str(data.get(k) or "") for k in (*FIELDS, "node_secret")}
    return out
