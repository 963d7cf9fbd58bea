"""QEMU harness: accelerator choice and the argv builder (no QEMU started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.boottest import qemu


@pytest.fixture
def fake_ovmf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    code, vars_ = tmp_path / "CODE.fd", tmp_path / "VARS.fd"
    code.write_bytes(b"code")
    vars_.write_bytes(b"vars-template")
    monkeypatch.setenv("BUILDER_OVMF_CODE", str(code))
    monkeypatch.setenv("BUILDER_OVMF_VARS", str(vars_))
    return code, vars_


def _pairs(argv: list[str], opt: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == opt]


def test_accel_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUILDER_QEMU_ACCEL", "kvm")
    assert qemu.accel() == "kvm"
    monkeypatch.setenv("BUILDER_QEMU_ACCEL", "tcg")
    assert qemu.accel() == "tcg"


def test_accel_tcg_under_kvm_pvm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUILDER_QEMU_ACCEL", raising=False)
    real_exists = Path.exists

    def exists(self: Path) -> bool:
        return True if str(self) == "/sys/module/kvm_pvm" else real_exists(self)

    monkeypatch.setattr(Path, "exists", exists)
    assert qemu.accel() == "tcg"


def test_accel_tcg_without_dev_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUILDER_QEMU_ACCEL", raising=False)
    real_exists = Path.exists
    monkeypatch.setattr(
        Path, "exists", lambda self: False if "kvm_pvm" in str(self) else real_exists(self)
    )
    monkeypatch.setattr(qemu.os, "access", lambda p, m: False)
    assert qemu.accel() == "tcg"
    monkeypatch.setattr(qemu.os, "access", lambda p, m: True)
    assert qemu.accel() == "kvm"


def test_bios_cdrom_on_pc(tmp_path: Path) -> None:
    argv = qemu.build_argv(qemu.VM(cdrom=tmp_path / "x.iso", accel="tcg"), tmp_path)
    assert argv[0] == "qemu-system-x86_64"
    assert _pairs(argv, "-accel") == ["tcg"]
    assert _pairs(argv, "-M") == ["pc"]
    assert "-cpu" not in argv
    assert f"if=none,id=cd0,media=cdrom,readonly=on,format=raw,file={tmp_path}/x.iso" in argv
    assert "ide-cd,drive=cd0,bootindex=0" in argv
    assert "if=pflash" not in " ".join(argv)
    assert _pairs(argv, "-nic") == ["none"]


def test_uefi_uses_a_private_vars_copy(tmp_path: Path, fake_ovmf: tuple[Path, Path]) -> None:
    code, vars_ = fake_ovmf
    work = tmp_path / "work"
    argv = qemu.build_argv(qemu.VM(firmware="uefi", cdrom=tmp_path / "x.iso", accel="tcg"), work)
    drives = _pairs(argv, "-drive")
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={code}" in drives
    assert f"if=pflash,format=raw,unit=1,file={work}/OVMF_VARS.fd" in drives
    assert (work / "OVMF_VARS.fd").read_bytes() == b"vars-template"
    (work / "OVMF_VARS.fd").write_bytes(b"changed by guest")
    assert vars_.read_bytes() == b"vars-template"


def test_ovmf_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUILDER_OVMF_CODE", raising=False)
    monkeypatch.setattr(qemu, "OVMF_CANDIDATES", [(str(tmp_path / "a"), str(tmp_path / "b"))])
    with pytest.raises(qemu.BuilderError, match="OVMF firmware not found") as exc:
        qemu.build_argv(qemu.VM(firmware="uefi", accel="tcg"), tmp_path)
    assert "ovmf" in (exc.value.hint or "")


@pytest.mark.parametrize(
    ("bus", "devices"),
    [
        ("virtio", ["virtio-blk-pci,drive=disk0,bootindex=0"]),
        (
            "usb",
            ["qemu-xhci,id=xhci", "usb-storage,bus=xhci.0,drive=disk0,removable=on,bootindex=0"],
        ),
        ("ide", ["ide-hd,drive=disk0,bootindex=0"]),
    ],
)
def test_disk_buses(tmp_path: Path, bus: str, devices: list[str]) -> None:
    vm = qemu.VM(disk=tmp_path / "d.qcow2", disk_bus=bus, disk_snapshot=True, accel="tcg")  # type: ignore[arg-type]
    argv = qemu.build_argv(vm, tmp_path)
    assert f"if=none,id=disk0,format=qcow2,file={tmp_path}/d.qcow2,snapshot=on" in argv
    assert [d for d in _pairs(argv, "-device")] == devices


def test_kernel_boot_seeds_network_and_extra(tmp_path: Path) -> None:
    vm = qemu.VM(
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd",
        append="console=ttyS0 root=/dev/vda",
        seeds=[tmp_path / "seed.iso"],
        network=True,
        hostfwd=["tcp:127.0.0.1:2222-:22"],
        extra=["-device", "virtio-rng-pci"],
        accel="kvm",
        memory_mb=2048,
        cpus=2,
    )
    argv = qemu.build_argv(vm, tmp_path)
    assert _pairs(argv, "-kernel") == [f"{tmp_path}/vmlinuz"]
    assert _pairs(argv, "-initrd") == [f"{tmp_path}/initrd"]
    assert _pairs(argv, "-append") == ["console=ttyS0 root=/dev/vda"]
    assert _pairs(argv, "-cpu") == ["host"]
    assert _pairs(argv, "-m") == ["2048"] and _pairs(argv, "-smp") == ["2"]
    assert f"if=none,id=seed0,format=raw,readonly=on,file={tmp_path}/seed.iso" in argv
    assert "virtio-blk-pci,drive=seed0" in argv
    assert _pairs(argv, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"]
    assert argv[-2:] == ["-device", "virtio-rng-pci"]


def test_unknown_bus_or_firmware_rejected(tmp_path: Path) -> None:
    with pytest.raises(qemu.BuilderError, match="disk bus"):
        qemu.build_argv(qemu.VM(disk=tmp_path / "d", disk_bus="scsi", accel="tcg"), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(qemu.BuilderError, match="firmware"):
        qemu.build_argv(qemu.VM(firmware="coreboot", accel="tcg"), tmp_path)  # type: ignore[arg-type]
