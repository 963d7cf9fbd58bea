"""Several hubs (issue 16): every hub a peer on its /32, the overlay route on one of them,
moved by a small state machine fed with probe results (agent.HubRoute)."""

from __future__ import annotations

import contextlib
import importlib.util

# imported under its package name: mutmut's trampolines (make mutation) only switch
# to a mutant in a module named as its file path says (builder.node.agent)
agent = importlib.import_module("builder.node.agent")

A, B, C = ("A" * 43 + "=", "B" * 43 + "=", "C" * 43 + "=")


def enrollment():
    return {
        "address": "10.100.0.7",
        "overlay_cidr": "10.100.0.0/16",
        "hub": {"pubkey": A, "endpoint": "a.example:51820", "overlay_ip": "10.100.0.1"},
        "other_hubs": [
            {"pubkey": B, "endpoint": "b.example:51820", "overlay_ip": "10.100.0.2"},
            {"pubkey": C, "endpoint": "c.example:51820", "overlay_ip": "10.100.0.3"},
        ],
        "mtu": 1420,
        "keepalive": 25,
    }


def test_route_stays_while_the_active_hub_answers_and_moves_after_three_misses():
    r = agent.HubRoute([A, B, C])
    up = {A: True, B: True, C: True}
    assert [r.step(up) for _ in range(10)] == [None] * 10
    down = {A: False, B: True, C: True}
    assert [r.step(down) for _ in range(3)] == [None, None, B]
    assert r.active == B
    assert [r.step(down) for _ in range(5)] == [None] * 5


def test_skips_hubs_that_are_down_too_and_waits_when_none_answers():
    r = agent.HubRoute([A, B, C])
    assert [r.step({A: False, B: False, C: True}) for _ in range(3)] == [None, None, C]
    r = agent.HubRoute([A, B, C])
    assert [r.step({}) for _ in range(5)] == [None] * 5 and r.active == A
    assert r.step({C: True}) == C


def test_back_to_the_preferred_hub_only_after_five_good_probes_in_a_row():
    r = agent.HubRoute([A, B])
    for _ in range(3):
        r.step({A: False, B: True})
    assert r.active == B
    flapping = [r.step({A: i % 2 == 0, B: True}) for i in range(8)]
    assert flapping == [None] * 8
    assert [r.step({A: True, B: True}) for _ in range(5)] == [None] * 4 + [A]


def test_wg_conf_has_every_hub_with_the_overlay_on_the_first():
    enr = enrollment()
    conf = agent.Agent.wg_conf(None, enr, "PRIV")  # type: ignore[arg-type]
    peers = conf.split("[Peer]")[1:]
    assert len(peers) == 3
    assert f"PublicKey = {A}" in peers[0] and "AllowedIPs = 10.100.0.0/16" in peers[0]
    assert f"PublicKey = {B}" in peers[1] and "AllowedIPs = 10.100.0.2/32" in peers[1]
    assert "Endpoint = c.example:51820" in peers[2]


def test_route_argv_gives_the_range_to_the_new_hub_last():
    cmds = agent.route_argv("wg", "wg0", enrollment(), B)
    assert cmds[-1] == ["wg", "set", "wg0", "peer", B, "allowed-ips", "10.100.0.2/32,10.100.0.0/16"]
    assert ["wg", "set", "wg0", "peer", A, "allowed-ips", "10.100.0.1/32"] in cmds[:-1]
    assert len(cmds) == 3


def test_a_restarted_loop_starts_from_the_hub_that_holds_the_route():
    r = agent.HubRoute([A, B], active=B)
    assert r.active == B
    assert [r.step({A: False, B: True}) for _ in range(5)] == [None] * 5  # stays on B
    assert agent.HubRoute([A, B], active="unknown").active == A


class FakeSystem:
    def __init__(self, out: str, rc: int = 0) -> None:
        self.out, self.rc, self.calls = out, rc, []

    def run(self, argv, timeout=None, **kw):
        self.calls.append(argv)
        return self.rc, self.out


def test_route_holder_reads_wg_show_allowed_ips():
    # the format of `wg show IFACE allowed-ips`, as wireguard-tools prints it (seen with
    # wg 1.0 + wireguard-go here, 2026-11-30): key TAB addresses separated by spaces
    out = f"{A}\t10.100.0.1/32\n{B}\t10.100.0.2/32 10.100.0.0/16\n{C}\t10.100.0.3/32\n"
    sys_ = FakeSystem(out)
    assert agent.route_holder("wg", "wg0", enrollment(), sys_) == B
    assert sys_.calls == [["wg", "show", "wg0", "allowed-ips"]]
    assert agent.route_holder("wg", "wg0", enrollment(), FakeSystem("", rc=1)) is None


class FakeHttp:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def request(self, method, url, bearer, body=None):
        self.calls.append((method, url, bearer, body))
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a


def test_report_route_posts_to_the_hub_through_its_own_address():
    enr = {**enrollment(), "node_secret": "S3CRET", "join_url": "https://10.100.0.1:8443/v1/join"}
    hub_b = enr["other_hubs"][0]
    http = FakeHttp((200, {}, {"status": "ok"}), (403, {}, {"error": "no"}), OSError("refused"))
    assert agent.report_route(http, enr, hub_b, 8443) is True
    assert http.calls[0] == ("POST", "https://10.100.0.2:8443/v1/route", "S3CRET", {"hub": B})
    assert agent.report_route(http, enr, hub_b, 8443) is False
    assert agent.report_route(http, enr, hub_b, 8443) is False


def test_failover_loop_moves_then_reports_the_new_hub_once(tmp_path, monkeypatch):
    enr = {**enrollment(), "node_secret": "S", "join_url": "https://10.100.0.1:8443/v1/join"}
    (tmp_path / "enrollment.json").write_text(__import__("json").dumps(enr))
    cfg = agent.Config(site="lab", enroll_url="https://x", ca_file="", token_file="")
    cfg.state_dir = str(tmp_path)
    system = FakeSystem(f"{A}\t10.100.0.1/32 10.100.0.0/16\n")
    http = FakeHttp(*[(200, {}, {})] * 5)
    monkeypatch.setattr(agent, "System", lambda: system)
    monkeypatch.setattr(agent, "Http", lambda *a: http)
    monkeypatch.setattr(agent, "probe", lambda host, port: host != "10.100.0.1")
    monkeypatch.setattr(agent.time, "sleep", lambda s: None)
    assert agent.failover_loop(cfg, interval=1, rounds=5) == 0
    moves = [c for c in system.calls if c[:2] == ["wg", "set"]]
    assert moves[-1] == [
        "wg",
        "set",
        "wg0",
        "peer",
        B,
        "allowed-ips",
        "10.100.0.2/32,10.100.0.0/16",
    ]
    # hub A never answered: no report to it; one to B right after the move (then every 30 s)
    assert [c[1] for c in http.calls] == ["https://10.100.0.2:8443/v1/route"]


def test_failover_loop_returns_after_return_seconds_on_a_wall_clock_tick(tmp_path, monkeypatch):
    """A returned hub has no session with the other nodes yet (each makes one within
    WireGuard's RekeyTimeout of 5 s): back after RETURN_SECONDS of good probes, not 5 probes,
    and on a RETURN_ALIGN-second tick of the wall clock, so that all nodes move together."""
    enr = {**enrollment(), "node_secret": "S", "join_url": "https://10.100.0.1:8443/v1/join"}
    (tmp_path / "enrollment.json").write_text(__import__("json").dumps(enr))
    cfg = agent.Config(site="lab", enroll_url="https://x", ca_file="", token_file="")
    cfg.state_dir = str(tmp_path)
    system = FakeSystem(f"{B}\t10.100.0.2/32 10.100.0.0/16\n")  # a restarted loop, on B
    clock = [1000.5]
    monkeypatch.setattr(agent, "System", lambda: system)
    monkeypatch.setattr(agent, "Http", lambda *a: FakeHttp(*[(200, {}, {})] * 10))
    monkeypatch.setattr(agent, "probe", lambda host, port: True)
    monkeypatch.setattr(agent.time, "time", lambda: clock[0])
    moved_at = []

    def sleep(s):
        if any(c[4] == A and "10.100.0.0/16" in c[-1] for c in system.calls if len(c) > 5):
            moved_at.append(clock[0])
            raise StopIteration
        clock[0] += s

    monkeypatch.setattr(agent.time, "sleep", sleep)
    with contextlib.suppress(StopIteration):
        agent.failover_loop(cfg, interval=1, rounds=40)
    assert (agent.RETURN_SECONDS, agent.RETURN_ALIGN) == (15, 10)
    # good since 1000.5: 15 probes by 1014.5, the next 10-s tick is 1020
    assert moved_at == [1020.5]


def test_every_node_prefers_the_hub_with_the_lowest_overlay_address(tmp_path, monkeypatch):
    """A node enrolled at hub C still moves its route to hub A (10.100.0.1) like the rest."""
    enr = enrollment()
    enr["hub"], enr["other_hubs"] = enr["other_hubs"][1], [enr["other_hubs"][0], enr["hub"]]
    enr.update(node_secret="S", join_url="https://10.100.0.3:8443/v1/join")
    (tmp_path / "enrollment.json").write_text(__import__("json").dumps(enr))
    cfg = agent.Config(site="lab", enroll_url="https://x", ca_file="", token_file="")
    cfg.state_dir = str(tmp_path)
    system = FakeSystem(f"{C}\t10.100.0.3/32 10.100.0.0/16\n")
    http = FakeHttp(*[(200, {}, {})] * 10)
    clock = [1000.0]
    monkeypatch.setattr(agent, "System", lambda: system)
    monkeypatch.setattr(agent, "Http", lambda *a: http)
    monkeypatch.setattr(agent, "probe", lambda host, port: True)
    monkeypatch.setattr(agent.time, "time", lambda: clock[0])
    monkeypatch.setattr(agent.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    agent.failover_loop(cfg, interval=1, rounds=30)
    moves = [c for c in system.calls if c[:2] == ["wg", "set"] and "10.100.0.0/16" in c[-1]]
    assert [m[4] for m in moves] == [A]
    assert [c[1] for c in http.calls] == [
        "https://10.100.0.3:8443/v1/route",  # where it started
        "https://10.100.0.1:8443/v1/route",  # after the move
    ]


def test_after_the_join_the_agent_starts_the_failover_unit_only_with_several_hubs(tmp_path):
    cfg = agent.Config(site="lab", enroll_url="https://x", ca_file="", token_file="")
    cfg.state_dir = str(tmp_path)
    sys_ = FakeSystem("")
    a = agent.Agent(cfg, system=sys_)
    a.start_failover({**enrollment(), "other_hubs": []})
    assert sys_.calls == []  # one hub: nothing to fail over to
    a.start_failover(enrollment())
    # --no-block: the unit is ordered after nodeforge-enroll.service, which is still running
    assert sys_.calls == [["systemctl", "start", "--no-block", "nodeforge-failover.service"]]
    cfg.enable_wg_unit = False  # not under systemd (tests, a plain process)
    a.start_failover(enrollment())
    assert len(sys_.calls) == 1


def test_failover_loop_waits_for_the_interface_before_it_decides(tmp_path, monkeypatch):
    """At boot the unit may start before wg-quick@: the route is where the interface's
    config puts it (the enrolling hub, here B), not assumed to be on the preferred hub."""
    enr = {**enrollment(), "node_secret": "S", "join_url": "https://10.100.0.1:8443/v1/join"}
    (tmp_path / "enrollment.json").write_text(__import__("json").dumps(enr))
    cfg = agent.Config(site="lab", enroll_url="https://x", ca_file="", token_file="")
    cfg.state_dir = str(tmp_path)
    answers = iter([(1, "Unable to access interface"), (1, "Unable to access interface")])

    class BootSystem(FakeSystem):
        def run(self, argv, timeout=None, **kw):
            self.calls.append(argv)
            if argv[:2] == ["wg", "show"]:
                return next(answers, (0, f"{A}\t10.100.0.1/32\n{B}\t10.100.0.2/32 10.100.0.0/16\n"))
            return 0, ""

    system = BootSystem("")
    http = FakeHttp(*[(200, {}, {})] * 10)
    monkeypatch.setattr(agent, "System", lambda: system)
    monkeypatch.setattr(agent, "Http", lambda *a: http)
    monkeypatch.setattr(agent, "probe", lambda host, port: host != "10.100.0.1")  # A is down
    monkeypatch.setattr(agent.time, "sleep", lambda s: None)
    agent.failover_loop(cfg, interval=1, rounds=5)
    assert [c for c in system.calls if c[:2] == ["wg", "show"]] == [
        ["wg", "show", "wg0", "allowed-ips"]
    ] * 3
    # started on B (where the range is) and stays: hub A down is no reason to move
    assert [c for c in system.calls if c[:2] == ["wg", "set"]] == []
    assert [c[1] for c in http.calls] == ["https://10.100.0.2:8443/v1/route"]
