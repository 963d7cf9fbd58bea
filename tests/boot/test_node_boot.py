"""From first power-on to "joined": QEMU (TCG here) boots the stand-in node disk of each site.

The disk (tests/support/nodedisk.py) is a Debian bookworm root (STAND-IN for the installed
Ubuntu system) provisioned by our real scripts against the STAND-IN apt repository; it is
handed to `builder boot-test SITE --image DISK` like any built image. The guest gets the
site's real rendered user-data on a NoCloud seed with a one-time token, and enrolls with the
REAL hub (`builder hub serve`, wireguard-go) in a private network namespace; the product
decides "joined" from the hub's side. A TEST-ONLY program in the disk reports what the node
looks like once joined (tests/support/guest/); these tests check that report too.

Scenarios run side by side (one vCPU each, at most 2 guests at once; they are queued at
the session's start by tests/boot/conftest.py) to keep the lane short:
- `builder boot-test aws --image … --nodes 2 --json`: two nodes at once, then a reboot;
- onprem (GPU profile) on a GPT disk booted by OVMF (GRUB from the ESP), on a machine
  WITHOUT an NVIDIA GPU, then a reboot;
- hub unreachable for the first minute after the node's first attempt: onprem (GPU profile)
  on a machine WITH the TEST-ONLY stand-in NVIDIA GPU (kernel argument
  ``nodeforge.standin.gpu=1``: tests/support/guest/nodeforge_standin_gpu.sh);
- an expired token;
- no seed and no token: the agent says so at once on the console and in the journal;
- the qcow2 a REAL `packer build` makes for the aws site (target qcow2, from the STAND-IN
  base image, tests/support/packerimage.py), built once for the session:
  `builder boot-test aws --image THAT.qcow2` joins (the AMI/qcow2 path end to end), and two
  machines booted from it with NO seed, only the site token baked into it, join under two
  names of their own (`aws-<machine-id[:8]>`).

So the runtime chain (kubelet -> CRI-O -> [nvidia-container-runtime ->] crun) starts a
container on a CPU profile (aws), a GPU profile without a GPU and one with a GPU, each
checked for what must differ (``reportchecks.check_containers``/``check_gpu``).
"""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.boot.conftest import node_boot_missing
from tests.support.guest.nodeforge_bootcheck import REQUIRED_SYSCTLS
from tests.support.reportchecks import GPU_LABEL, check_gpu, check_joined, check_reboot

pytestmark = pytest.mark.boot

_missing = node_boot_missing()
if _missing:
    pytest.skip(f"node boot tests need {', '.join(_missing)}", allow_module_level=True)


def qcow2_run(runs, name: str) -> Any:
    if name not in runs:
        pytest.skip("packer not installed (make deps)")
    return runs[name].result()


@pytest.fixture(scope="module")
def aws_cli(runs) -> dict[str, Any]:
    out = runs["aws-cli"].result()
    assert out["result"] is not None, out["stderr"][-4000:]
    return out


def test_cli_two_nodes_boot_at_once_and_both_join(aws_cli, setups):
    res = aws_cli["result"]
    assert aws_cli["rc"] == 0, "\n".join(res["problems"]) + aws_cli["stderr"][-2000:]
    assert res["problems"] == []
    assert "timings (s):" in aws_cli["stderr"]  # the harness reports its timings
    nodes = res["nodes"]
    assert len(nodes) == 2 and all(n["joined"] for n in nodes)  # the hub's view
    addrs = [n["address"] for n in nodes]
    net = ipaddress.ip_network(setups["aws"].ident.overlay_cidr)
    assert len(set(addrs)) == 2 and all(ipaddress.ip_address(a) in net for a in addrs)
    assert all(n["handshake"] and n["seconds_to_joined"] > 0 for n in nodes)
    # the guests agree: each has the address the hub gave it
    reports = aws_cli["reports"]
    assert [r["wg"]["addresses"][0].split("/")[0] for r in reports] == addrs
    assert [r["node_id"] for r in reports] == [n["node_id"] for n in nodes]
    # node <-> node through the hub: each reached a TCP port on the other's overlay address
    # (nodes route the overlay to the hub; the hub forwards between its peers: issue 13)
    names = [r["hostname"] for r in reports]
    assert [r["peers"] for r in reports] == [{addrs[1]: names[1]}, {addrs[0]: names[0]}]
    # two boots of the same image: machine-ids generated fresh, and different
    mids = [r["machine_id"] for r in reports]
    assert len(set(mids)) == 2 and all(len(m) == 32 for m in mids)


def test_first_boot_has_everything_in_place(aws_cli, setups):
    exp = setups["aws"].expect
    reports = aws_cli["reports"]
    assert len(reports) == 2
    lab = aws_cli["result"]
    for r in reports:
        assert check_joined(r, exp) == []
        assert r["hostname"] in {n["node"] for n in lab["nodes"]}
        assert r["modules"]["overlay"] and r["modules"]["br_netfilter"]
        for key in REQUIRED_SYSCTLS:
            assert r["sysctls"][key] == "1", key
        assert r["sysctls"]["vm.overcommit_memory"] == "1"  # a profile extra (base.yaml)
        assert r["swaps"] == []
        for unit in ("crio.service", "kubelet.service"):
            assert r["units"][unit]["enabled"] == "enabled"
        for pkg in ("kubeadm", "kubelet", "kubectl"):
            assert r["packages"][pkg] == exp.standin_versions["kubernetes"]
        assert r["packages"]["cri-o"] == exp.standin_versions["crio"]
        address = r["wg"]["addresses"][0].split("/")[0]
        (peer,) = r["wg"]["peers"]
        assert peer["pubkey"] == exp.hub_pubkey and peer["latest_handshake"] > 0
        assert r["now"] - peer["latest_handshake"] < 180
        jc = yaml.safe_load(r["join_config"])
        args = {a["name"]: a["value"] for a in jc["nodeRegistration"]["kubeletExtraArgs"]}
        assert args["node-ip"] == address
        labels = dict(kv.split("=", 1) for kv in args["node-labels"].split(","))
        assert labels == exp.labels
        assert jc["nodeRegistration"]["taints"] == []
        assert jc["discovery"]["bootstrapToken"]["token"] == "<masked>"
        assert r["enroll"]["Result"] == "success" and r["enroll_starts_this_boot"] == 1
        assert r["ordering_cycles"] == []


def test_reboot_does_not_enroll_again(aws_cli):
    res = aws_cli["result"]
    assert res["reboot"]["joined"] and res["reboot"]["address"] == res["nodes"][0]["address"]
    first, again = aws_cli["reports"][0], aws_cli["reboot_report"]
    assert check_reboot(first, again) == []
    # the peers were checked on the first boot only (the other node is off by now)
    assert again.get("peers_skipped") and "peers_skipped" not in first
    assert again["outcome"] == "joined"
    assert again["enroll"]["ConditionResult"] == "no"  # skipped: /var/lib/nodeforge/joined
    assert again["enroll_starts_this_boot"] == 0
    assert again["machine_id"] == first["machine_id"] and again["boot_id"] != first["boot_id"]
    assert again["wg"]["addresses"] == first["wg"]["addresses"]  # wg-quick@wg0 brings it up


def test_the_checks_catch_a_wrong_node(aws_cli, setups):
    """The checks are not rubber stamps: a real report, altered, fails them."""
    exp = setups["aws"].expect
    good = aws_cli["reports"][0]
    assert check_joined(good, exp) == []
    bad: dict[str, Any] = copy.deepcopy(good)
    bad["sysctls"]["net.ipv4.ip_forward"] = "0"
    bad["modules"]["br_netfilter"] = False
    bad["packages"]["kubelet"] = "1.35.1-1.1"
    bad["swaps"] = ["/swap.img file 1048572 0 -2"]
    bad["join_config"] = bad["join_config"].replace("site=aws", "site=elsewhere")
    problems = "\n".join(check_joined(bad, exp))
    for needle in ("net.ipv4.ip_forward", "br_netfilter", "kubelet 1.35.1-1.1", "swap is on",
                   "labels"):  # fmt: skip
        assert needle in problems
    stale = copy.deepcopy(good)
    stale["now"] = good["now"] + 3600
    assert any("handshake" in p for p in check_joined(stale, exp))
    again = copy.deepcopy(aws_cli["reboot_report"])
    again["enroll_starts_this_boot"] = 1
    assert check_reboot(good, again)


def test_onprem_uefi_gpt_boot_without_a_gpu_joins_without_gpu_label_and_taint(runs, setups):
    out = runs["onprem-uefi"].result()
    res = out["result"]
    assert res is not None, out["stderr"][-4000:]
    assert out["rc"] == 0 and res["problems"] == [], "\n".join(res["problems"])
    assert res["uefi"] is True
    (r,) = out["reports"]
    console = Path(r["_console"]).read_text(errors="replace")
    assert "GRUB (UEFI) loading the kernel from the ext4 partition" in console
    exp = setups["onprem"].expect
    assert check_joined(r, exp) == []
    # the profile taints GPU nodes, but this machine has no GPU: joined without that taint
    assert list(exp.taints) == [("nvidia.com/gpu", "present", "NoSchedule")]
    jc = yaml.safe_load(r["join_config"])
    assert jc["nodeRegistration"]["taints"] == []
    assert r["packages"]["nvidia-container-toolkit"] == exp.standin_versions["nvidia_toolkit"]
    # no NVIDIA GPU in this machine: the GPU check said so, no GPU label, ordinary pods run
    # through crun, a GPU request through the nvidia handler fails like the real one (NVML)
    g = r["gpu"]
    assert g["standin"] is None and g["standin_unit"]["ConditionResult"] == "no"
    assert g["check_journal"] == ["gpu-check: no usable NVIDIA GPU, no GPU label"]
    assert GPU_LABEL not in g["kubelet_extra_args"] and g["cdi_spec"] is False
    runs = r["containers"]
    assert runs["default"]["rc"] == 0 and " handler crun " in runs["default"]["out"]
    assert runs["nvidia"]["rc"] == 0 and "crun: container" in runs["nvidia"]["out"]
    assert (
        runs["nvidia-gpu"]["rc"] != 0 and "failed to initialize NVML" in runs["nvidia-gpu"]["err"]
    )


def test_cpu_node_has_no_gpu_parts(aws_cli):
    """The CPU profile: containers through crun, no nvidia handler, no GPU check unit."""
    for r in aws_cli["reports"]:
        runs = r["containers"]
        assert runs["default"]["rc"] == 0 and " handler crun " in runs["default"]["out"]
        assert "crun: container" in runs["default"]["out"]
        assert "failed to find runtime handler nvidia" in runs["nvidia"]["err"]
        assert r["gpu"]["check"]["LoadState"] == "not-found"
        assert not any(p.startswith("nvidia-") for p in r["packages"])


def test_gpu_node_with_a_gpu_gets_label_and_devices(runs, setups):
    """The GPU profile on a machine with a (stand-in) NVIDIA GPU and its driver: the GPU
    check finds it before the kubelet starts, labels the node, writes the CDI spec, and a
    container with RuntimeClass nvidia asking for NVIDIA_VISIBLE_DEVICES=all gets them;
    ordinary pods still run through crun."""
    res = runs["hub-late"].result()
    r = res["report"]
    assert check_joined(r, setups["onprem"].expect, gpu_device=True) == []
    jc = yaml.safe_load(r["join_config"])
    taints = [(t["key"], t.get("value"), t["effect"]) for t in jc["nodeRegistration"]["taints"]]
    assert taints == [("nvidia.com/gpu", "present", "NoSchedule")]  # the profile's, kept
    g = r["gpu"]
    assert g["standin"] == "1" and g["standin_unit"]["ActiveState"] == "active"
    assert g["check_journal"] == [f"gpu-check: NVIDIA GPU present: {GPU_LABEL}"]
    assert g["kubelet_extra_args"].split() == [GPU_LABEL] and g["cdi_spec"] is True
    assert g["nvidia_smi"]["rc"] == 0 and "GPU 0:" in g["nvidia_smi"]["out"]
    runs_ = r["containers"]
    assert runs_["default"]["rc"] == 0 and " handler crun " in runs_["default"]["out"]
    gpu = runs_["nvidia-gpu"]
    assert gpu["rc"] == 0, gpu
    assert "devices all injected" in gpu["out"] and "crun: container" in gpu["out"]
    # the same checks fail on the report of the machine without a GPU, and vice versa
    without = runs["onprem-uefi"].result()["reports"][0]
    exp = setups["onprem"].expect
    assert any("did not find the GPU" in p for p in check_gpu(without, exp, device=True))
    assert any("carries the GPU label" in p for p in check_gpu(r, exp, device=False))


def test_hub_unreachable_at_first_node_retries_then_joins(runs):
    res = runs["hub-late"].result()
    assert res["problems"] == [], "\n".join(res["problems"])
    assert res["refused_attempts"] >= 1 and res["retries_logged"] >= 1
    assert res["console_unreachable"]  # the lab's URL on the console: a wait, not a failure
    assert res["outage_seconds"] >= 59
    assert res["report"]["outcome"] == "joined"


def test_expired_token_stops_cleanly(runs):
    res = runs["expired"].result()
    assert res["problems"] == [], "\n".join(res["problems"])
    r = res["report"]
    assert r["outcome"] == "enroll-failed"
    assert "token expired" in res["journal_message"]
    assert r["wg"]["conf_exists"] is False and r["wg"]["addresses"] == []
    assert r["joined_marker"] is None


def test_no_seed_no_token_says_so_on_the_console_and_in_the_journal(runs):
    """Issue 12: a machine with neither a seed nor a site token waited 300 s in silence."""
    res = runs["no-token"].result()
    assert res["problems"] == [], "\n".join(res["problems"])
    lines = res["console_lines"]
    # once written by the agent to the console, once from the journal (journald's copy)
    assert any("]: nodeforge-enroll: step=token" in x for x in lines)
    assert any("]: " not in x.split("nodeforge-enroll: no enrollment token")[0] for x in lines)
    assert all("builder hub token create" in x for x in lines)


def test_packer_built_qcow2_joins_through_boot_test(runs, qcow2_build):
    """The qcow2 `builder image` makes for a qcow2 site (real packer, stand-in base) booted
    by `builder boot-test aws --image THAT.qcow2`: joined, as the hub sees it."""
    out = qcow2_run(runs, "qcow2-cli")
    img = qcow2_build.result()
    res = out["result"]
    assert res is not None, out["stderr"][-4000:]
    assert out["rc"] == 0 and res["problems"] == [], "\n".join(res["problems"])
    assert res["image"] == str(img.qcow2.resolve())
    (n,) = res["nodes"]
    assert n["joined"] and n["handshake"] and n["seconds_to_joined"] > 0
    net = ipaddress.ip_network(img.lab.ident.overlay_cidr)
    assert ipaddress.ip_address(n["address"]) in net


def test_no_seed_site_token_machines_join_under_names_of_their_own(runs):
    """Issue 12: with no seed, every node enrolled under the image's one host name."""
    res = qcow2_run(runs, "site-token")
    assert res["problems"] == [], "\n".join(res["problems"]) + res.get("hub_log_tail", "")
    names = sorted(r["hostname"] for r in res["hub_nodes"])
    assert len(names) == 2 and names[0] != names[1]
    assert all(r["state"] == "joined" for r in res["hub_nodes"])
    assert "aws-node" not in names and "nodeforge-base" not in names
    assert res["site_token_used"] == 2


def test_an_image_built_for_another_hub_fails_at_once_saying_why(runs):
    """A user's image built for their own hub, booted by `builder boot-test`: its enrollment
    config is baked in and names their hub, which the lab cannot be. Before, the node waited
    for the boot timeout and the result said only "not joined"; now the agent names its hub
    on the console and boot-test stops the boot at once with what to do."""
    from tests.boot.conftest import OTHER_HUB_URL

    out = runs["other-hub"].result()
    res = out["result"]
    assert res is not None, out["stderr"][-4000:]
    assert out["rc"] == 1 and len(res["problems"]) == 1, res["problems"]
    (problem,) = res["problems"]
    want = (
        f"the image enrolls with the hub at {OTHER_HUB_URL}, not the lab's (https://10.0.2.2:8443)"
    )
    assert problem.startswith(f"aws-node1: not joined: {want}")
    assert "timed out" not in problem and "cannot resolve hub.example.test" in problem
    assert "baked in" in out["stderr"]  # the CLI's error says what to do
