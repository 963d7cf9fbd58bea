"""The agent's retry paths that test_agent.py's fakes never reached (issue 18 finding 6).

Each test is named after a line of builder/node/agent.py and was checked by deleting that line
(or the cap) in a scratch copy: the test went red, the product green elsewhere.
- an interface already up from an earlier attempt is brought down before ``wg-quick up``;
- Retry-After is honoured but capped at an hour;
- ``wg-quick up`` failing is a retry (exit 75), nothing after it runs;
- ``/v1/join``: 5xx waits (Retry-After, else backoff) and tries again, 401/403 stop for good;
- ``/v1/complete``: retried with backoff, five attempts, then the node still counts as joined.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_agent import FakeHttp, FakeSystem, agent, enrollment, make_cfg, run_agent

from builder.hub.pki import make_ca_and_server


@pytest.fixture
def ca(tmp_path):
    ca_pem, _, _, _ = make_ca_and_server(["hub.example"])
    p = tmp_path / "ca.pem"
    p.write_bytes(ca_pem)
    return p


class UpSystem(FakeSystem):
    """An interface left up by an earlier run (``wg show IFACE public-key`` answers), and a
    ``wg-quick up`` that can fail."""

    def __init__(self, existing: bool = False, up_fails: int = 0, **kw) -> None:
        super().__init__(**kw)
        self.existing = existing
        self.up_fails = up_fails

    def run(self, argv, timeout=600, env=None):
        if argv[0] == "wg" and argv[3:] == ["public-key"] and self.existing:
            self.calls.append(list(argv))
            return 0, "R" * 43 + "=\n"
        if argv[0] == "wg-quick" and argv[1] == "up" and self.up_fails:
            self.calls.append(list(argv))
            self.up_fails -= 1
            return 1, "RTNETLINK answers: Address already in use\n"
        return super().run(argv, timeout, env)


class ScriptedHttp(FakeHttp):
    """FakeHttp whose /v1/join and /v1/complete answers are scripted (then the real answer)."""

    def __init__(self, enroll_answers, join=(), complete=()) -> None:
        super().__init__(enroll_answers)
        self.join_script = list(join)
        self.complete_script = list(complete)

    def request(self, method, url, bearer, body=None):
        script = None
        if url.endswith("/v1/join"):
            script = self.join_script
        elif url.endswith("/v1/complete"):
            script = self.complete_script
        if script:
            self.requests.append((method, url, bearer, body))
            ans = script.pop(0)
            if isinstance(ans, Exception):
                raise ans
            return ans
        return super().request(method, url, bearer, body)


def urls(http, suffix):
    return [r for r in http.requests if r[1].endswith(suffix)]


def test_an_interface_already_up_is_brought_down_first(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca)
    sysm = UpSystem(existing=True)
    rc, _ = run_agent(cfg, sysm, FakeHttp([(200, {}, enrollment())]))
    assert rc == 0
    conf = str(Path(cfg.wireguard_dir) / "wg9.conf")
    quick = [c for c in sysm.calls if c[0] == "wg-quick"]
    assert quick == [["wg-quick", "down", conf], ["wg-quick", "up", conf]]
    # and a fresh machine (no interface) never runs `down`
    (tmp_path / "fresh").mkdir()
    cfg = make_cfg(tmp_path / "fresh", ca)
    sysm = UpSystem(existing=False)
    assert run_agent(cfg, sysm, FakeHttp([(200, {}, enrollment())]))[0] == 0
    assert [c[1] for c in sysm.calls if c[0] == "wg-quick"] == ["up"]


def test_retry_after_is_capped_at_an_hour(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca)
    http = FakeHttp(
        [
            (429, {"retry-after": "86400"}, {"error": "slow down"}),
            (503, {"retry-after": "3601"}, {"error": "busy"}),
            (503, {"retry-after": "3599"}, {"error": "busy"}),
            (200, {}, enrollment()),
        ]
    )
    rc, sleeps = run_agent(cfg, FakeSystem(), http)
    assert rc == 0 and sleeps[:3] == [3600.0, 3600.0, 3599.0]


def test_wg_quick_up_failing_is_a_retry_and_nothing_runs_after_it(tmp_path, ca, capsys):
    cfg = make_cfg(tmp_path, ca)
    sysm = UpSystem(up_fails=1)
    http = FakeHttp([(200, {}, enrollment())])
    rc, _ = run_agent(cfg, sysm, http)
    assert rc == agent.EXIT_RETRY == 75
    assert sysm.hs_polls == 0 and not sysm.join_configs
    assert not urls(http, "/v1/join") and not (tmp_path / "state" / "joined").exists()
    err = capsys.readouterr().err
    assert "wg-quick up wg9 failed: RTNETLINK answers: Address already in use" in err
    # systemd starts the unit again: the saved enrollment is reused, the tunnel comes up
    rc, _ = run_agent(cfg, FakeSystem(), FakeHttp([]))
    assert rc == 0 and (tmp_path / "state" / "joined").exists()


def test_join_material_5xx_waits_and_retries(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca, retry_max_seconds=60)
    http = ScriptedHttp(
        [(200, {}, enrollment())],
        join=[
            (503, {"retry-after": "30"}, {"error": "join material unavailable"}),
            (500, {}, {"error": "internal error"}),
            OSError("connection reset"),
        ],
    )
    rc, sleeps = run_agent(cfg, FakeSystem(), http, rand=1.0)
    assert rc == 0
    assert len(urls(http, "/v1/join")) == 4
    # Retry-After 30, then backoff(1) = 2*2**1 = 4, backoff(2) = 2*2**2 = 8 (rand 1.0)
    assert sleeps == [30.0, 4.0, 8.0]


def test_join_material_always_failing_is_a_retry_after_ten_attempts(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca, retry_max_seconds=5)
    http = ScriptedHttp([(200, {}, enrollment())], join=[(502, {}, {"error": "bad gw"})] * 10)
    rc, sleeps = run_agent(cfg, FakeSystem(), http, rand=1.0)
    assert rc == agent.EXIT_RETRY
    assert len(urls(http, "/v1/join")) == 10
    assert sleeps == [2.0, 4.0] + [5.0] * 8  # backoff(0..9), capped at retry_max_seconds


@pytest.mark.parametrize("status", [401, 403])
def test_join_material_refused_stops_for_good(tmp_path, ca, status):
    cfg = make_cfg(tmp_path, ca)
    sysm = FakeSystem()
    http = ScriptedHttp([(200, {}, enrollment())], join=[(status, {}, {"error": "no"})])
    rc, sleeps = run_agent(cfg, sysm, http)
    assert rc == agent.EXIT_STOP == 78
    assert len(urls(http, "/v1/join")) == 1 and sleeps == []
    assert not sysm.join_configs and not (tmp_path / "state" / "joined").exists()


def test_complete_is_retried_with_backoff(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca, retry_max_seconds=60)
    http = ScriptedHttp(
        [(200, {}, enrollment())],
        complete=[(503, {}, {"error": "busy"}), OSError("refused")],
    )
    rc, sleeps = run_agent(cfg, FakeSystem(), http, rand=1.0)
    assert rc == 0 and (tmp_path / "state" / "joined").exists()
    assert len(urls(http, "/v1/complete")) == 3
    assert sleeps == [2.0, 4.0]  # backoff(0), backoff(1)


def test_complete_failing_five_times_still_counts_as_joined(tmp_path, ca, capsys):
    cfg = make_cfg(tmp_path, ca, retry_max_seconds=60)
    http = ScriptedHttp([(200, {}, enrollment())], complete=[(500, {}, {"error": "x"})] * 5)
    rc, sleeps = run_agent(cfg, FakeSystem(), http, rand=1.0)
    assert rc == 0 and (tmp_path / "state" / "joined").exists()
    assert len(urls(http, "/v1/complete")) == 5
    assert sleeps == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert "could not report completion" in capsys.readouterr().err
