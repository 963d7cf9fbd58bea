"""The node agent's pin, enrollment checks and join-material fetch, word for word (issue 18,
written against the mutation survivors of ``builder/node/agent.py``).

Expected values come from outside the agent: the CA pin from the ``cryptography`` package's
own DER encoding and hashlib, the enrollment rules from builder/INTERFACES.md's answer
(overlay address inside the overlay network, a 44-character WireGuard key, host:port
endpoints, MTU at least 1280 = the IPv6 minimum WireGuard needs, RFC 8200 section 5).
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from test_agent import FakeSystem, agent, enrollment, make_cfg

from builder.hub.pki import make_ca_and_server


@pytest.fixture
def ca(tmp_path):
    p = tmp_path / "ca.pem"
    p.write_bytes(make_ca_and_server(["hub.example"])[0])
    return p


def make_agent(cfg, http=None, rand=1.0):
    sleeps: list[float] = []
    a = agent.Agent(
        cfg,
        FakeSystem(),
        http,
        clock=lambda: 1_800_000_000.0,
        sleep=sleeps.append,
        rand=lambda: rand,
    )
    return a, sleeps


def test_ca_pin_is_the_sha256_of_the_certificate_der(tmp_path, ca):
    der = x509.load_pem_x509_certificate(ca.read_bytes()).public_bytes(Encoding.DER)
    assert agent.ca_pin_of(str(ca)) == "sha256:" + hashlib.sha256(der).hexdigest()


def test_check_ca_pins_reads_and_builds_the_client(tmp_path, ca, capsys):
    der = x509.load_pem_x509_certificate(ca.read_bytes()).public_bytes(Encoding.DER)
    pin = "sha256:" + hashlib.sha256(der).hexdigest()
    a, _ = make_agent(make_cfg(tmp_path, ca, ca_pin=pin, http_timeout=7))
    a.check_ca()
    assert isinstance(a.http, agent.Http) and a.http.timeout == 7
    # the hub CA is the client's only trust anchor
    assert a.http.ctx.get_ca_certs(binary_form=True) == [der]
    assert capsys.readouterr().err.splitlines() == [
        f"nodeforge-enroll: step=ca pin={pin[:19]}… hub CA matches the pin"
    ]
    # an injected client is kept
    mine = object()
    b, _ = make_agent(make_cfg(tmp_path, ca, ca_pin=pin), http=mine)
    b.check_ca()
    assert b.http is mine
    # no pin configured: any readable CA is taken
    c, _ = make_agent(make_cfg(tmp_path, ca, ca_pin=""))
    c.check_ca()
    # another CA
    other_pem = make_ca_and_server(["hub.example"])[0]
    other = tmp_path / "other.pem"
    other.write_bytes(other_pem)
    d, _ = make_agent(make_cfg(tmp_path, other, ca_pin=pin))
    with pytest.raises(agent.Stop) as e:
        d.check_ca()
    assert str(e.value) == f"{other}: CA does not match ca_pin {pin}"
    # unreadable, not PEM
    missing = tmp_path / "missing.pem"
    cfg = make_cfg(tmp_path, ca, ca_pin=pin)
    cfg.ca_file = str(missing)
    with pytest.raises(agent.Stop) as e:
        make_agent(cfg)[0].check_ca()
    assert str(e.value).startswith(f"{missing}: cannot read the hub CA: ")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    cfg.ca_file = str(bad)
    with pytest.raises(agent.Stop) as e:
        make_agent(cfg)[0].check_ca()
    assert str(e.value).startswith(f"{bad}: cannot read the hub CA: ")


@pytest.mark.parametrize(
    "value,expected",
    [
        ("7", 7.0),
        (" 12 ", 12.0),
        ("3600", 3600.0),
        ("3601", 3600.0),
        ("99999999", 3600.0),
        ("0", 0.0),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),  # the HTTP-date form: not honoured
    ],
)
def test_retry_after_header(value, expected):
    assert agent.Agent._retry_after({"retry-after": value}) == expected


def test_retry_after_missing():
    assert agent.Agent._retry_after({}) is None


def ok_enrollment(**over):
    d = enrollment()
    d.update(over)
    return d


def hub(**over):
    h = {"pubkey": "H" * 43 + "=", "endpoint": "hub.example:51820", "overlay_ip": "10.100.0.1"}
    h.update(over)
    return h


@pytest.mark.parametrize(
    "d",
    [
        ok_enrollment(),
        ok_enrollment(mtu=1280),
        ok_enrollment(mtu="1420"),
        ok_enrollment(address="10.100.0.1"),
        ok_enrollment(address="10.100.255.254"),
        ok_enrollment(other_hubs=[hub(overlay_ip="10.100.0.3")]),
        ok_enrollment(other_hubs=[]),
    ],
)
def test_a_consistent_enrollment_passes(tmp_path, ca, d):
    a, _ = make_agent(make_cfg(tmp_path, ca))
    assert a.check_enrollment(d) is None


@pytest.mark.parametrize(
    "d",
    [
        ok_enrollment(address="10.101.0.7"),  # outside the overlay
        ok_enrollment(address="10.100.0.0"),  # the network address
        ok_enrollment(address="10.100.255.255"),  # the broadcast address
        ok_enrollment(hub=hub(pubkey="H" * 42 + "=")),
        ok_enrollment(hub=hub(pubkey="H" * 44 + "=")),
        ok_enrollment(hub=hub(endpoint="hub.example")),
        ok_enrollment(mtu=1279),
        ok_enrollment(node_secret=""),
        ok_enrollment(join_url=""),
        ok_enrollment(other_hubs=[hub(pubkey="short")]),
        ok_enrollment(other_hubs=[hub(endpoint="10.0.0.9")]),
        ok_enrollment(other_hubs=[hub(overlay_ip="10.101.0.3")]),
        ok_enrollment(other_hubs=[hub(), hub(overlay_ip="10.99.0.1")]),
    ],
)
def test_an_inconsistent_enrollment_is_a_retry(tmp_path, ca, d):
    a, _ = make_agent(make_cfg(tmp_path, ca))
    with pytest.raises(agent.Retry) as e:
        a.check_enrollment(d)
    assert str(e.value) == "hub sent an inconsistent enrollment"


@pytest.mark.parametrize(
    "d,why",
    [
        ({k: v for k, v in enrollment().items() if k != "overlay_cidr"}, "'overlay_cidr'"),
        ({k: v for k, v in enrollment().items() if k != "node_secret"}, None),
        (ok_enrollment(address="ten"), None),
        (ok_enrollment(mtu="big"), None),
        (ok_enrollment(hub={"pubkey": "H" * 43 + "="}), "'endpoint'"),
        (ok_enrollment(other_hubs=[{"pubkey": "H" * 43 + "=", "endpoint": "h:1"}]), None),
    ],
)
def test_an_incomplete_enrollment_is_a_retry(tmp_path, ca, d, why):
    a, _ = make_agent(make_cfg(tmp_path, ca))
    with pytest.raises(agent.Retry) as e:
        a.check_enrollment(d)
    msg = str(e.value)
    if "node_secret" not in d:  # a missing secret is a falsy value, not a KeyError
        assert msg == "hub sent an inconsistent enrollment"
    else:
        assert msg.startswith("hub sent an incomplete enrollment: ")
        if why:
            assert msg == f"hub sent an incomplete enrollment: {why}"


class JoinHttp:
    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []

    def request(self, method, url, bearer, body=None):
        self.requests.append((method, url, bearer, body))
        ans = self.answers.pop(0)
        if isinstance(ans, Exception):
            raise ans
        return ans


MATERIAL = {"node_ip": "10.100.0.7", "token": "abcdef.0123456789abcdef"}


def test_fetch_join_asks_with_the_node_secret_and_checks_the_address(tmp_path, ca):
    http = JoinHttp([(200, {}, dict(MATERIAL))])
    a, sleeps = make_agent(make_cfg(tmp_path, ca), http)
    assert a.fetch_join(enrollment()) == MATERIAL
    assert http.requests == [("GET", "https://10.100.0.1:8443/v1/join", "nfs1.secret", None)]
    assert sleeps == []
    http = JoinHttp([(200, {}, {"node_ip": "10.100.0.9"})])
    a, _ = make_agent(make_cfg(tmp_path, ca), http)
    with pytest.raises(agent.Stop) as e:
        a.fetch_join(enrollment())
    assert str(e.value) == "join material is for 10.100.0.9, not 10.100.0.7"


@pytest.mark.parametrize("status", [401, 403])
def test_fetch_join_refused_stops(tmp_path, ca, status):
    http = JoinHttp([(status, {}, {"error": "bad node secret"})])
    a, sleeps = make_agent(make_cfg(tmp_path, ca), http)
    with pytest.raises(agent.Stop) as e:
        a.fetch_join(enrollment())
    assert str(e.value) == f"hub refused join material: HTTP {status}: bad node secret"
    assert sleeps == []


def test_fetch_join_waits_as_told_then_backs_off(tmp_path, ca, capsys):
    answers = [
        (503, {"retry-after": "30"}, {"error": "join material unavailable"}),
        (503, {"retry-after": "0"}, {"error": "busy"}),  # 0: back off instead
        OSError("connection refused"),
        (500, {}, {}),
        (200, {}, dict(MATERIAL)),
    ]
    a, sleeps = make_agent(make_cfg(tmp_path, ca, retry_max_seconds=60), JoinHttp(answers))
    assert a.fetch_join(enrollment()) == MATERIAL
    # backoff(attempt) with rand() = 1: 2 * 2**attempt, attempts 1, 2, 3
    assert sleeps == [30.0, 4.0, 8.0, 16.0]
    assert capsys.readouterr().err.splitlines() == [
        "nodeforge-enroll: step=join waiting 30.0s: join material: HTTP 503:"
        " join material unavailable",
        "nodeforge-enroll: step=join waiting 4.0s: join material: HTTP 503: busy",
        "nodeforge-enroll: step=join waiting 8.0s: join material: HTTP error: connection refused",
        "nodeforge-enroll: step=join waiting 16.0s: join material: HTTP 500: None",
    ]


def test_fetch_join_gives_up_after_ten_tries(tmp_path, ca):
    http = JoinHttp([(502, {"retry-after": "1"}, {})] * 10)
    a, sleeps = make_agent(make_cfg(tmp_path, ca), http)
    with pytest.raises(agent.Retry) as e:
        a.fetch_join(enrollment())
    assert str(e.value) == "could not fetch join material"
    assert len(http.requests) == 10 and sleeps == [1.0] * 10


def test_complete_reports_once_with_the_node_secret(tmp_path, ca, capsys):
    http = JoinHttp([(200, {}, {"status": "joined"})])
    a, sleeps = make_agent(make_cfg(tmp_path, ca), http)
    a.complete(enrollment())
    assert http.requests == [("POST", "https://10.100.0.1:8443/v1/complete", "nfs1.secret", {})]
    assert sleeps == []
    assert capsys.readouterr().err.splitlines() == [
        "nodeforge-enroll: step=complete hub recorded the join"
    ]


def test_complete_tries_five_times_then_gives_up_quietly(tmp_path, ca, capsys):
    answers = [OSError("connection reset"), (503, {}, {"error": "busy"})] + [(500, {}, {})] * 3
    http = JoinHttp(answers)
    a, sleeps = make_agent(make_cfg(tmp_path, ca, retry_max_seconds=60), http)
    a.complete(enrollment())  # no exception: the bootstrap token expires on its own
    assert len(http.requests) == 5
    assert sleeps == [2.0, 4.0, 8.0, 16.0, 32.0]  # backoff(0..4) with rand() = 1
    assert capsys.readouterr().err.splitlines() == [
        "nodeforge-enroll: step=complete waiting 2.0s: HTTP 0: connection reset",
        "nodeforge-enroll: step=complete waiting 4.0s: HTTP 503: busy",
        "nodeforge-enroll: step=complete waiting 8.0s: HTTP 500: None",
        "nodeforge-enroll: step=complete waiting 16.0s: HTTP 500: None",
        "nodeforge-enroll: step=complete waiting 32.0s: HTTP 500: None",
        "nodeforge-enroll: step=complete could not report completion;"
        " the bootstrap token expires on its own",
    ]


def test_a_token_that_cannot_be_removed_is_said(tmp_path, ca, capsys, monkeypatch):
    a, _ = make_agent(make_cfg(tmp_path, ca))
    token = tmp_path / "token"

    def refuse(self, *args, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(token), "unlink", refuse)
    a.forget_token()
    assert capsys.readouterr().err.splitlines() == [
        f"nodeforge-enroll: step=enroll could not remove the used token {token}: Permission denied"
    ]
