"""Boot tests without QEMU: the seed user-data, "joined" from the hub's side, the image
options (builder.boottest); the guest report and the checks over it (tests/support)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from builder import boottest
from builder.boottest.node import JoinWatch
from builder.errors import BuilderError, UsageError
from tests.support import bootcheck
from tests.support.baseimage import provision_user_data
from tests.support.guest.nodeforge_bootcheck import REQUIRED_SYSCTLS
from tests.support.reportchecks import (
    Expect,
    check_joined,
    check_not_configured,
    check_reboot,
)

EXPECT = Expect(
    site="aws",
    modules=("overlay", "br_netfilter"),
    sysctls={k: "1" for k in REQUIRED_SYSCTLS},
    swap_off=True,
    k8s_version="1.35.0",
    crio_minor="1.35",
    standin_versions={"kubernetes": "1.35.0-1.1", "crio": "1.35.0-1.1"},
    labels={"node.kubernetes.io/site": "aws"},
    taints=(),
    overlay_cidr="10.200.0.0/16",
    hub_ip="10.200.0.1",
    hub_pubkey="H" * 43 + "=",
    gpu=False,
)

JOIN = """apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: "10.200.0.1:6443"
    token: "<masked>"
nodeRegistration:
  name: "n1"
  kubeletExtraArgs:
    - name: "node-ip"
      value: "10.200.0.7"
    - name: "node-labels"
      value: "node.kubernetes.io/site=aws"
  taints: []
"""


NO_HANDLER = "failed to find runtime handler nvidia from runtime list [crun runc]"


def report(**over):
    r = {
        "outcome": "joined",
        "now": 1000.0,
        "machine_id": "0123456789abcdef0123456789abcdef",
        "modules": {"overlay": True, "br_netfilter": True},
        "sysctls": {k: "1" for k in REQUIRED_SYSCTLS},
        "swaps": [],
        "units": {
            **{u: {"enabled": "enabled"} for u in ("crio.service", "kubelet.service")},
            # one hub in the lab: the failover loop ends at once, successfully
            "nodeforge-failover.service": {"enabled": "enabled", "active": "inactive"},
        },
        "packages": {p: "1.35.0-1.1" for p in ("kubeadm", "kubelet", "kubectl", "cri-o")},
        "held": ["cri-o", "kubeadm", "kubectl", "kubelet"],
        "wg": {
            "addresses": ["10.200.0.7/32"],
            "peers": [{"pubkey": "H" * 43 + "=", "latest_handshake": 990}],
        },
        "standin_log": ["2026-01-01T00:00:00Z kubeadm join --config /run/nodeforge/join.yaml"],
        "join_config": JOIN,
        "enroll": {"Result": "success", "ExecMainStatus": "0"},
        "enroll_starts_this_boot": 1,
        "files": {"/etc/nodeforge/enroll-token": None},
        "cloud_init": {"v1": {"errors": []}},
        "ordering_cycles": [],
        "crio_active": "active",
        "containers": {
            "default": {"rc": 0, "out": "handler crun\ncrun: container\n", "err": ""},
            "nvidia": {"rc": 1, "out": "", "err": NO_HANDLER},
            "nvidia-gpu": {"rc": 1, "out": "", "err": NO_HANDLER},
        },
        "gpu": {"check": {"LoadState": "not-found"}, "kubelet_extra_args": ""},
    }
    r.update(over)
    return r


def console_with(rep: dict, garble: bool = False) -> str:
    body = json.dumps(rep, separators=(",", ":"))
    sha = hashlib.sha256(body.encode()).hexdigest()[:12]
    if garble:
        body = body.replace("joined", "joimed")
    return f"[  1.0] boot\nlogin:\n{bootcheck.MARKER} sha={sha} {body}\n[ 2.0] reboot: Power down\n"


def test_a_good_report_passes_and_each_fault_is_named():
    assert check_joined(report(), EXPECT) == []
    cases = {
        "br_netfilter": {"modules": {"overlay": True, "br_netfilter": False}},
        "net.ipv4.ip_forward": {"sysctls": {**report()["sysctls"], "net.ipv4.ip_forward": "0"}},
        "swap is on": {"swaps": ["/swap.img file 1 0 -2"]},
        "kubelet 1.35.1-1.1": {"packages": {**report()["packages"], "kubelet": "1.35.1-1.1"}},
        "handshake": {"now": 5000.0},
        "node-ip": {"join_config": JOIN.replace('value: "10.200.0.7"', 'value: "10.0.2.15"')},
        "labels": {"join_config": JOIN.replace("site=aws", "site=x")},
        "started 2 times": {"enroll_starts_this_boot": 2},
        "machine-id": {"machine_id": ""},
        "ordering cycles": {"ordering_cycles": ["Found ordering cycle on kubelet.service"]},
        "token is still on the node": {"files": {"/etc/nodeforge/enroll-token": "0o600"}},
        "crio.service is 'failed'": {"crio_active": "failed"},
        "nodeforge-failover.service is not enabled or failed": {
            "units": {
                **report()["units"],
                "nodeforge-failover.service": {"enabled": "enabled", "active": "failed"},
            }
        },
        "no container started through the default runtime": {
            "containers": {"default": {"rc": 1, "out": "", "err": "no runtime binary found"}}
        },
    }
    for needle, over in cases.items():
        problems = "\n".join(check_joined(report(**over), EXPECT))
        assert needle in problems, (needle, problems)


def test_reboot_and_failure_checks():
    first = report(boot_id="a", joined_marker="5")
    again = report(
        boot_id="b",
        joined_marker="5",
        enroll={"ConditionResult": "no", "ExecMainStartTimestampMonotonic": "0"},
        enroll_starts_this_boot=0,
    )
    assert check_reboot(first, again) == []
    assert check_reboot(first, {**again, "enroll_starts_this_boot": 1})
    assert check_reboot(first, {**again, "machine_id": "f" * 32})
    failed = report(
        outcome="enroll-failed",
        wg={"conf_exists": False, "addresses": [], "peers": []},
        files={},
        joined_marker=None,
        standin_log=[],
        enroll={"ExecMainStatus": "78", "ActiveState": "failed"},
    )
    assert check_not_configured(failed) == []
    half = {**failed, "wg": {"conf_exists": True, "addresses": []}}
    assert "wg0.conf was written" in check_not_configured(half)


def test_parse_report_takes_the_marker_line_and_checks_its_checksum():
    rep = report()
    assert bootcheck.parse_report(console_with(rep)) == rep
    with pytest.raises(BuilderError, match="garbled"):
        bootcheck.parse_report(console_with(rep, garble=True))
    with pytest.raises(BuilderError, match="no NODEFORGE-BOOTCHECK"):
        bootcheck.parse_report("[ 1.0] nothing here\n")


def test_node_user_data_keeps_the_site_data_and_adds_the_token():
    site = (
        b"#cloud-config\n# rendered\nlocale: C.UTF-8\n"
        b"write_files:\n  - path: /etc/a\n    content: x\nruncmd:\n  - [true]\n"
    )
    out = boottest.node_user_data(site, site="aws", hostname="aws-node1", token="nf1.abc.def")
    assert out.startswith(b"#cloud-config\n")
    doc = yaml.safe_load(out)
    assert doc["locale"] == "C.UTF-8" and doc["runcmd"] == [[True]]
    assert doc["hostname"] == "aws-node1"
    paths = [(f["path"], f.get("permissions")) for f in doc["write_files"]]
    assert paths == [("/etc/a", None), ("/etc/nodeforge/enroll-token", "0600")]
    with pytest.raises(BuilderError):
        boottest.node_user_data(b"locale: C\n", site="aws", hostname="n", token="t")


def test_the_check_program_is_real_python_and_its_unit_does_not_order_a_cycle(tmp_path):
    compile(bootcheck.SCRIPT.read_text(), str(bootcheck.SCRIPT), "exec")
    unit = bootcheck.UNIT.read_text()
    assert "DefaultDependencies=no" in unit and "After=basic.target multi-user.target" in unit
    assert "WantedBy=multi-user.target" in unit
    assert f"ExecStart=/usr/bin/python3 {bootcheck.SCRIPT_IN_ROOT}" in unit
    bootcheck.install(tmp_path)
    script = tmp_path / bootcheck.SCRIPT_IN_ROOT.lstrip("/")
    assert script.read_bytes() == bootcheck.SCRIPT.read_bytes() and script.stat().st_mode & 0o111
    link = tmp_path / "etc/systemd/system/multi-user.target.wants/nodeforge-bootcheck.service"
    assert link.is_symlink() and str(link.readlink()) == bootcheck.UNIT_IN_ROOT
    # the STAND-IN GPU: only with its kernel argument, before the image's GPU check
    gpu_unit = bootcheck.STANDIN_GPU_UNIT.read_text()
    for line in ("ConditionKernelCommandLine=|nodeforge.standin.gpu=1",
                 "ConditionKernelCommandLine=|nodeforge.standin.gpu=nodriver",
                 "DefaultDependencies=no", "WantedBy=sysinit.target"):  # fmt: skip
        assert line in gpu_unit.splitlines(), line
    before = next(x for x in gpu_unit.splitlines() if x.startswith("Before="))
    assert "nodeforge-gpu-check.service" in before.split() and "sysinit.target" in before
    link = tmp_path / "etc/systemd/system/sysinit.target.wants/nodeforge-standin-gpu.service"
    assert str(link.readlink()) == bootcheck.STANDIN_GPU_UNIT_IN_ROOT
    assert (tmp_path / bootcheck.STANDIN_GPU_SCRIPT_IN_ROOT.lstrip("/")).stat().st_mode & 0o111


class FakeLab:
    """What JoinWatch asks a lab: is the hub up, its handshakes, its nodes."""

    def __init__(self, handshakes, nodes, running=True):
        self._hs, self._nodes, self.running, self.asked = handshakes, nodes, running, 0

    def hub_running(self):
        return self.running

    def handshakes(self):
        return self._hs

    def nodes(self):
        self.asked += 1
        return self._nodes


def test_joined_needs_the_hub_state_and_a_handshake_from_this_boot():
    row = {"hostname": "n1", "pubkey": "K1", "state": "joined", "ip": "10.200.0.7"}
    since = 1000.0
    # a handshake from before this boot (the previous boot's): not joined, the DB not asked
    old = FakeLab({"K1": 990}, [row])
    assert not JoinWatch(old, "n1", since)(final=True) and old.asked == 0
    # fresh handshake, but the hub still has the node pending
    pending = FakeLab({"K1": 1005}, [{**row, "state": "pending"}])
    assert not JoinWatch(pending, "n1", since)(final=True)
    # another node's handshake does not count
    other = FakeLab({"K2": 1005}, [row, {**row, "hostname": "n2", "pubkey": "K2"}])
    assert not JoinWatch(other, "n1", since)(final=True)
    # the hub down: not joined
    down = FakeLab({"K1": 1005}, [row], running=False)
    assert not JoinWatch(down, "n1", since)(final=True)
    ok = JoinWatch(FakeLab({"K1": 1005}, [row]), "n1", since)
    assert ok(final=True) and ok.row == row and ok.handshake == 1005
    # between polls the watch does not ask again (cheap on a loaded host)
    lab = FakeLab({}, [row])
    w = JoinWatch(lab, "n1", since)
    assert not w() and not w()
    lab._hs = {"K1": 1005}
    assert not w()  # within HUB_POLL of the last look
    assert w(final=True)


def test_settled_waits_for_the_agents_console_line_or_a_grace(monkeypatch):
    """The node is powered off once the hub sees it joined AND the agent said so on the
    console (its joined marker written): at once, not after a fixed wait; without the line
    (a console that is not the serial port) only after the grace."""
    from builder.boottest import node as node_mod
    from builder.node import agent

    row = {"hostname": "n1", "pubkey": "K1", "state": "joined", "ip": "10.200.0.7"}
    now = [500.0]
    monkeypatch.setattr(node_mod.time, "monotonic", lambda: now[0])
    line = f"\r\n{agent.PREFIX} {agent.JOINED_SAY}: overlay address 10.100.0.7\r\n"
    ready = node_mod.Settled(JoinWatch(FakeLab({"K1": 1005}, [row]), "n1", 1000.0), grace=20)
    assert ready("[  40.1] booting\n" + line)  # joined and said: at once
    # the agent's line alone is not "joined": the hub decides
    pending = FakeLab({"K1": 1005}, [{**row, "state": "pending"}])
    assert node_mod.Settled(JoinWatch(pending, "n1", 1000.0))(line, final=True) is False
    # joined, no line: not before the grace, then yes
    quiet = node_mod.Settled(JoinWatch(FakeLab({"K1": 1005}, [row]), "n1", 1000.0), grace=20)
    assert not quiet("[  40.1] booting\n")
    now[0] += 19.5
    assert not quiet("[  60.0] still nothing\n")
    now[0] += 0.5
    assert quiet("[  61.0] still nothing\n")
    # the line quoted inside another line (e.g. a journal echo) is not the agent's line
    echo = node_mod.Settled(JoinWatch(FakeLab({"K1": 1005}, [row]), "n1", 1000.0), grace=20)
    assert not echo(f"x[1]: {agent.PREFIX} {agent.JOINED_SAY}\n")


def test_a_node_trying_another_hub_fails_the_boot_at_once_with_why():
    """The agent names its hub on the console when it cannot reach it: the lab's own URL
    (its hub not up yet) is a wait; any other is an image built for another hub, which
    will never join here: a clear failure at once, not a timeout after 900 s."""
    from builder.boottest import node as node_mod
    from builder.boottest.constants import HUB_URL
    from builder.node import agent

    def line(url):
        return (f"[  50.2] systemd[1]: Started x\r\n{agent.PREFIX} {agent.UNREACHABLE_SAY} "
                f"{url}: [Errno 111] Connection refused; retrying (journalctl -u "
                "nodeforge-enroll)\r\n")  # fmt: skip

    assert HUB_URL == "https://10.0.2.2:8443"
    assert node_mod.OTHER_HUB.search(line(HUB_URL)) is None
    m = node_mod.OTHER_HUB.search(line("https://hub.example.com:8443"))
    assert m is not None and m.group(1) == "https://hub.example.com:8443"
    # a longer URL that starts with the lab's is another hub
    m = node_mod.OTHER_HUB.search(line(HUB_URL + "0"))
    assert m is not None and m.group(1) == HUB_URL + "0"
    msg = node_mod.other_hub_message("https://hub.example.com:8443")
    assert "https://hub.example.com:8443" in msg and HUB_URL in msg and "baked" in msg


def test_a_node_that_stops_for_good_fails_a_boot_that_must_join_at_once():
    """The agent's permanent failure (its console line) ends a boot that waits for "joined"
    at once, in its own words, not at the boot timeout; a boot that only watches a failure
    (an expired token's) is not ended by it; a timeout stays a timeout."""
    import re

    from builder.boottest import node as node_mod
    from builder.boottest import qemu
    from builder.node import agent

    line = (f"\r\n{agent.PREFIX} {agent.STOPPED_SAY} hub refused enrollment: HTTP 403: token "
            "expired\r\n")  # fmt: skip
    must_join = [re.compile(x, re.M) for x in node_mod.failure_patterns(True)]
    watching = [re.compile(x, re.M) for x in node_mod.failure_patterns(False)]
    assert any(rx.search(line) for rx in must_join)
    assert not any(rx.search(line) for rx in watching)
    failover = f"\r\n{agent.PREFIX} failover FAILED, not retrying: no hub answers\r\n"
    assert not any(rx.search(failover) for rx in must_join)  # joined already: not a stop
    got = node_mod.failed_message(qemu.BootFailed("guest failed: console matched 'x': 'y'", line))
    assert got.message.startswith("the node's enrollment stopped for good: hub refused "
                                  "enrollment: HTTP 403: token expired\n")  # fmt: skip
    timeout = qemu.BootFailed("timed out after 900 s waiting for ['ready']", line)
    assert node_mod.failed_message(timeout) is timeout


def test_power_off_presses_at_once_and_again_until_the_guest_is_off(monkeypatch):
    """A guest that never powers off by itself is not waited for: the button is pressed at
    success, again every PRESS_EVERY s; one that is off already is not pressed."""
    from builder.boottest import qemu

    class Proc:
        def __init__(self, off_after_presses):
            self.left, self.waits = off_after_presses, []

        def poll(self):
            return 0 if self.left <= 0 else None

        def wait(self, timeout):
            self.waits.append(timeout)
            if self.left > 0:
                raise qemu.subprocess.TimeoutExpired("qemu", timeout)
            return 0

    presses = []

    def press(proc):
        def f():
            presses.append(1)
            proc.left -= 1

        return f

    p = Proc(1)  # takes the first press
    assert qemu._power_off(p, 20, press(p)) and len(presses) == 1 and p.waits == []
    presses.clear()
    p = Proc(3)  # the first two presses are lost (no power-key handler yet)
    assert qemu._power_off(p, 20, press(p)) and len(presses) == 3
    assert p.waits == [qemu.PRESS_EVERY, qemu.PRESS_EVERY]
    presses.clear()
    p = Proc(0)  # off already
    assert qemu._power_off(p, 20, press(p)) and presses == []
    presses.clear()
    p = Proc(10**6)  # never: gives up after the wait, pressing meanwhile
    now = [0.0]
    monkeypatch.setattr(qemu.time, "monotonic", lambda: now[0])

    def wait(timeout):
        now[0] += timeout
        raise qemu.subprocess.TimeoutExpired("qemu", timeout)

    p.wait = wait
    assert not qemu._power_off(p, 12, press(p)) and len(presses) == 3  # at 0, 5, 10 s
    # no button: the guest must power off by itself within the wait
    q = Proc(10**6)
    q.wait = wait
    assert not qemu._power_off(q, 12, None)


def test_boot_image_refuses_what_it_cannot_boot(tmp_path):
    with pytest.raises(UsageError, match="no such disk image"):
        boottest.boot_image(tmp_path / "none.qcow2")
    img = tmp_path / "disk.raw"
    img.write_bytes(b"\0" * 4096)
    with pytest.raises(UsageError, match="exclude each other"):
        boottest.boot_image(img, uefi=True, kernel=img)
    with pytest.raises(UsageError, match="need --kernel"):
        boottest.boot_image(img, append="root=/dev/vda")
    with pytest.raises(UsageError, match="--kernel: .*no such file"):
        boottest.boot_image(img, kernel=tmp_path / "vmlinuz")


def test_provision_user_data_carries_the_tree(tmp_path):
    import base64
    import io
    import tarfile

    for part in ("scripts", "files"):
        (tmp_path / part).mkdir()
    (tmp_path / "scripts" / "provision.sh").write_text("echo hi\n")
    (tmp_path / "files" / "x").write_text("y")
    doc = yaml.safe_load(provision_user_data(tmp_path))
    blob = base64.b64decode(doc["write_files"][0]["content"])
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        names = tf.getnames()
    assert "scripts/provision.sh" in names and "files/x" in names
    assert "test/etc/systemd/system/nodeforge-bootcheck.service" in names
    assert doc["power_state"]["mode"] == "poweroff"


def test_node_seeds_site_or_node_only_and_static(tmp_path):
    from builder.boottest.scenarios import node_files, static_address
    from builder.targets import seed

    (tmp_path / "cloud-init").mkdir()
    (tmp_path / "cloud-init/user-data").write_bytes(b"#cloud-config\nlocale: C.UTF-8\n")
    lab_site = boottest.LabSite("onprem", None, tmp_path, None, {})  # type: ignore[arg-type]
    # --node-seed-only: exactly what `builder seed` writes for that node
    only = node_files(lab_site, "onprem-node2", "nf1.a.b", 1, True, True)
    assert only == seed.node_seed(site="onprem", hostname="onprem-node2", token="nf1.a.b",
                                  ip="10.0.2.101/24", gateway="10.0.2.2", dns=["10.0.2.3"],
                                  interface_match="e*")  # fmt: skip
    net = yaml.safe_load(only["network-config"])
    assert net["ethernets"]["primary"]["addresses"] == [static_address(1)] == ["10.0.2.101/24"]
    assert "locale" not in yaml.safe_load(only["user-data"])
    # default: the site's user-data + the node's entries; static adds the network-config
    site = node_files(lab_site, "onprem-node1", "nf1.a.b", 0, False, True)
    doc = yaml.safe_load(site["user-data"])
    assert doc["locale"] == "C.UTF-8" and doc["hostname"] == "onprem-node1"
    assert yaml.safe_load(site["meta-data"])["local-hostname"] == "onprem-node1"
    assert "10.0.2.100/24" in site["network-config"].decode()
    assert "network-config" not in node_files(lab_site, "n", "t", 0, False, False)


def test_a_changed_standin_program_changes_the_disk_key(tmp_path, monkeypatch):
    """Cached stand-in disks are keyed by the stand-in programs too (they were not)."""
    import shutil

    from tests.support import nodedisk, standins

    real = Path(standins.__file__)
    fake = tmp_path / "support"
    shutil.copytree(real.parent / "standin_programs", fake / "standin_programs")
    shutil.copy2(real, fake / "standins.py")
    tree = tmp_path / "tree"
    (tree / "files").mkdir(parents=True)
    (tree / "scripts").mkdir()
    tar = tmp_path / "root.tar"
    monkeypatch.setattr(standins, "__file__", str(fake / "standins.py"))
    before = nodedisk.disk_key(tar, tree, {"kubeadm": "1.35.0-1.1"})
    with (fake / "standin_programs" / "crio.py").open("a") as f:
        f.write("\n# changed\n")
    assert nodedisk.disk_key(tar, tree, {"kubeadm": "1.35.0-1.1"}) != before


GPU_RUNS = {
    "default": {"rc": 0, "out": "crio: container c1 handler crun runtime x\ncrun: container\n"},
    "nvidia": {"rc": 0, "out": "handler nvidia\ncrun: container\n", "err": ""},
    "nvidia-gpu": {"rc": 1, "out": "", "err": "failed to initialize NVML"},
}
GPU_NONE = {
    "check": {"LoadState": "loaded", "Result": "success", "ExecMainStatus": "0"},
    "check_journal": ["gpu-check: no usable NVIDIA GPU, no GPU label"],
    "kubelet_extra_args": "",
    "cdi_spec": False,
    "nvidia_smi": {"rc": 9, "out": "couldn't communicate with the NVIDIA driver"},
    "standin": None,
}
GPU_PRESENT = {
    **GPU_NONE,
    "check_journal": ["gpu-check: NVIDIA GPU present: --node-labels=nvidia.com/gpu.present=true"],
    "kubelet_extra_args": "--node-labels=nvidia.com/gpu.present=true",
    "cdi_spec": True,
    "nvidia_smi": {"rc": 0, "out": "GPU 0: NVIDIA stand-in GPU (0000:01:00.0)"},
    "standin": "1",
}


def _problems(e, *, device=False, **over):
    from tests.support.reportchecks import check_containers, check_gpu

    r = report(**over)
    return "\n".join(check_containers(r, e, gpu_device=device) + check_gpu(r, e, device=device))


def test_gpu_image_container_checks():
    import dataclasses

    gpu = dataclasses.replace(EXPECT, gpu=True)
    assert _problems(gpu, containers=GPU_RUNS, gpu=GPU_NONE) == ""
    bad = {**GPU_RUNS, "nvidia-gpu": {"rc": 0, "out": "crun: container", "err": ""}}
    assert "did not fail like the real runtime" in _problems(gpu, containers=bad, gpu=GPU_NONE)
    bad = {**GPU_RUNS, "nvidia": {"rc": 1, "out": "", "err": "error locating runtime"}}
    assert "nvidia handler" in _problems(gpu, containers=bad, gpu=GPU_NONE)


def test_gpu_checks_with_and_without_a_gpu_and_on_a_cpu_image():
    """Each state passes with its own report and fails with the others' (issue 11)."""
    import dataclasses

    gpu = dataclasses.replace(EXPECT, gpu=True)
    injected = {
        **GPU_RUNS,
        "nvidia-gpu": {"rc": 0, "out": "devices all injected (stand-in)\ncrun: container\n"},
    }
    assert _problems(EXPECT) == ""  # CPU image
    assert _problems(gpu, containers=GPU_RUNS, gpu=GPU_NONE) == ""
    assert _problems(gpu, device=True, containers=injected, gpu=GPU_PRESENT) == ""
    # a GPU node whose gpu-check was skipped / found nothing: no label, no CDI spec
    skipped = {**GPU_PRESENT, "check_journal": [], "kubelet_extra_args": "", "cdi_spec": False}
    got = _problems(gpu, device=True, containers=injected, gpu=skipped)
    for needle in ("GPU check did not run", "did not find the GPU", "without the GPU label",
                   "no CDI spec"):  # fmt: skip
        assert needle in got, got
    # the GPU request on a GPU node was not given its devices
    got = _problems(gpu, device=True, containers=GPU_RUNS, gpu=GPU_PRESENT)
    assert "did not get its devices" in got
    # a node without a GPU labelled as one; nvidia-smi answering there
    assert "without a GPU carries the GPU label" in _problems(
        gpu,
        containers=GPU_RUNS,
        gpu={**GPU_NONE, "kubelet_extra_args": GPU_PRESENT["kubelet_extra_args"]},
    )
    # nvidia made the default handler: every pod would go through it
    nv_default = {**GPU_RUNS, "default": {"rc": 0, "out": "handler nvidia\ncrun: container"}}
    assert "default runtime handler is not crun" in _problems(
        gpu, containers=nv_default, gpu=GPU_NONE
    )
    # ... and without the runtimes list it cannot find crun: no pod starts
    broken = {**GPU_RUNS, "default": {"rc": 1, "out": "", "err": "no runtime binary found"}}
    assert "no container started through the default runtime" in _problems(
        gpu, containers=broken, gpu=GPU_NONE
    )
    # a CPU image with the GPU bits
    assert "CPU image has an nvidia runtime handler" in _problems(EXPECT, containers=GPU_RUNS)
    assert "CPU image has a GPU check unit" in _problems(EXPECT, gpu=GPU_NONE)


def test_the_disk_key_of_a_stand_in_disk_does_not_change_with_the_commit(tmp_path, monkeypatch):
    """Issue 12: every commit rebuilt every stand-in disk (529 s in the clean-clone CI run):
    the commit and the build time went into the disk. Two renders at two commits differ;
    pinned, they make one disk key, and a changed script still makes another."""
    from builder import buildinfo
    from builder.site.profile import load_profile
    from builder.site.render import render_site
    from tests.support import nodedisk

    tar = tmp_path / "root.tar"
    vers = {"kubeadm": "1.35.0-1.1"}
    profile = load_profile("aws", None, [])
    trees = []
    for commit, epoch in (("aaaaaaaaaaaa", "1796000000"), ("bbbbbbbbbbbb", "1796100000")):
        monkeypatch.setattr(buildinfo, "builder_commit", lambda c=commit: c)
        monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
        trees.append(render_site(profile, tmp_path / commit).path)
    a, b = trees
    env_a = (a / "scripts/provision.env").read_text()
    assert "NF_BUILDER_COMMIT=aaaaaaaaaaaa" in env_a and "NF_BUILD_TIME=1796000000" in env_a
    assert nodedisk.disk_key(tar, a, vers) != nodedisk.disk_key(tar, b, vers)
    changed = {p.relative_to(a).as_posix() for p in nodedisk.pin_build_identity(a)}
    assert {"scripts/provision.env", "files/etc/nodeforge/provision.env",
            "files/etc/nodeforge/node.json"} <= changed  # fmt: skip
    nodedisk.pin_build_identity(b)
    assert nodedisk.disk_key(tar, a, vers) == nodedisk.disk_key(tar, b, vers)
    pinned = (a / "scripts/provision.env").read_text()
    assert f"NF_BUILDER_COMMIT={nodedisk.STANDIN_COMMIT}\n" in pinned
    assert json.loads((a / "files/etc/nodeforge/node.json").read_text())["build_time"] == (
        nodedisk.STANDIN_BUILD_TIME
    )
    with (b / "scripts/provision.sh").open("a") as f:
        f.write("\n# changed\n")
    assert nodedisk.disk_key(tar, a, vers) != nodedisk.disk_key(tar, b, vers)
    with pytest.raises(BuilderError, match="no provision.env"):
        nodedisk.pin_build_identity(tmp_path / "empty")
