"""The node agent's state machine and retry policy: time, HTTP and commands injected.

No sleeps, no network, no root: FakeSystem answers `wg`, `wg-quick` and `kubeadm`,
FakeHttp plays the hub, sleep() only records how long the agent wanted to wait.
"""

from __future__ import annotations

import importlib.util
import json
import ssl
import stat
from pathlib import Path

import pytest
import yaml

from builder.hub.pki import make_ca_and_server

# imported under its package name: mutmut's trampolines (make mutation) only switch
# to a mutant in a module named as its file path says (builder.node.agent)
agent = importlib.import_module("builder.node.agent")

HUB_KEY = "H" * 43 + "="
NODE_KEY = "P" * 43 + "="
NODE_PUB = "Q" * 43 + "="


class FakeSystem:
    def __init__(self, handshake_after: int = 0, join_failures: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.handshake_after = handshake_after
        self.join_failures = join_failures
        self.hs_polls = 0
        self.join_configs: list[str] = []
        self.dns_fail = 0
        self.route_ok = True

    def run(self, argv, timeout=600, env=None):
        self.calls.append(list(argv))
        if argv[1:] == ["genkey"]:
            return 0, NODE_KEY + "\n"
        if argv[1:3] == ["show", argv[2]] and argv[3:] == ["public-key"]:
            return 1, "No such device"
        if argv[1:2] == ["up"] or argv[1:2] == ["down"] or argv[1:2] == ["set"]:
            return 0, ""
        if argv[3:] == ["latest-handshakes"]:
            self.hs_polls += 1
            ts = "1800000000" if self.hs_polls > self.handshake_after else "0"
            return 0, f"{HUB_KEY}\t{ts}\n"
        if argv[1] == "join":
            self.join_env = env
            self.join_configs.append(Path(argv[3]).read_text())
            mode = stat.S_IMODE(Path(argv[3]).stat().st_mode)
            assert mode == 0o600
            if self.join_failures:
                self.join_failures -= 1
                return 1, "stand-in: join failed"
            return 0, ""
        if argv[1:] == ["reset", "-f"]:
            return 0, ""
        if argv[1] == "enable":
            return 0, ""
        raise AssertionError(f"unexpected command {argv}")

    def run_input(self, argv, data):
        self.calls.append(list(argv))
        assert argv[1:] == ["pubkey"] and data.strip() == NODE_KEY
        return 0, NODE_PUB + "\n"

    def resolve(self, host, port):
        if self.dns_fail:
            self.dns_fail -= 1
            raise OSError("Temporary failure in name resolution")
        return "192.0.2.1"

    def has_route(self, addr, port):
        return self.route_ok

    def hostname(self):
        return self.name

    name = "Node-A.example"

    def console(self, path, msg):
        self.console_lines = [*getattr(self, "console_lines", []), (path, msg)]


def enrollment(address="10.100.0.7"):
    return {
        "node_id": "x",
        "address": address,
        "overlay_cidr": "10.100.0.0/16",
        "hub": {"pubkey": HUB_KEY, "endpoint": "hub.example:51820", "overlay_ip": "10.100.0.1"},
        "mtu": 1420,
        "keepalive": 25,
        "node_secret": "nfs1.secret",
        "join_url": "https://10.100.0.1:8443/v1/join",
    }


class FakeHttp:
    def __init__(self, enroll_answers, join_ip="10.100.0.7") -> None:
        self.enroll_answers = list(enroll_answers)
        self.requests: list[tuple[str, str, str, dict | None]] = []
        self.join_ip = join_ip
        self.joins = 0

    def request(self, method, url, bearer, body=None):
        self.requests.append((method, url, bearer, body))
        if url.endswith("/v1/enroll"):
            ans = self.enroll_answers.pop(0)
            if isinstance(ans, Exception):
                raise ans
            return ans
        if url.endswith("/v1/join"):
            assert bearer == "nfs1.secret"
            self.joins += 1
            return (
                200,
                {},
                {
                    "api_server": "10.100.0.1:6443",
                    "token": f"abcdef.{self.joins:016d}",
                    "ca_cert_hashes": ["sha256:" + "a" * 64],
                    "node_ip": self.join_ip,
                    "labels": {"hub": "yes"},
                    "taints": [],
                    "cri_socket": "unix:///x.sock",
                },
            )
        if url.endswith("/v1/complete"):
            return 200, {}, {"status": "joined"}
        raise AssertionError(url)


@pytest.fixture
def ca(tmp_path):
    ca_pem, _, _, _ = make_ca_and_server(["hub.example"])
    p = tmp_path / "ca.pem"
    p.write_bytes(ca_pem)
    return p


def make_cfg(tmp_path, ca, **over):
    (tmp_path / "token").write_text("nf1.token\n")
    d = {
        "site": "lab",
        "enroll_url": "https://hub.example:8443",
        "ca_file": str(ca),
        "ca_pin": agent.ca_pin_of(str(ca)),
        "token_file": str(tmp_path / "token"),
        "interface": "wg9",
        "build_time": 1_700_000_000,
        "state_dir": str(tmp_path / "state"),
        "wireguard_dir": str(tmp_path / "wg"),
        "run_dir": str(tmp_path / "run"),
        "sys_dir": str(tmp_path / "sys"),
        "labels": {"site": "lab"},
        "taints": [{"key": "new", "value": "1", "effect": "NoSchedule"}],
        "retry_max_seconds": 60,
        "enable_wg_unit": True,
        "handshake_timeout": 5,
    }
    d.update(over)
    p = tmp_path / "node.json"
    p.write_text(json.dumps(d))
    return agent.load_config(str(p))


def run_agent(cfg, sysm, http, t=1_800_000_000.0, rand=1.0):
    sleeps: list[float] = []
    clock = [t]

    def sleep(s):
        sleeps.append(s)
        clock[0] += s

    a = agent.Agent(cfg, sysm, http, clock=lambda: clock[0], sleep=sleep, rand=lambda: rand)
    return a.run(), sleeps


def test_happy_path(tmp_path, ca, capsys):
    cfg = make_cfg(tmp_path, ca)
    sysm, http = FakeSystem(handshake_after=2), FakeHttp([(200, {}, enrollment())])
    rc, sleeps = run_agent(cfg, sysm, http)
    assert rc == 0
    state = tmp_path / "state"
    assert (state / "joined").exists()
    assert stat.S_IMODE((state / "wg.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "enrollment.json").stat().st_mode) == 0o600
    conf = tmp_path / "wg" / "wg9.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    assert "Address = 10.100.0.7/32" in text and "MTU = 1420" in text
    assert "PersistentKeepalive = 25" in text and "\nSaveConfig" not in text
    method, url, bearer, body = http.requests[0]
    assert (method, url, bearer) == ("POST", "https://hub.example:8443/v1/enroll", "nf1.token")
    assert body["wg_pubkey"] == NODE_PUB and body["hostname"] == "node-a"
    assert "token" not in url
    verbs = [c[1] for c in sysm.calls]
    assert verbs.index("up") < verbs.index("enable") < verbs.index("join")
    jc = yaml.safe_load(sysm.join_configs[0])
    assert jc["apiVersion"] == "kubeadm.k8s.io/v1beta4" and jc["kind"] == "JoinConfiguration"
    args = {a["name"]: a["value"] for a in jc["nodeRegistration"]["kubeletExtraArgs"]}
    assert args == {"node-ip": "10.100.0.7", "node-labels": "hub=yes,site=lab"}
    assert jc["nodeRegistration"]["taints"] == [
        {"key": "new", "value": "1", "effect": "NoSchedule"}
    ]
    assert jc["discovery"]["bootstrapToken"]["token"] == "abcdef.0000000000000001"
    assert not (tmp_path / "run" / "join.yaml").exists()
    assert http.requests[-1][1] == "https://10.100.0.1:8443/v1/complete"
    assert sleeps == [1.0, 1.0]  # two handshake polls, nothing else
    err = capsys.readouterr().err
    assert all(line.startswith("nodeforge-enroll: step=") for line in err.splitlines())
    assert "nf1.token" not in err and "nfs1.secret" not in err and NODE_KEY not in err
    # the next boot: marker present, nothing happens
    rc, _ = run_agent(cfg, FakeSystem(), FakeHttp([]))
    assert rc == 0


def test_joined_is_said_on_the_console_once_nothing_is_left_to_write(tmp_path, ca):
    """`builder boot-test` powers a machine off when this line shows: the joined marker must
    be on disk by then (the next boot must not enroll again), on this boot and the next."""
    cfg = make_cfg(tmp_path, ca, console_file="/dev/test-console")
    marker = tmp_path / "state" / "joined"
    seen: list[tuple[str, bool]] = []

    class Watching(FakeSystem):
        def console(self, path, msg):
            seen.append((msg, marker.exists()))
            super().console(path, msg)

    rc, _ = run_agent(cfg, Watching(handshake_after=1), FakeHttp([(200, {}, enrollment())]))
    assert rc == 0
    assert seen == [("nodeforge-enroll: joined the cluster: overlay address 10.100.0.7", True)]
    seen.clear()
    rc, _ = run_agent(cfg, Watching(), FakeHttp([]))
    assert rc == 0
    assert seen == [("nodeforge-enroll: joined the cluster (on an earlier boot)", True)]


def test_key_and_node_id_are_created_once_and_the_answer_is_reused(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca, handshake_timeout=2)
    sysm = FakeSystem(handshake_after=10**6)
    http = FakeHttp([(200, {}, enrollment())])
    rc, _ = run_agent(cfg, sysm, http)
    assert rc == agent.EXIT_RETRY  # no handshake: systemd starts us again
    resolves = [c for c in sysm.calls if c[1] == "set" and "endpoint" in c]
    assert len(resolves) == 3  # re-resolved the hub endpoint each round
    node_id = (tmp_path / "state" / "node_id").read_text()
    sysm2 = FakeSystem()
    rc, _ = run_agent(cfg, sysm2, FakeHttp([]))  # no enroll answer available: must not POST
    assert rc == 0
    assert (tmp_path / "state" / "node_id").read_text() == node_id
    assert ["wg", "genkey"] not in sysm2.calls


@pytest.mark.parametrize("status", [400, 401, 403, 409])
def test_refusals_stop_for_good(tmp_path, ca, status):
    cfg = make_cfg(tmp_path, ca)
    rc, sleeps = run_agent(cfg, FakeSystem(), FakeHttp([(status, {}, {"error": "no"})]))
    assert rc == agent.EXIT_STOP and sleeps == []
    assert not (tmp_path / "state" / "enrollment.json").exists()


def test_429_honours_retry_after_and_202_polls(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca)
    http = FakeHttp(
        [
            (429, {"retry-after": "7"}, {"error": "slow down"}),
            (202, {"retry-after": "30"}, {"status": "pending"}),
            (200, {}, enrollment()),
        ]
    )
    rc, sleeps = run_agent(cfg, FakeSystem(), http)
    assert rc == 0 and sleeps[:2] == [7.0, 30.0]


def test_server_errors_back_off_with_jitter_capped(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca, retry_max_seconds=10, enroll_attempts=6)
    answers = [
        (503, {}, {}),
        OSError("refused"),
        (500, {}, {}),
        (502, {}, {}),
        (500, {}, {}),
        (500, {}, {}),
    ]
    rc, sleeps = run_agent(cfg, FakeSystem(), FakeHttp(answers), rand=1.0)
    assert rc == agent.EXIT_RETRY
    assert sleeps == [4.0, 8.0, 10.0, 10.0, 10.0]
    (tmp_path / "x").mkdir()
    cfg = make_cfg(tmp_path / "x", ca, retry_max_seconds=10, enroll_attempts=3)
    rc, sleeps = run_agent(cfg, FakeSystem(), FakeHttp([(503, {}, {})] * 3), rand=0.25)
    assert rc == agent.EXIT_RETRY and sleeps == [1.0, 2.0]  # jitter scales the delay


def test_waits_for_clock_dns_and_route(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca, build_time=1_800_000_100)
    sysm = FakeSystem()
    sysm.dns_fail = 2
    rc, sleeps = run_agent(cfg, sysm, FakeHttp([(200, {}, enrollment())]), rand=1.0)
    assert rc == 0
    # clock behind the build time until the sleeps move it past, then two DNS failures
    assert sleeps[:3] == [1.0, 2.0, 4.0] and len(sleeps) >= 5
    cfg2 = make_cfg(tmp_path, ca)
    s2 = FakeSystem()
    s2.route_ok = False
    a = agent.Agent(
        cfg2,
        s2,
        FakeHttp([]),
        clock=lambda: 1_800_000_000.0,
        sleep=lambda s: None,
        rand=lambda: 0.0,
    )
    a.check_ca()
    with pytest.raises(agent.Retry):
        a.wait_for_network(max_attempts=3)


def test_an_unreachable_hub_is_said_on_the_console_once_with_its_url(tmp_path, ca):
    """The operator of a node that does not join sees why on the screen: the hub's URL and
    the first problem, once a run (not once per retry); a clock behind the build time is
    not the hub's problem. `builder boot-test` reads the URL to tell an image built for
    another hub from a slow one."""
    url = "https://hub.example:8443"
    say = f"nodeforge-enroll: cannot reach the hub at {url}"
    cfg = make_cfg(tmp_path, ca, build_time=1_800_000_100, console_file="/dev/c")
    sysm = FakeSystem()
    sysm.dns_fail = 3
    rc, _ = run_agent(cfg, sysm, FakeHttp([(200, {}, enrollment())]), rand=1.0)
    assert rc == 0
    said = [m for _, m in sysm.console_lines]
    assert said[0] == (f"{say}: cannot resolve hub.example: Temporary failure in name "
                       "resolution; retrying (journalctl -u nodeforge-enroll)")  # fmt: skip
    assert len(said) == 2 and said[1].startswith("nodeforge-enroll: joined the cluster")
    # no route, then refused connections: still one line, the first problem
    (tmp_path / "b").mkdir()
    cfg = make_cfg(tmp_path / "b", ca, console_file="/dev/c")
    sysm = FakeSystem()
    sysm.route_ok = False
    a = agent.Agent(cfg, sysm, FakeHttp([]), clock=lambda: 1_800_000_000.0,
                    sleep=lambda s: None, rand=lambda: 0.0)  # fmt: skip
    a.check_ca()
    with pytest.raises(agent.Retry):
        a.wait_for_network(max_attempts=3)
    assert [m for _, m in sysm.console_lines] == [f"{say}: no route to 192.0.2.1; retrying "
                                                  "(journalctl -u nodeforge-enroll)"]  # fmt: skip
    # the hub down (connection refused at enrollment), then up
    (tmp_path / "c").mkdir()
    cfg = make_cfg(tmp_path / "c", ca, console_file="/dev/c")
    sysm = FakeSystem()
    answers = [ConnectionRefusedError(111, "Connection refused")] * 3 + [(200, {}, enrollment())]
    rc, _ = run_agent(cfg, sysm, FakeHttp(answers))
    assert rc == 0
    said = [m for _, m in sysm.console_lines]
    assert (
        said[0]
        == f"{say}: [Errno 111] Connection refused; retrying (journalctl -u nodeforge-enroll)"
    )
    assert len(said) == 2
    # a clock behind the build time alone says nothing
    (tmp_path / "d").mkdir()
    cfg = make_cfg(tmp_path / "d", ca, build_time=1_800_000_100, console_file="/dev/c")
    sysm = FakeSystem()
    rc, _ = run_agent(cfg, sysm, FakeHttp([(200, {}, enrollment())]), rand=1.0)
    assert rc == 0 and [m for _, m in sysm.console_lines if "cannot reach" in m] == []


def test_failed_join_resets_and_fetches_fresh_material(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca)
    sysm = FakeSystem(join_failures=1)
    http = FakeHttp([(200, {}, enrollment())])
    rc, _ = run_agent(cfg, sysm, http)
    assert rc == 0
    kube = [c[1:] for c in sysm.calls if c[0] == "kubeadm"]
    assert [k[0] for k in kube] == ["join", "reset", "join"] and kube[1] == ["reset", "-f"]
    assert http.joins == 2
    toks = [yaml.safe_load(c)["discovery"]["bootstrapToken"]["token"] for c in sysm.join_configs]
    assert toks[0] != toks[1]


def test_join_material_for_another_address_is_refused(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca)
    rc, _ = run_agent(cfg, FakeSystem(), FakeHttp([(200, {}, enrollment())], join_ip="10.100.0.9"))
    assert rc == agent.EXIT_STOP
    assert not (tmp_path / "state" / "joined").exists()


def test_ca_pin_mismatch_and_missing_token_stop(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca, ca_pin="sha256:" + "0" * 64)
    assert run_agent(cfg, FakeSystem(), FakeHttp([]))[0] == agent.EXIT_STOP
    cfg = make_cfg(tmp_path, ca, token_file=str(tmp_path / "missing"), token_wait_seconds=30)
    sysm = FakeSystem()
    rc, sleeps = run_agent(cfg, sysm, FakeHttp([]))
    assert rc == agent.EXIT_STOP
    assert 30 <= sum(sleeps) <= 45 and max(sleeps) <= 10  # waited, bounded, then stopped


def test_missing_token_is_said_on_the_console_and_in_the_journal_at_once(tmp_path, ca, capsys):
    """Issue 12: no seed and no site token was a silent 300 s wait."""
    missing = tmp_path / "missing"
    cfg = make_cfg(tmp_path, ca, token_file=str(missing), token_wait_seconds=30,
                   console_file="/dev/test-console")  # fmt: skip
    sysm = FakeSystem()
    seen = []

    def sleep(s):
        if not seen:  # what was said before the first wait
            seen.append((list(getattr(sysm, "console_lines", [])), capsys.readouterr().err))

    a = agent.Agent(cfg, sysm, FakeHttp([]), clock=lambda: 1.8e9, sleep=sleep, rand=lambda: 0.5)
    assert a.run() == agent.EXIT_STOP
    console, journal = seen[0]
    [(path, msg)] = console
    assert path == "/dev/test-console"
    for said in (msg, journal):
        assert f"no enrollment token in {missing}" in said
        assert "builder seed" in said and "builder hub token create" in said
        assert "waiting 30s" in said
    assert "step=token" in journal
    # and the permanent failure at the end, on the console too
    assert "FAILED, not retrying" in sysm.console_lines[-1][1]
    assert len([m for _, m in sysm.console_lines if "no enrollment token in" in m]) == 1


@pytest.mark.parametrize("given", ["lab-node", "localhost", "LOCALHOST.localdomain", ""])
def test_a_node_without_a_seed_names_itself_after_its_machine_id(tmp_path, ca, given):
    """Issue 12: no seed + a site token: every node enrolled under the image's one name."""
    mid = tmp_path / "machine-id"
    mid.write_text("0123abcd" + "e" * 24 + "\n")
    hn = tmp_path / "hostname"
    hn.write_text(given + "\n")
    cfg = make_cfg(tmp_path, ca, hostname_default="lab-node", machine_id_file=str(mid),
                   hostname_file=str(hn))  # fmt: skip
    sysm, http = FakeSystem(handshake_after=1), FakeHttp([(200, {}, enrollment())])
    sysm.name = given
    real_run = sysm.run

    def run(argv, timeout=600, env=None):
        if argv[0] == "hostname":
            sysm.calls.append(list(argv))
            return 0, ""
        return real_run(argv, timeout, env)

    sysm.run = run
    rc, _ = run_agent(cfg, sysm, http)
    assert rc == 0
    assert http.requests[0][3]["hostname"] == "lab-0123abcd"
    assert hn.read_text() == "lab-0123abcd\n"
    assert ["hostname", "lab-0123abcd"] in sysm.calls
    jc = yaml.safe_load(sysm.join_configs[0])
    assert jc["nodeRegistration"]["name"] == "lab-0123abcd"


def test_a_seed_name_is_kept_and_no_machine_id_is_no_name(tmp_path, ca):
    none, hn = str(tmp_path / "none"), str(tmp_path / "hn")
    cfg = make_cfg(
        tmp_path, ca, hostname_default="lab-node", machine_id_file=none, hostname_file=hn
    )
    sysm, http = FakeSystem(handshake_after=1), FakeHttp([(200, {}, enrollment())])
    assert run_agent(cfg, sysm, http)[0] == 0
    assert http.requests[0][3]["hostname"] == "node-a"  # the seed's name, untouched
    assert not (tmp_path / "hn").exists()
    other = tmp_path / "other"
    other.mkdir()
    sysm2 = FakeSystem()
    sysm2.name = "lab-node"
    cfg2 = make_cfg(other, ca, hostname_default="lab-node", machine_id_file=str(other / "none"))
    assert run_agent(cfg2, sysm2, FakeHttp([]))[0] == agent.EXIT_STOP  # no machine-id: no name


def test_token_written_late_is_waited_for(tmp_path, ca):
    late = tmp_path / "late-token"
    cfg = make_cfg(tmp_path, ca, token_file=str(late))
    sysm, http = FakeSystem(), FakeHttp([(200, {}, enrollment())])
    calls = []

    def sleep(s):
        calls.append(s)
        if len(calls) == 3:  # cloud-final's runcmd writes it while we wait
            late.write_text("nf1.late\n")

    a = agent.Agent(cfg, sysm, http, clock=lambda: 1_800_000_000.0, sleep=sleep, rand=lambda: 0.5)
    assert a.run() == 0
    assert http.requests[0][2] == "nf1.late"


def test_cert_rejection_stops(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca)
    err = ssl.SSLCertVerificationError("bad")
    err.verify_message = "self-signed certificate"
    assert run_agent(cfg, FakeSystem(), FakeHttp([err]))[0] == agent.EXIT_STOP


def test_inconsistent_enrollment_is_not_saved(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca)
    bad = enrollment(address="10.100.255.255")  # the broadcast address
    rc, _ = run_agent(cfg, FakeSystem(), FakeHttp([(200, {}, bad)]))
    assert rc == agent.EXIT_RETRY
    assert not (tmp_path / "state" / "enrollment.json").exists()


def test_fingerprint_from_dmi_and_nics(tmp_path, ca):
    cfg = make_cfg(tmp_path, ca)
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_uuid").write_text("4c4c4544-0042\n")
    nic = tmp_path / "sys/class/net/eth0"
    (nic / "device").mkdir(parents=True)
    (nic / "address").write_text("52:54:00:12:34:56\n")
    (tmp_path / "sys/class/net/lo").mkdir()
    a = agent.Agent(cfg, FakeSystem(), FakeHttp([]))
    fp = a.fingerprint()
    assert fp.startswith("sha256:") and fp == a.fingerprint()
    (nic / "address").write_text("52:54:00:12:34:57\n")
    assert a.fingerprint() != fp


def test_config_errors_name_file_and_key(tmp_path, capsys):
    p = tmp_path / "node.json"
    p.write_text(json.dumps({"site": "lab", "enroll_url": "http://x", "ca_pin": "md5:1"}))
    assert agent.main(["--config", str(p)]) == agent.EXIT_STOP
    err = capsys.readouterr().err
    assert f"{p}: enroll_url: must be https" in err and f"{p}: ca_file: required" in err
    assert f"{p}: ca_pin:" in err
    assert agent.main(["--config", str(tmp_path / "nope.json")]) == agent.EXIT_STOP


def test_kubeadm_gets_a_systemctl_shim_under_systemd(tmp_path, ca, monkeypatch):
    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    cfg = make_cfg(tmp_path, ca, systemctl=str(fake))
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    sysm = FakeSystem()
    assert run_agent(cfg, sysm, FakeHttp([(200, {}, enrollment())]))[0] == 0
    assert sysm.join_env == {}  # not under systemd: kubeadm runs with our PATH
    (tmp_path / "state" / "joined").unlink()
    monkeypatch.setenv("INVOCATION_ID", "abc")
    sysm = FakeSystem()
    assert run_agent(cfg, sysm, FakeHttp([]))[0] == 0
    shim = tmp_path / "state" / "shim"  # not under /run: noexec on the node
    assert sysm.join_env["PATH"].split(":")[0] == str(shim)
    text = (shim / "systemctl").read_text()
    assert f"exec {fake} --job-mode=ignore-dependencies" in text and f'exec {fake} "$@"' in text
    assert stat.S_IMODE((shim / "systemctl").stat().st_mode) == 0o755


def test_the_used_token_is_removed_after_enrollment(tmp_path, ca):
    """Issue 14 finding 8: the one-time token file stayed on the node after enrollment."""
    cfg = make_cfg(tmp_path, ca)
    rc, _ = run_agent(cfg, FakeSystem(), FakeHttp([(200, {}, enrollment())]))
    assert rc == 0
    assert not (tmp_path / "token").exists()
    assert "nf1.token" not in (tmp_path / "state" / "enrollment.json").read_text()


class KeySystem(FakeSystem):
    """`wg genkey`/`wg pubkey` that give a new key after the old one is lost."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.key = chr(ord("P") + n) * 43 + "="
        self.pub = chr(ord("a") + n) * 43 + "="

    def run(self, argv, timeout=600, env=None):
        if argv[1:] == ["genkey"]:
            self.calls.append(list(argv))
            return 0, self.key + "\n"
        return super().run(argv, timeout, env)

    def run_input(self, argv, data):
        self.calls.append(list(argv))
        return 0, (NODE_PUB if data.strip() == NODE_KEY else self.pub) + "\n"


def test_reenrollment_presents_the_node_secret(tmp_path, ca):
    """Issue 14 finding 1: an active node re-enrolls with a new key only with its own
    secret; the agent presents the one it saved (with or without a token file)."""
    cfg = make_cfg(tmp_path, ca)
    node_id = "nodeid-1"
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "node_id").write_text(node_id + "\n")
    first = {**enrollment(), "node_id": node_id}
    rc, _ = run_agent(cfg, FakeSystem(), FakeHttp([(200, {}, first)]))
    assert rc == 0
    for n, token in ((1, None), (2, "nf1.other")):
        # the key is lost (the saved answer is for the old key): enroll again
        (tmp_path / "state" / "wg.key").unlink()
        (tmp_path / "state" / "joined").unlink()
        if token:
            (tmp_path / "token").write_text(token + "\n")
        http = FakeHttp([(200, {}, {**first, "node_secret": "nfs1.secret"})])
        rc, _ = run_agent(cfg, KeySystem(n), http)
        assert rc == 0
        _, _, bearer, body = http.requests[0]
        assert body["node_secret"] == "nfs1.secret" and body["node_id"] == node_id
        assert bearer == (token or "nfs1.secret")
        assert not (tmp_path / "token").exists()


def test_the_console_line_is_written_whole(tmp_path):
    out = tmp_path / "console"
    out.write_text("")
    agent.System().console(str(out), "nodeforge-enroll: no enrollment token in /x")
    assert out.read_bytes() == b"\r\nnodeforge-enroll: no enrollment token in /x\r\n"
    agent.System().console(str(tmp_path / "no" / "console"), "x")  # no console: no error


GPU_TAINTS = [
    {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
    {"key": "dedicated", "value": "ml", "effect": "NoSchedule"},
]


@pytest.mark.parametrize(
    ("verdict", "keys"),
    [
        (None, ["nvidia.com/gpu", "dedicated"]),  # no gpu-check in the image (a CPU image)
        ("present", ["nvidia.com/gpu", "dedicated"]),
        ("absent", ["dedicated"]),  # a GPU image on a CPU-only machine
        ("no-driver", ["dedicated"]),  # GPU on the bus, driver not loaded (Secure Boot)
    ],
)
def test_gpu_taints_follow_this_machines_gpu_check(tmp_path, ca, capsys, verdict, keys):
    """A GPU image booted on a machine without a usable GPU joined with the profile's
    `nvidia.com/gpu` NoSchedule taint: no ordinary pod could run there (issue 11)."""
    cfg = make_cfg(tmp_path, ca, taints=GPU_TAINTS)
    if verdict is not None:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "gpu").write_text(verdict + "\n")  # as install-nvidia.sh writes it
    sysm, http = FakeSystem(), FakeHttp([(200, {}, enrollment())])
    rc, _ = run_agent(cfg, sysm, http)
    assert rc == 0
    jc = yaml.safe_load(sysm.join_configs[0])
    assert [t["key"] for t in jc["nodeRegistration"]["taints"]] == keys
    said = "joining without the GPU taints ['nvidia.com/gpu']" in capsys.readouterr().err
    assert said == (verdict in ("absent", "no-driver"))


def test_the_agent_asks_for_one_request_per_connection(tmp_path) -> None:
    """Issue 17: the agent sends `Connection: close`, so the hub answers and closes at once
    instead of waiting keepalive_seconds for a second request (a real TLS http.server on
    loopback records the header and the connection's own fate)."""
    import http.server
    import threading

    ca_pem, _, srv_pem, srv_key = make_ca_and_server(["127.0.0.1"])
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    (tmp_path / "srv.pem").write_bytes(srv_pem)
    (tmp_path / "srv.key").write_bytes(srv_key)
    seen: list[str | None] = []

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive unless the client says otherwise

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Connection"))
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"https://127.0.0.1:{srv.server_address[1]}/v1/enroll"
        st, _, _ = agent.Http(str(tmp_path / "ca.pem"), 10).request("POST", url, "x", {"a": 1})
    finally:
        srv.shutdown()
        srv.server_close()
    assert st == 200 and seen == ["close"]
