"""The stand-in programs behave like the real ones where we rely on them (UPSTREAM.md).

They run here on the host with python3, pointed at temporary files: crio with its real
``--config``/``--config-dir`` flags, nvidia-container-runtime with the real
``NVIDIA_CTK_CONFIG_FILE_PATH`` override. Expected behaviour comes from the register.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.standins import PROGRAMS, register

REG = register()
# python3 running our own stand-in programs on temp files: no system tools, no network
pytestmark = pytest.mark.allow_subprocess


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "NODEFORGE_STANDIN_LOG": str(tmp_path / "standins.log")}


def exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def libexec(tmp_path: Path) -> dict[str, str]:
    """conmon, crun and runc where a test's config says they are."""
    d = tmp_path / "libexec"
    out = {"conmon": str(exe(d / "conmon", (PROGRAMS / "conmon.py").read_text()))}
    for name in ("crun", "runc"):
        text = (PROGRAMS / "oci_runtime.sh").read_text().replace("@NAME@", name)
        out[name] = str(exe(d / name, text))
    return out


def crio(tmp_path: Path, env: dict[str, str], files: dict[str, str], *args: str):
    conf = tmp_path / "crio.conf.d"
    for rel, text in files.items():
        (conf / rel).parent.mkdir(parents=True, exist_ok=True)
        (conf / rel).write_text(text)
    argv = [sys.executable, str(PROGRAMS / "crio.py"), "--config", "", "--config-dir", str(conf)]
    return subprocess.run([*argv, *args], env=env, capture_output=True, text=True, timeout=30)


def shipped(libexec: dict[str, str]) -> str:
    return f"""[crio.runtime]
default_runtime = "crun"
[crio.runtime.runtimes.crun]
runtime_path = "{libexec["crun"]}"
runtime_root = "/run/crun"
monitor_path = "{libexec["conmon"]}"
allowed_annotations = ["io.containers.trace-syscall"]
[crio.runtime.runtimes.runc]
runtime_path = "{libexec["runc"]}"
runtime_root = "/run/runc"
monitor_path = "{libexec["conmon"]}"
"""


def test_dropins_lexical_recursive_later_wins(tmp_path, env, libexec):
    files = {
        "10-crio.conf": shipped(libexec),
        "20-a.conf": '[crio.runtime]\ndefault_runtime = "runc"\n',
        "30-sub/x.conf": '[crio.runtime]\ncgroup_manager = "cgroupfs"\n',
        "99-z.conf.bak": '[crio.runtime]\ndefault_runtime = "crun"\n',  # no suffix filter
    }
    r = crio(tmp_path, env, files, "config")
    assert r.returncode == 0, r.stderr
    assert 'default_runtime = "crun"' in r.stdout


def test_runtime_table_replaces_the_handler_whole(tmp_path, env, libexec):
    override = f'[crio.runtime.runtimes.crun]\nruntime_path = "{libexec["crun"]}"\n'
    r = crio(tmp_path, env, {"10-crio.conf": shipped(libexec), "20-x.conf": override}, "config")
    # monitor_path was not restated: conmon is looked up in $PATH, where it is not
    assert r.returncode == 1
    assert 'exec: "conmon": executable file not found in $PATH' in r.stderr


def test_non_default_handler_failing_is_dropped(tmp_path, env, libexec):
    bad = '[crio.runtime.runtimes.nvidia]\nruntime_path = "/nonexistent/ncr"\n'
    r = crio(tmp_path, env, {"10-crio.conf": shipped(libexec), "99-n.conf": bad}, "config")
    assert r.returncode == 0
    assert "invalid runtime_path for runtime 'nvidia'" in r.stderr
    assert "runtimes.nvidia" not in r.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[crio.runtime]\ndefault_runtime = "nvidia"\n', "no runtime entry table"),
        ('[crio.runtime]\nconmon_cgroup = "pod"\ncgroup_manager = "cgroupfs"\n', None),
        (
            '[crio.runtime]\nconmon_cgroup = "system.slice"\ncgroup_manager = "cgroupfs"\n',
            "cgroupfs manager conmon cgroup should be 'pod' or empty",
        ),
        ('[crio.runtime]\nconmon_cgroup = "foo"\n', "conmon cgroup should be 'pod' or a systemd"),
        ('[crio.runtime]\ncgroup_manager = "cgroupfs"\n', None),
        ("[crio.runtime\n", "unable to decode configuration"),
    ],
)
def test_what_crio_refuses(tmp_path, env, libexec, extra, message):
    r = crio(tmp_path, env, {"10-crio.conf": shipped(libexec), "20-x.conf": extra}, "config")
    if message is None:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 1 and message in r.stderr


def ncr(tmp_path: Path, env: dict[str, str], config: str | None, *args: str, path: str = ""):
    cfg = tmp_path / "config.toml"
    if config is not None:
        cfg.write_text(config)
    e = {**env, "NVIDIA_CTK_CONFIG_FILE_PATH": str(cfg)}
    if path:
        e["PATH"] = path
    argv = [sys.executable, str(PROGRAMS / "nvidia_container_runtime.py"), *args]
    return subprocess.run(argv, env=e, capture_output=True, text=True, timeout=30)


def test_ncr_default_candidates_miss_libexec(tmp_path, env, libexec):
    default_dirs = REG["nvidia"]["search_path_default"]
    if any(os.path.exists(f"{d}/{n}") for d in default_dirs for n in ("runc", "crun")):
        pytest.skip("this host has runc/crun in a default directory")
    r = ncr(tmp_path, env, None, "--version")
    assert r.returncode == 0
    # crun/runc only in a libexec dir: not on PATH nor in the default dirs
    r = ncr(tmp_path, env, None, "state", "x", path=str(tmp_path / "empty"))
    assert r.returncode == 1
    assert REG["nvidia"]["error_no_runtime"].format(candidates="runc crun") in r.stderr


def test_ncr_absolute_runtimes_and_path_lookup(tmp_path, env, libexec):
    cfg = f'[nvidia-container-runtime]\nruntimes = ["/nonexistent/runc", "{libexec["crun"]}"]\n'
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"process": {"env": []}}')
    r = ncr(tmp_path, env, cfg, "run", "--bundle", str(bundle), "c1")
    assert r.returncode == 0, r.stderr
    assert "crun: container c1 started" in r.stdout
    # a bare name is found through $PATH
    r = ncr(
        tmp_path,
        env,
        '[nvidia-container-runtime]\nruntimes = ["runc"]\n',
        "run",
        "--bundle",
        str(bundle),
        "c2",
        path=os.path.dirname(libexec["runc"]),
    )
    assert r.returncode == 0 and "runc: container c2 started" in r.stdout
    r = ncr(tmp_path, env, "[nvidia-container-runtime]\nruntimes = []\n", "state", "x")
    assert r.returncode == 1 and "at least one runtime candidate" in r.stderr


def test_ncr_gpu_request_needs_the_driver(tmp_path, env, libexec):
    cfg = f'[nvidia-container-runtime]\nruntimes = ["{libexec["crun"]}"]\n'
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}}')
    r = ncr(tmp_path, env, cfg, "run", "--bundle", str(bundle), "c1")
    if os.path.exists("/proc/driver/nvidia/version") or os.path.isdir("/sys/module/nvidia"):
        pytest.skip("this host has an NVIDIA driver loaded")
    assert r.returncode == 1
    n = REG["nvidia"]
    assert n["error_no_driver"].format(nvml=n["nvml_error_driver_not_loaded"]) in r.stderr
    (bundle / "config.json").write_text('{"process": {"env": ["NVIDIA_VISIBLE_DEVICES=void"]}}')
    assert ncr(tmp_path, env, cfg, "run", "--bundle", str(bundle), "c2").returncode == 0


def test_nvidia_ctk_sets_the_runtimes_list(tmp_path, env):
    cfg = tmp_path / "nct" / "config.toml"
    argv = [sys.executable, str(PROGRAMS / "nvidia_ctk.py")]
    want = ":".join(h["runtime_path"] for h in REG["crio"]["runtimes"].values())
    for args in (
        ["--quiet", "config", f"--config-file={cfg}", "--in-place"],
        [
            "config",
            "--config-file",
            str(cfg),
            "--in-place",
            "--set",
            f"nvidia-container-runtime.runtimes={want}",
        ],
    ):
        r = subprocess.run([*argv, *args], env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    import tomllib

    data = tomllib.loads(cfg.read_text())
    assert data["nvidia-container-runtime"]["runtimes"] == want.split(":")
    assert data["nvidia-container-runtime"]["mode"] == "auto"


def test_ctk_cdi_generate_and_nvidia_smi_without_a_driver(tmp_path, env):
    if os.path.exists("/proc/driver/nvidia/version") or os.path.isdir("/sys/module/nvidia"):
        pytest.skip("this host has an NVIDIA driver loaded")
    n = REG["nvidia"]
    argv = [sys.executable, str(PROGRAMS / "nvidia_ctk.py"), "cdi", "generate"]
    r = subprocess.run([*argv, f"--output={tmp_path / 'nvidia.yaml'}"], env=env,
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 1 and not (tmp_path / "nvidia.yaml").exists()
    assert n["ctk_cdi_error_no_driver"].format(nvml=n["nvml_error_driver_not_loaded"]) in r.stderr
    smi = subprocess.run(["sh", str(PROGRAMS / "nvidia_smi.sh"), "-L"], env=env,
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert smi.returncode == n["nvidia_smi_exit_no_driver"]
