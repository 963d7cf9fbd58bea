"""Tokens, node secrets, durations, rate limits and request validation."""

from __future__ import annotations

import base64

import pytest

from builder.errors import UsageError
from builder.hub import tokens as tok
from builder.hub.metrics import Metrics
from builder.hub.wire import HttpError, parse_enroll_body, valid_pubkey


def test_token_round_trip_and_hash():
    t, tid, h = tok.new_token()
    assert tok.parse_token(t) == (tid, t.split(".")[2])
    assert tok.secret_matches(t.split(".")[2], h)
    assert not tok.secret_matches("x" * 43, h)
    assert not tok.secret_matches(t.split(".")[2], None)
    for bad in ("", "nf1.xyz.abc", t + "x", t.replace("nf1", "nf2"), f"{t}\nX"):
        assert tok.parse_token(bad) is None


def test_node_secret_changes_with_key_and_generation():
    k = b"s" * 32
    a = tok.node_secret(k, "n", "P", 1)
    assert a == tok.node_secret(k, "n", "P", 1)
    assert a != tok.node_secret(k, "n", "P", 2) != tok.node_secret(k, "n", "Q", 1)
    assert tok.check_node_secret(k, "n", "P", 1, a)
    assert not tok.check_node_secret(k, "n", "P", 2, a)


@pytest.mark.parametrize(
    ("text", "secs"), [("90s", 90), ("15m", 900), ("72h", 259200), ("7d", 604800)]
)
def test_durations(text, secs):
    assert tok.parse_duration(text) == secs


@pytest.mark.parametrize("text", ["", "0h", "10", "h", "-1h", "3y"])
def test_bad_durations(text):
    with pytest.raises(UsageError):
        tok.parse_duration(text)


def test_rate_limiter_bucket_with_injected_clock():
    now = [0.0]
    rl = tok.RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert [rl.check("a") for _ in range(3)] == [0, 0, 0]
    wait = rl.check("a")
    assert wait == pytest.approx(0.5)
    assert rl.check("b") == 0  # other keys are independent
    now[0] += 0.5
    assert rl.check("a") == 0
    assert tok.RateLimiter(rate=0, burst=1).check("x") == 0  # 0 = unlimited


def test_pubkey_validation_is_canonical():
    good = base64.b64encode(bytes(range(32))).decode()
    assert valid_pubkey(good)
    assert not valid_pubkey("x" * 43 + "=")  # decodes, but padding bits set: wg rejects it
    assert not valid_pubkey(good[:-2] + "==")
    assert not valid_pubkey(None) and not valid_pubkey("a" * 44)


def test_enroll_body_validation():
    good = {"site": "lab", "node_id": "n-1", "wg_pubkey": base64.b64encode(b"k" * 32).decode()}
    assert parse_enroll_body(repr(good).replace("'", '"').encode())["hostname"] == ""
    for body in (b"{", b"[]", b'{"site": "LAB!"}', b"\xff"):
        with pytest.raises(HttpError) as e:
            parse_enroll_body(body)
        assert e.value.status == 400


def test_metrics_text():
    m = Metrics()
    m.request("/v1/enroll", 200)
    m.enrolled("ok", 0.02)
    text = m.render({"active": 3})
    assert 'nodeforge_hub_requests_total{path="/v1/enroll",code="200"} 1' in text
    assert 'nodeforge_hub_enroll_seconds_bucket{le="0.025"} 1' in text
    assert 'nodeforge_hub_nodes{state="active"} 3' in text
