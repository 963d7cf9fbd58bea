"""A timed-out `packer build` leaves no QEMU behind (real packer, real qemu builder, TCG).

packer 1.6.6 runs under panicwrap: its outer process ignores a SIGINT sent to it alone (it
expects the terminal to signal the whole process group: UPSTREAM.md, Packer). The builder
used to send SIGINT to that process only, then SIGKILL it after PACKER_STOP_SECONDS: the
real Packer, its qemu plugin and QEMU kept running (found on this machine, a QEMU at 100%
of a core with the build disk open).

The smallest honest build: the qemu builder booting an empty 64 MiB disk image, waiting for
an SSH that never comes. The build's wait "times out" once QEMU is running (the wait is
replaced, nothing else), so the test does not guess how long QEMU takes to start.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from builder.errors import BuilderError
from builder.run import run, which
from builder.targets import packer

pytestmark = pytest.mark.integration

for _tool in ("packer", "qemu-system-x86_64", "qemu-img"):
    if not which(_tool):
        pytest.skip(f"{_tool} not installed (make deps)", allow_module_level=True)

WAIT = 600.0  # seconds for QEMU to start on a loaded machine (TCG, no KVM)
BUILD_TIMEOUT = 3600  # the build's timeout as the test passes it; the wait below stands in


def qemu_pids(name: str) -> list[int]:
    """QEMU processes started with ``-name <name>`` (this test's unique VM name)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and name.encode() in argv:
            pids.append(int(entry.name))
    return pids


def template(tmp_path: Path, name: str) -> Path:
    base = tmp_path / "base.qcow2"
    run(["qemu-img", "create", "-f", "qcow2", base, "64M"])
    builder = {
        "type": "qemu",
        "iso_url": str(base),
        "iso_checksum": "none",
        "disk_image": True,
        "headless": True,
        "accelerator": "tcg",
        "memory": 64,
        "disk_size": "64M",
        "format": "qcow2",
        "output_directory": str(tmp_path / "out"),
        "vm_name": "orphan.qcow2",
        "vnc_bind_address": "127.0.0.1",
        "communicator": "ssh",
        "ssh_username": "nobody",
        "ssh_password": "never",
        "ssh_timeout": "60m",
        "qemuargs": [["-name", name]],
        "shutdown_command": "true",
    }
    path = tmp_path / "orphan.json"
    path.write_text(json.dumps({"builders": [builder]}))
    return path


def test_a_timed_out_packer_build_leaves_no_qemu(tmp_path, monkeypatch):
    name = f"nodeforge-orphan-{uuid.uuid4().hex[:12]}"
    argv = ["packer", "build", "-color=false", str(template(tmp_path, name))]
    monkeypatch.setenv("PACKER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(packer, "PACKER_STOP_SECONDS", 120)
    seen: list[int] = []
    real_spawn = packer.spawn

    @contextmanager
    def spawn_timing_out_once_qemu_runs(args, **kw):
        with real_spawn(args, **kw) as proc:
            real_wait = proc.wait

            def wait(timeout=None):
                if timeout != BUILD_TIMEOUT:  # stop()'s waits: the real thing
                    return real_wait(timeout)
                pause = threading.Event()
                for _ in range(int(WAIT)):
                    seen.extend(qemu_pids(name))
                    if seen or proc.poll() is not None:
                        break
                    pause.wait(1)
                assert seen, f"QEMU never started (packer exit {proc.poll()})"
                raise packer.TimeoutExpired(args, timeout)

            proc.wait = wait
            yield proc

    monkeypatch.setattr(packer, "spawn", spawn_timing_out_once_qemu_runs)
    try:
        with pytest.raises(BuilderError, match=f"timed out after {BUILD_TIMEOUT} s"):
            packer._stream(argv, timeout=BUILD_TIMEOUT)
        assert seen
        left = qemu_pids(name)
        assert not left, f"QEMU {left} outlived the timed-out packer build"
        assert not (tmp_path / "out").exists()  # Packer cleaned up: it was interrupted
    finally:
        for pid in qemu_pids(name):  # the old code's orphans: do not leave them running
            os.kill(pid, signal.SIGKILL)
