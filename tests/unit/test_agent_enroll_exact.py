"""The node agent's enrollment request, token wait and saved state, word for word (issue 18,
round 5: the survivors of ``Agent.enroll``, ``Agent.token`` and ``Agent.saved_secret``).

The hub is test_agent.py's FakeHttp, commands its FakeSystem; the expected body keys are
the hub's (builder/hub/wire.py FIELDS, checked there word for word), waits are the agent's
backoff arithmetic done by hand (rand() = 1), messages are the agent's stderr protocol.
"""

from __future__ import annotations

import json
import ssl
import stat

import pytest
from test_agent import NODE_PUB, FakeHttp, FakeSystem, agent, enrollment, make_cfg
from test_agent_exact import ca  # noqa: F401 (fixture)

PREFIX = "nodeforge-enroll:"


def make(tmp_path, ca, http=None, system=None, **over):  # noqa: F811
    cfg = make_cfg(tmp_path, ca, **over)
    sleeps: list[float] = []
    a = agent.Agent(
        cfg,
        system or FakeSystem(),
        http or FakeHttp([]),
        clock=lambda: 1_800_000_000.0,
        sleep=sleeps.append,
        rand=lambda: 1.0,
    )
    return a, sleeps


def test_enroll_posts_the_hub_fields_and_saves_the_answer(tmp_path, ca, capsys):  # noqa: F811
    http = FakeHttp([(200, {}, enrollment())])
    a, sleeps = make(
        tmp_path, ca, http, enroll_url="https://hub.example:8443/", image_version="2026.11"
    )
    got = a.enroll("x", NODE_PUB)
    [(method, url, bearer, body)] = http.requests
    assert (method, url, bearer) == ("POST", "https://hub.example:8443/v1/enroll", "nf1.token")
    assert set(body) == {"site", "node_id", "wg_pubkey", "hostname", "fingerprint",
                         "image_version"}  # fmt: skip
    assert (body["site"], body["node_id"], body["wg_pubkey"], body["image_version"]) == (
        "lab",
        "x",
        NODE_PUB,
        "2026.11",
    )
    saved = {**enrollment(), "wg_pubkey": NODE_PUB}
    assert got == saved
    f = tmp_path / "state" / "enrollment.json"
    assert f.read_text() == json.dumps(saved, indent=1)
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert sleeps == []
    token = tmp_path / "token"
    assert capsys.readouterr().err.splitlines() == [
        f"{PREFIX} step=enroll status=200 address=10.100.0.7 node_id=x enrolled",
        f"{PREFIX} step=enroll path={token} removed the used enrollment token",
    ]


def test_a_saved_enrollment_is_used_again(tmp_path, ca, capsys):  # noqa: F811
    http = FakeHttp([(200, {}, enrollment())])
    a, _ = make(tmp_path, ca, http)
    a.enroll("x", NODE_PUB)
    capsys.readouterr()
    (tmp_path / "token").write_text("nf1.token\n")
    assert a.enroll("x", NODE_PUB)["address"] == "10.100.0.7"
    assert len(http.requests) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{PREFIX} step=enroll address=10.100.0.7 using the saved enrollment",
        f"{PREFIX} step=enroll path={tmp_path / 'token'} removed the used enrollment token",
    ]


def test_transport_errors_are_said_and_retried(tmp_path, ca, capsys):  # noqa: F811
    http = FakeHttp([OSError("connection refused"), (200, {}, enrollment())])
    a, sleeps = make(tmp_path, ca, http)
    a.enroll("x", NODE_PUB)
    assert sleeps == [4.0]  # backoff(1) with rand() = 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"{PREFIX} step=enroll waiting 4.0s: HTTP error: connection refused"
    )


def test_a_rejected_hub_certificate_stops(tmp_path, ca):  # noqa: F811
    err = ssl.SSLCertVerificationError("bad")
    err.verify_message = "self-signed certificate"
    a, _ = make(tmp_path, ca, FakeHttp([err]))
    with pytest.raises(agent.Stop) as e:
        a.enroll("x", NODE_PUB)
    assert str(e.value) == "hub certificate rejected: self-signed certificate"


def test_refusal_texts_are_cut_at_200_characters(tmp_path, ca):  # noqa: F811
    a, _ = make(tmp_path, ca, FakeHttp([(400, {}, {"error": "e" * 150 + "f" * 150})]))
    with pytest.raises(agent.Stop) as e:
        a.enroll("x", NODE_PUB)
    assert str(e.value) == "hub refused enrollment: HTTP 400: " + "e" * 150 + "f" * 50
    a, _ = make(tmp_path, ca, FakeHttp([(403, {}, {})]))
    with pytest.raises(agent.Stop) as e:
        a.enroll("x", NODE_PUB)
    assert str(e.value) == "hub refused enrollment: HTTP 403: "


def test_without_a_token_the_wait_is_bounded_and_said(tmp_path, ca, capsys):  # noqa: F811
    missing = tmp_path / "missing"
    system = FakeSystem()
    a, sleeps = make(
        tmp_path,
        ca,
        system=system,
        token_file=str(missing),
        token_wait_seconds=20,
        console_file="/dev/test-console",
    )
    with pytest.raises(agent.Stop) as e:
        a.token()
    assert str(e.value) == f"{missing}: no enrollment token (missing or empty)"
    # 1 + backoff(attempt, 1.0) with rand() = 1, at most 10: 2, 3, 5, 9, 10 (29 >= 20)
    assert sleeps == [2.0, 3.0, 5.0, 9.0, 10.0]
    msg = (
        f"no enrollment token in {missing}: this node has no seed and its image no site token."
        " Attach a seed volume made by `builder seed` (label CIDATA) and reboot, or write a"
        f" token from `builder hub token create` to {missing}; waiting 20s for one"
    )
    assert system.console_lines == [("/dev/test-console", f"{PREFIX} {msg}")]
    assert capsys.readouterr().err.splitlines() == [f"{PREFIX} step=token {msg}"] + [
        f"{PREFIX} step=token waiting {s:.1f}s: waiting for {missing}" for s in sleeps
    ]


def test_the_token_wait_ends_at_exactly_its_limit(tmp_path, ca):  # noqa: F811
    a, sleeps = make(tmp_path, ca, token_file=str(tmp_path / "missing"), token_wait_seconds=2)
    with pytest.raises(agent.Stop):
        a.token()
    assert sleeps == [2.0]


def test_an_unreadable_token_stops(tmp_path, ca):  # noqa: F811
    d = tmp_path / "token-dir"
    d.mkdir()
    a, _ = make(tmp_path, ca, token_file=str(d))
    with pytest.raises(agent.Stop) as e:
        a.token()
    assert str(e.value) == f"{d}: cannot read the token (Is a directory)"


def test_no_token_but_a_node_secret_re_enrolls_at_once(tmp_path, ca, capsys):  # noqa: F811
    a, sleeps = make(tmp_path, ca, token_file=str(tmp_path / "missing"))
    assert a.token(fallback="nfs1.mine") == "nfs1.mine"
    assert sleeps == []
    assert capsys.readouterr().err.splitlines() == [
        f"{PREFIX} step=token no enrollment token: re-enrolling with the node secret"
    ]


def test_saved_secret_only_for_this_node(tmp_path, ca):  # noqa: F811
    a, _ = make(tmp_path, ca)
    assert a.saved_secret("x") == ""  # nothing saved
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    f = state / "enrollment.json"
    f.write_text(json.dumps({"node_id": "other", "node_secret": "nfs1.other"}))
    assert a.saved_secret("x") == ""
    f.write_text(json.dumps({"node_id": "x"}))
    assert a.saved_secret("x") == ""
    f.write_text(json.dumps({"node_id": "x", "node_secret": "nfs1.mine"}))
    assert a.saved_secret("x") == "nfs1.mine"
    f.write_text(json.dumps(["x"]))
    assert a.saved_secret("x") == ""


def test_pending_approval_polls_as_told_or_every_30_to_45s(tmp_path, ca, capsys):  # noqa: F811
    answers = [
        (202, {}, {"status": "pending"}),
        (202, {"retry-after": "7"}, {"status": "pending"}),
        (200, {}, enrollment()),
    ]
    a, sleeps = make(tmp_path, ca, FakeHttp(answers))
    a.enroll("x", NODE_PUB)
    assert sleeps == [45.0, 7.0]  # 30 + rand() * 15 with rand() = 1; then as told
    assert capsys.readouterr().err.splitlines()[:2] == [
        f"{PREFIX} step=enroll waiting 45.0s: pending approval on the hub (builder hub approve x)",
        f"{PREFIX} step=enroll waiting 7.0s: pending approval on the hub (builder hub approve x)",
    ]


def test_server_errors_give_up_after_enroll_attempts(tmp_path, ca, capsys):  # noqa: F811
    answers = [(500, {}, {"error": "boom"}), (502, {}, {"error": "bad gateway"})]
    a, sleeps = make(tmp_path, ca, FakeHttp(answers), enroll_attempts=2)
    with pytest.raises(agent.Retry) as e:
        a.enroll("x", NODE_PUB)
    assert str(e.value) == "enrollment failed 2 times, last: HTTP 502 bad gateway"
    assert sleeps == [4.0]
    assert capsys.readouterr().err.splitlines() == [
        f"{PREFIX} step=enroll waiting 4.0s: HTTP 500: boom"
    ]


def test_join_configuration_taints_word_for_word(tmp_path, ca):  # noqa: F811
    """kubeadm v1beta4 JoinConfiguration (kubeadm.k8s.io/v1beta4, nodeRegistration.taints: a
    taint without an effect is NoSchedule here; an empty list means no taints at all)."""
    mat = {
        "api_server": "10.100.0.1:6443",
        "token": "abcdef.0123456789abcdef",
        "ca_cert_hashes": ["sha256:" + "a" * 64],
        "taints": [{"key": "dedicated"}, {"key": "gpu", "value": "yes", "effect": "NoExecute"}],
    }
    cfg = make_cfg(tmp_path, ca, labels={}, taints=[])
    head = (
        "apiVersion: kubeadm.k8s.io/v1beta4\n"
        "kind: JoinConfiguration\n"
        "discovery:\n"
        "  bootstrapToken:\n"
        '    apiServerEndpoint: "10.100.0.1:6443"\n'
        '    token: "abcdef.0123456789abcdef"\n'
        "    caCertHashes:\n"
        f'      - "sha256:{"a" * 64}"\n'
        "nodeRegistration:\n"
        '  name: "node-a"\n'
        "  kubeletExtraArgs:\n"
        '    - name: "node-ip"\n'
        '      value: "10.100.0.7"\n'
    )
    assert agent.join_configuration(mat, cfg, "10.100.0.7", "node-a") == head + (
        '  taints:\n    - key: "dedicated"\n      effect: "NoSchedule"\n'
        '    - key: "gpu"\n      value: "yes"\n      effect: "NoExecute"\n'
    )
    assert agent.join_configuration({**mat, "taints": []}, cfg, "10.100.0.7", "node-a") == (
        head + "  taints: []\n"
    )


def test_the_enroll_url_keeps_its_host_whatever_it_ends_with(tmp_path, ca):  # noqa: F811
    http = FakeHttp([(200, {}, enrollment())])
    a, _ = make(tmp_path, ca, http, enroll_url="https://HUBX//")
    a.enroll("x", NODE_PUB)
    assert http.requests[0][1] == "https://HUBX/v1/enroll"
