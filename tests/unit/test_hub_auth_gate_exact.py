"""The failed-authentication gate at its exact edges (issue 18, round 5: ``Hub.auth_gate``
mutants 7, 8 and 22 of round 4). The hub's budget gets an injected clock (as
``RateLimiter`` allows) so the bucket levels are exact; expected levels and waits are the
token-bucket arithmetic done by hand in the comments."""

from __future__ import annotations

from test_hub_api_enroll_exact import enroll

from builder.hub import tokens as tok

MALFORMED = "Bearer nf1.zz"
UNKNOWN = "Bearer nf1.0123456789abcdef." + "A" * 43  # well-formed, never created


def test_the_gate_opens_at_exactly_one_token_and_names_the_dash_buckets_wait(tmp_path):
    from test_hub_routes import make_hub

    hub = make_hub(tmp_path)
    now = [0.0]
    hub.auth_budget = tok.RateLimiter(0.1, 2, clock=lambda: now[0])
    try:
        # t=0: an unknown token fails: site 2 -> 1
        assert enroll(hub, UNKNOWN)[0] == 401
        # t=5: site 1 + 0.5 = 1.5, the gate is open; a malformed token fails:
        # site 1.5 -> 0.5, id:- 2 -> 1
        now[0] = 5.0
        assert enroll(hub, MALFORMED)[:2] == (401, {"error": "malformed enrollment token"})
        # t=10: site 0.5 + 0.5 = exactly 1.0: still open (>= 1); it fails again:
        # site 1.0 -> 0.0, id:- 1 + 0.5 = 1.5 -> 0.5
        now[0] = 10.0
        assert hub.auth_budget.peek("site") == 1.0
        assert enroll(hub, MALFORMED)[:2] == (401, {"error": "malformed enrollment token"})
        # the site budget is spent: 429 without evaluation, Retry-After the id:- bucket's
        # own wait (1 - 0.5) / 0.1 = 5 s, not the site's (1 - 0) / 0.1 = 10 s
        assert enroll(hub, MALFORMED) == (
            429,
            {"error": "too many failed authentications on this hub: try again later"},
            5,
        )
        # a token that cannot succeed and has no failing bucket of its own: the site's wait
        assert enroll(hub, "Bearer nf1.fedcba9876543210." + "B" * 43)[2] == 10
        assert hub.metrics.auth_failures == 3 and hub.metrics.auth_throttled == 2
    finally:
        hub.stop()
