"""Hub tokens, node secrets and rate limits pinned to exact values (issue 18: the mutants
test_hub_tokens.py let live). Expected values come from outside the code: openssl for the
HMAC, hand-computed token-bucket arithmetic."""

from __future__ import annotations

import hashlib
import re

import pytest

from builder.hub import tokens as tok


def test_node_secret_is_the_hmac_openssl_computes() -> None:
    # printf 'node-1\npubkey=\n3' | openssl dgst -sha256 -hmac hub-key -binary | base64
    #   | tr '+/' '-_' | tr -d '='   (OpenSSL 3, 2026-11-30)
    expected = "nfs1.3o7Q15na4E9SxDhmW-vyPr-y-nE1fFaREbtdymjlbWE"
    assert tok.node_secret(b"hub-key", "node-1", "pubkey=", 3) == expected
    assert tok.check_node_secret(b"hub-key", "node-1", "pubkey=", 3, expected)


def test_new_token_shape_and_stored_hash() -> None:
    token, tid, stored = tok.new_token()
    m = re.fullmatch(r"nf1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})", token)
    assert m and m.group(1) == tid
    assert stored == hashlib.sha256(m.group(2).encode()).hexdigest()
    assert stored != hashlib.sha256(token.encode()).hexdigest()


def test_two_weeks() -> None:
    assert tok.parse_duration("2w") == 14 * 24 * 3600
    assert tok.parse_duration(" 1s ") == 1


def test_zero_rate_is_unlimited_every_time() -> None:
    rl = tok.RateLimiter(rate=0, burst=1)
    assert [rl.check("x") for _ in range(5)] == [0.0] * 5


def test_slow_rate_below_one_per_second_still_limits() -> None:
    now = [1000.0]
    rl = tok.RateLimiter(rate=0.5, burst=1, clock=lambda: now[0])
    assert rl.check("a") == 0.0
    assert rl.check("a") == pytest.approx(2.0)  # 1 token at 0.5/s


def test_refill_is_by_elapsed_time_and_wait_by_missing_fraction() -> None:
    now = [1000.0]  # a clock far from 0: refill uses now - last, not now + last
    rl = tok.RateLimiter(rate=2, burst=1, clock=lambda: now[0])
    assert rl.check("a") == 0.0  # bucket now empty
    now[0] = 1000.25  # 0.5 token back
    assert rl.check("a") == pytest.approx(0.25)  # the missing 0.5 token at 2/s
    now[0] = 1000.5  # 0.5 + 0.5 = 1 token
    assert rl.check("a") == 0.0


def test_full_buckets_are_pruned_past_max_keys() -> None:
    now = [10.0]
    rl = tok.RateLimiter(rate=2, burst=2, clock=lambda: now[0], max_keys=1)
    assert rl.check("a") == 0.0  # a: 1 token left at t=10
    now[0] = 10.5  # a refilled to exactly 2 = burst: full, forgettable
    assert rl.check("b") == 0.0  # 2 keys > max_keys 1: prune; b has 1 token, kept
    assert set(rl._buckets) == {"b"}


def test_no_prune_at_max_keys() -> None:
    now = [0.0]
    rl = tok.RateLimiter(rate=1, burst=1, clock=lambda: now[0], max_keys=2)
    rl.check("a")
    now[0] = 5.0  # a is full again, but 2 keys are not more than max_keys
    rl.check("b")
    assert set(rl._buckets) == {"a", "b"}


def test_peek_reports_the_bucket_without_taking_a_token() -> None:
    """The auth-failure budget (api.py) asks before it spends: peek must neither take a
    token nor overfill. rate 2/s, burst 3: three checks empty the bucket; 0.25 s later it
    holds 0.5 tokens (2 x 0.25), so the next request waits (1 - 0.5) / 2 = 0.25 s."""
    now = [100.0]
    rl = tok.RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert rl.peek("k") == 3.0  # an unseen key has a full bucket
    assert rl.peek_wait("k") == 0.0
    for _ in range(3):
        assert rl.check("k") == 0.0
    assert rl.peek("k") == 0.0
    assert rl.peek("k") == 0.0  # peeking twice took nothing
    assert rl.peek_wait("k") == 0.5  # (1 - 0) / 2
    now[0] += 0.25
    assert rl.peek("k") == 0.5
    assert rl.peek_wait("k") == 0.25
    now[0] += 10  # refills to the burst, never beyond
    assert rl.peek("k") == 3.0
    assert rl.peek_wait("k") == 0.0
    assert rl.peek("other") == 3.0  # keys are separate


def test_peek_wait_is_zero_when_unlimited() -> None:
    rl = tok.RateLimiter(rate=0, burst=0)
    assert rl.peek_wait("k") == 0.0
