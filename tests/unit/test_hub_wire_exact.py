"""The hub's network input checks pinned word for word (issue 18, round 5: the mutants of
``builder/hub/wire.py``). Expected values come from outside the code: the Curve25519 list
at https://cr.yp.to/ecdh.html (D. J. Bernstein, read 2026-11-30), OpenSSL through the
``cryptography`` package (an X25519 exchange with a small-order point is refused), the
JSON nesting counted by hand, and the refusal texts of the enrollment API as literals."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from builder.hub.wire import (
    HttpError,
    json_depth_ok,
    parse_enroll_body,
    small_order,
    valid_pubkey,
)

P = 2**255 - 19
U8A = 325606250916557431795983626356110631294008115727848805560023387167927233504
U8B = 39382357235489614581723060781553021112529911719440698176882885853963445705823
GOOD = "pNmPrevcsL89VIQH12HanG/H0X/MykOE71H8cpAD8HY="  # `wg genkey | wg pubkey`, 2026-11-30
SECRET = "nfs1." + "A" * 43


def b64(u: int) -> str:
    return base64.b64encode(u.to_bytes(32, "little")).decode()


def body(**fields: object) -> bytes:
    base: dict[str, object] = {"site": "lab", "node_id": "n-1", "wg_pubkey": GOOD}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def refusal(raw: bytes, hub_pubkey: str = "") -> tuple[int, str, object]:
    with pytest.raises(HttpError) as e:
        parse_enroll_body(raw, hub_pubkey)
    return e.value.status, e.value.message, e.value.retry_after


def test_http_error_carries_status_message_and_wait() -> None:
    e = HttpError(429, "slow down", 7.5)
    assert (e.status, e.message, e.retry_after, str(e)) == (429, "slow down", 7.5, "slow down")
    assert HttpError(400, "bad").retry_after is None


@pytest.mark.parametrize("n", [43, 45])
def test_a_key_of_the_wrong_length_is_not_a_key(n: int) -> None:
    assert len(GOOD) == 44 and valid_pubkey(GOOD)
    assert not valid_pubkey((GOOD * 2)[:n])
    assert not valid_pubkey(b"\0" * 44)  # bytes, not text
    assert not valid_pubkey("!" * 44)  # not base64 at all
    assert not valid_pubkey(GOOD[:20] + "*" + GOOD[21:])
    assert not valid_pubkey(base64.b64encode(b"k" * 31).decode() + "====")  # 31 bytes


@pytest.mark.parametrize("u", [0, 1, U8A, U8B, P - 1])
def test_small_order_points_below_p(u: int) -> None:
    # independent: OpenSSL refuses the all-zero shared secret such a point gives
    me = x25519.X25519PrivateKey.generate()
    with pytest.raises(ValueError):
        me.exchange(x25519.X25519PublicKey.from_public_bytes(u.to_bytes(32, "little")))
    assert small_order(b64(u))


@pytest.mark.parametrize("u", [P, P + 1, 2**255, 2**256 - 1])
def test_non_canonical_encodings_are_refused(u: int) -> None:
    assert small_order(b64(u))


@pytest.mark.parametrize("u", [2, 9, P - 2])
def test_ordinary_points_pass(u: int) -> None:
    me = x25519.X25519PrivateKey.generate()
    shared = me.exchange(x25519.X25519PublicKey.from_public_bytes(u.to_bytes(32, "little")))
    assert shared != bytes(32)
    assert not small_order(b64(u))


def test_nesting_limit_is_eight_counted_outside_strings() -> None:
    assert json_depth_ok(b"[" * 8 + b"]" * 8)
    assert not json_depth_ok(b"[" * 9 + b"]" * 9)
    assert not json_depth_ok(b"{" * 9)
    assert json_depth_ok(b"{" * 8)
    # closing brackets give the depth back: many shallow groups in a row are fine
    assert json_depth_ok((b"[" * 8 + b"]" * 8) * 3)
    assert json_depth_ok((b"{" * 8 + b"}" * 8) * 3)
    assert not json_depth_ok(b"[" * 8 + b"]" + b"{" * 2)
    # brackets inside strings do not count, escaped quotes do not end the string
    assert json_depth_ok(b'["' + b"[" * 20 + b'"]')
    assert json_depth_ok(b'["\\"' + b"[" * 20 + b'"]')
    assert json_depth_ok(b'{"a":"\\\\"}' + b"[" * 8)
    assert not json_depth_ok(b'["\\\\"' + b"[" * 8 + b'"]')
    assert json_depth_ok(b'["#"' + b"[" * 7 + b"]" * 8)
    assert not json_depth_ok(b'["]"' + b"[" * 8)
    assert not json_depth_ok(b'["}"' + b"{" * 8)
    assert json_depth_ok(b"[" * 3 + b"]" * 3, limit=3)
    assert not json_depth_ok(b"[" * 4, limit=3)


def test_refusals_word_for_word() -> None:
    assert refusal(b"[" * 9 + b"]" * 9) == (
        400,
        "malformed JSON: nested deeper than 8 levels",
        None,
    )
    assert refusal(b"{")[:2] == (400, "malformed JSON: JSONDecodeError")
    assert refusal(b"\xff")[:2] == (400, "malformed JSON: UnicodeDecodeError")
    assert refusal(b"[]")[:2] == (400, "body must be a JSON object")
    assert refusal(b"{}")[:2] == (
        400,
        "node_id: missing or invalid; site: missing or invalid; "
        "wg_pubkey: not a WireGuard public key",
    )
    assert refusal(body(site="LAB"))[1] == "site: missing or invalid"
    assert refusal(body(site=5))[1] == "site: missing or invalid"
    assert refusal(body(node_id="-x"))[1] == "node_id: missing or invalid"
    assert refusal(body(node_id=7))[1] == "node_id: missing or invalid"
    assert refusal(body(wg_pubkey=b64(0)))[1] == (
        "wg_pubkey: a small-order or non-canonical Curve25519 point"
    )
    assert refusal(body(), hub_pubkey=GOOD)[1] == "wg_pubkey: this is the hub's own key"
    assert refusal(body(hostname="-h", fingerprint="a b", image_version=3, node_secret="nfs1.x"))[
        1
    ] == ("fingerprint: invalid; hostname: invalid; image_version: invalid; node_secret: invalid")


def test_accepted_body_gives_every_field_as_text() -> None:
    assert parse_enroll_body(body()) == {
        "site": "lab",
        "node_id": "n-1",
        "wg_pubkey": GOOD,
        "hostname": "",
        "fingerprint": "",
        "image_version": "",
        "node_secret": "",
    }
    full = body(
        hostname="node-1.lab",
        fingerprint="dmi:abc",
        image_version="2026.11",
        node_secret=SECRET,
        extra="ignored",
    )
    assert parse_enroll_body(full, hub_pubkey=b64(9)) == {
        "site": "lab",
        "node_id": "n-1",
        "wg_pubkey": GOOD,
        "hostname": "node-1.lab",
        "fingerprint": "dmi:abc",
        "image_version": "2026.11",
        "node_secret": SECRET,
    }
    # empty optional fields are the same as missing ones
    assert parse_enroll_body(body(hostname="", node_secret=""))["hostname"] == ""


def test_field_patterns_at_their_limits() -> None:
    assert parse_enroll_body(body(site="a" * 63))["site"] == "a" * 63
    assert refusal(body(site="a" * 64))[1] == "site: missing or invalid"
    assert parse_enroll_body(body(node_id="N" * 128))["node_id"] == "N" * 128
    assert refusal(body(node_id="N" * 129))[1] == "node_id: missing or invalid"
    assert parse_enroll_body(body(hostname="h" * 253))["hostname"] == "h" * 253
    assert refusal(body(hostname="h" * 254))[1] == "hostname: invalid"
    assert parse_enroll_body(body(fingerprint="~" * 128))["fingerprint"] == "~" * 128
    assert refusal(body(fingerprint="~" * 129))[1] == "fingerprint: invalid"
    assert refusal(body(node_secret=SECRET + "A"))[1] == "node_secret: invalid"
