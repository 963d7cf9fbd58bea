"""QEMU harness shared by every boot test: build an argv, boot it, watch the serial console.

Two pieces, usable separately:

- ``VM`` (a dataclass) + ``build_argv(vm, workdir)``: the ``qemu-system-x86_64`` command
  line for BIOS (SeaBIOS) or UEFI (OVMF, with a private copy of ``OVMF_VARS``), a CD-ROM
  (``-M pc``: IDE, visible to any kernel), a disk on ``virtio`` / ``usb`` (usb-storage on
  qemu-xhci, like a USB stick) / ``ide``, direct kernel boot (``-kernel/-initrd/-append``),
  NoCloud seed volumes as read-only virtio disks, user networking with port forwards.
- ``boot(argv, log, success=[…], failure=[…], timeout=…)``: start QEMU with its serial
  console going to ``log``, return as soon as every ``success`` regex has matched the
  console, fail fast when a ``failure`` regex matches or QEMU exits early, kill QEMU at the
  timeout; failures raise ``BootFailed`` carrying the console tail.

Acceleration: ``accel()`` picks ``tcg`` when ``/sys/module/kvm_pvm`` exists (nested guests
hang there) or ``/dev/kvm`` is missing, ``kvm`` otherwise; ``BUILDER_QEMU_ACCEL`` overrides.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from builder import progress
from builder.errors import BuilderError
from builder.run import popen, require, stop

log = logging.getLogger("builder.qemu")

QEMU = "qemu-system-x86_64"

OVMF_CANDIDATES = [
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/qemu/OVMF_CODE.fd", "/usr/share/qemu/OVMF_VARS.fd"),
]

Firmware = Literal["bios", "uefi"]
DiskBus = Literal["virtio", "usb", "ide"]


class BootFailed(BuilderError):
    """The guest did not reach its success markers; ``tail`` is the end of its console."""

    def __init__(self, message: str, tail: str = "", hint: str | None = None) -> None:
        full = message + (f"\n--- serial console (tail) ---\n{tail}" if tail else "")
        super().__init__(full, hint)
        self.tail = tail


def accel() -> str:
    """``kvm`` or ``tcg`` (see module docstring); ``BUILDER_QEMU_ACCEL`` wins."""
    forced = os.environ.get("BUILDER_QEMU_ACCEL", "").strip()
    if forced:
        return forced
    if Path("/sys/module/kvm_pvm").exists():
        return "tcg"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    return "kvm"


def ovmf() -> tuple[Path, Path]:
    """(OVMF_CODE, OVMF_VARS template); ``BUILDER_OVMF_CODE``/``_VARS`` override."""
    code_env, vars_env = os.environ.get("BUILDER_OVMF_CODE"), os.environ.get("BUILDER_OVMF_VARS")
    if code_env and vars_env:
        return Path(code_env), Path(vars_env)
    for code, vars_ in OVMF_CANDIDATES:
        if Path(code).is_file() and Path(vars_).is_file():
            return Path(code), Path(vars_)
    raise BuilderError(
        "OVMF firmware not found (looked for " + ", ".join(c for c, _ in OVMF_CANDIDATES) + ")",
        hint="apt-get install --no-install-recommends ovmf, or set BUILDER_OVMF_CODE and "
        "BUILDER_OVMF_VARS",
    )


@dataclass
class VM:
    """What to boot. Only set what you need; the defaults make a small headless BIOS VM."""

    firmware: Firmware = "bios"
    machine: str | None = None  # default: pc (CD-ROM on IDE works with every kernel)
    memory_mb: int = 1024
    cpus: int = 1
    cdrom: Path | None = None
    disk: Path | None = None
    disk_bus: DiskBus = "virtio"
    disk_readonly: bool = False
    disk_snapshot: bool = False  # writes go to a temp overlay, the image stays untouched
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    seeds: list[Path] = field(default_factory=list)  # NoCloud volumes, read-only virtio
    network: bool = False  # QEMU user networking (slirp) on virtio-net
    hostfwd: list[str] = field(default_factory=list)  # e.g. "tcp:127.0.0.1:2222-:22"
    extra: list[str] = field(default_factory=list)  # passed through verbatim, last
    accel: str | None = None  # default: accel()


def _fmt(path: Path) -> str:
    return "qcow2" if path.suffix == ".qcow2" else "raw"


def build_argv(vm: VM, workdir: Path) -> list[str]:
    """The QEMU command line for ``vm``. ``workdir`` receives the OVMF vars copy."""
    acc = vm.accel or accel()
    argv: list[str] = [
        QEMU,
        "-accel", acc,
        "-M", vm.machine or "pc",
        "-m", str(vm.memory_mb),
        "-smp", str(vm.cpus),
        "-display", "none",
        "-monitor", "none",
        "-no-reboot",
    ]  # fmt: skip
    if acc == "kvm":
        argv += ["-cpu", "host"]
    if vm.firmware == "uefi":
        code, vars_tmpl = ovmf()
        workdir.mkdir(parents=True, exist_ok=True)
        vars_copy = workdir / "OVMF_VARS.fd"
        shutil.copyfile(vars_tmpl, vars_copy)
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]  # fmt: skip
    elif vm.firmware != "bios":
        raise BuilderError(f"unknown firmware {vm.firmware!r} (bios or uefi)")
    if vm.cdrom is not None:
        argv += [
            "-drive", f"if=none,id=cd0,media=cdrom,readonly=on,format=raw,file={vm.cdrom}",
            "-device", "ide-cd,drive=cd0,bootindex=0",
        ]  # fmt: skip
    if vm.disk is not None:
        opts = f"if=none,id=disk0,format={_fmt(vm.disk)},file={vm.disk}"
        if vm.disk_readonly:
            opts += ",readonly=on"
        if vm.disk_snapshot:
            opts += ",snapshot=on"
        argv += ["-drive", opts]
        boot = "bootindex=1" if vm.cdrom is not None else "bootindex=0"
        if vm.kernel is not None:  # -kernel's option ROM already holds bootindex 0
            boot = "bootindex=1"
        if vm.disk_bus == "virtio":
            argv += ["-device", f"virtio-blk-pci,drive=disk0,{boot}"]
        elif vm.disk_bus == "usb":
            argv += [
                "-device", "qemu-xhci,id=xhci",
                "-device", f"usb-storage,bus=xhci.0,drive=disk0,removable=on,{boot}",
            ]  # fmt: skip
        elif vm.disk_bus == "ide":
            argv += ["-device", f"ide-hd,drive=disk0,{boot}"]
        else:
            raise BuilderError(f"unknown disk bus {vm.disk_bus!r} (virtio, usb or ide)")
    if vm.kernel is not None:
        argv += ["-kernel", str(vm.kernel)]
        if vm.initrd is not None:
            argv += ["-initrd", str(vm.initrd)]
        if vm.append:
            argv += ["-append", vm.append]
    for i, seed in enumerate(vm.seeds):
        argv += [
            "-drive", f"if=none,id=seed{i},format=raw,readonly=on,file={seed}",
            "-device", f"virtio-blk-pci,drive=seed{i}",
        ]  # fmt: skip
    if vm.network:
        netdev = "user,id=net0" + "".join(f",hostfwd={f}" for f in vm.hostfwd)
        argv += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0"]
    else:
        argv += ["-nic", "none"]
    argv += vm.extra
    return argv


@dataclass
class BootResult:
    console: str  # everything the guest wrote to its serial console
    seconds: float
    matches: list[re.Match[str]]  # one per success pattern, in the given order
    exited: bool  # QEMU had already exited (guest powered off) when we returned


def _exited(proc: subprocess.Popen[bytes], wait: float) -> bool:
    """Has ``proc`` exited (waiting up to ``wait`` seconds for it)?"""
    if proc.poll() is not None or wait <= 0:
        return proc.poll() is not None
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        return False
    return True


PRESS_EVERY = 5.0  # seconds between presses of the power button while waiting for power-off


def _power_off(
    proc: subprocess.Popen[bytes], wait: float, powerdown: Callable[[], object] | None
) -> bool:
    """Has the guest powered off within ``wait`` s, pressing ``powerdown`` (if any) at once
    and every ``PRESS_EVERY`` s until it has? A guest that powers off by itself (a check
    program) is not slowed down by the press; one that never would is not waited for."""
    if powerdown is None:
        return _exited(proc, wait)
    deadline = time.monotonic() + wait
    while proc.poll() is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        powerdown()
        if _exited(proc, min(PRESS_EVERY, left)):
            return True
    return True


def qmp_argv(sock: Path) -> list[str]:
    """QEMU options for a QMP control socket at ``sock`` (for ``qmp_powerdown``)."""
    return ["-qmp", f"unix:{sock},server=on,wait=off"]


def qmp_powerdown(sock: Path, timeout: float = 5.0) -> bool:
    """Press the guest's ACPI power button over QMP; False when QEMU did not take it."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(os.fspath(sock))
            f = s.makefile("rwb")
            f.readline(65536)  # the greeting
            for cmd in (b'{"execute":"qmp_capabilities"}', b'{"execute":"system_powerdown"}'):
                f.write(cmd + b"\n")
                f.flush()
                for _ in range(8):  # events may come before the answer
                    line = f.readline(65536)
                    if not line or b'"error"' in line:
                        return False
                    if b'"return"' in line:
                        break
                else:
                    return False
    except OSError as exc:
        log.debug("QMP %s: %s", sock, exc)
        return False
    return True


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def boot(
    argv: Sequence[str | os.PathLike[str]],
    log_path: str | os.PathLike[str],
    *,
    success: Sequence[str],
    failure: Sequence[str] = (r"Kernel panic", r"end Kernel panic"),
    timeout: float = 300.0,
    wait_exit: float = 0.0,
    poll: float = 0.2,
    ready: Callable[[str, bool], bool] | None = None,
    powerdown: Callable[[], object] | None = None,
) -> BootResult:
    """Boot ``argv`` with its serial console streamed to ``log_path``.

    Returns once every regex in ``success`` has matched the console (MULTILINE). Raises
    ``BootFailed`` (with the console tail) as soon as a ``failure`` regex matches, when
    QEMU exits before success, or at ``timeout`` seconds (QEMU is killed). With
    ``wait_exit`` > 0, waits up to that long after success for the guest to power off;
    with ``powerdown`` (e.g. ``qmp_powerdown``) it is called at once and again every
    ``PRESS_EVERY`` s meanwhile (a press before the guest's power-key handler is up is lost),
    without it the guest must power off by itself.
    ``ready(console, final)``, if given, must also be true for success (it may look
    elsewhere, e.g. at a hub): asked on every poll, and a ``final`` time once QEMU exited.
    QEMU's own stdout/stderr go to ``<log_path>.qemu``.
    """
    require(QEMU)
    log_file = Path(log_path)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_bytes(b"")
    args = [os.fspath(a) for a in argv]
    if "-serial" not in args:
        args += ["-serial", f"file:{log_file}"]
    ok = [re.compile(p, re.MULTILINE) for p in success]
    bad = [re.compile(p, re.MULTILINE) for p in failure]
    qlog = log_file.with_name(log_file.name + ".qemu")
    start = time.monotonic()
    with open(qlog, "wb") as qout:
        proc = popen(args, stdout=qout, stderr=qout, stdin=None)
        log.info(
            "booting (%s), console: %s",
            args[args.index("-accel") + 1] if "-accel" in args else "?",
            log_file,
        )
        try:
            text = ""
            with (
                progress.ticker(f"boot {log_file.stem}", timeout),
                open(log_file, "rb") as fh,
            ):
                while True:
                    gone = proc.poll() is not None  # before the read: the read gets it all
                    chunk = fh.read()
                    if chunk:
                        text += chunk.decode(errors="replace")
                    for rx in bad:
                        m = rx.search(text)
                        if m:
                            raise BootFailed(
                                f"guest failed: console matched {rx.pattern!r}: {m.group(0)!r}",
                                _tail(text),
                            )
                    matches = [rx.search(text) for rx in ok]
                    if all(matches) and (ready is None or ready(text, gone)):
                        exited = _power_off(proc, wait_exit, powerdown)
                        return BootResult(
                            console=text + fh.read().decode(errors="replace"),
                            seconds=time.monotonic() - start,
                            matches=[m for m in matches if m],
                            exited=exited,
                        )
                    if gone and not chunk:
                        missing = [rx.pattern for rx, m in zip(ok, matches, strict=True) if not m]
                        missing += ["ready"] if ready is not None and not missing else []
                        qerr = qlog.read_text(errors="replace").strip()
                        raise BootFailed(
                            f"QEMU exited (code {proc.returncode}) before the console showed "
                            f"{missing}" + (f"\nqemu: {_tail(qerr, 10)}" if qerr else ""),
                            _tail(text),
                        )
                    if time.monotonic() - start > timeout:
                        missing = [rx.pattern for rx, m in zip(ok, matches, strict=True) if not m]
                        missing += ["ready"] if ready is not None and not missing else []
                        raise BootFailed(
                            f"timed out after {timeout:g} s waiting for {missing}", _tail(text)
                        )
                    time.sleep(poll)
        finally:
            stop(proc, 5)
