"""Issue 15 item 5: an inherited setting can be turned off.

``null`` in a profile or ``--set`` removes the key the layers below set (Helm/kustomize
style); a removed key the builder defaults know takes its default again. Turning the GPU
off in a later layer makes the inherited NVIDIA options inert instead of an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from builder import cli
from builder.errors import ValidationError
from builder.site.profile import load_profile

DEFAULTS = Path(__file__).resolve().parents[2] / "builder" / "site" / "defaults.yaml"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main([*args])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_set_gpu_off_on_a_gpu_site(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-q", "render", "onprem", "--set", "gpu.enabled=false")
    assert code == 0, err
    env = (workdir / "build/onprem/scripts/provision.env").read_text()
    assert "NF_GPU=0" in env


def test_a_cpu_variant_is_one_line(workdir: Path) -> None:
    (workdir / "profiles" / "onprem-cpu.yaml").write_text(
        "extends: onprem\ngpu: {enabled: false, nvidia: null}\n"
    )
    profile = load_profile("onprem-cpu")
    assert profile.spec.gpu.enabled is False
    defaults = yaml.safe_load(DEFAULTS.read_text())["gpu"]["nvidia"]
    # the NVIDIA section onprem set is gone: back to the builder defaults
    assert profile.masked()["gpu"]["nvidia"] == defaults
    assert profile.source_of("gpu.nvidia.driver_branch") == "builder defaults"


def test_null_removes_an_inherited_list(workdir: Path) -> None:
    (workdir / "profiles" / "untainted.yaml").write_text(
        "extends: onprem\nkubernetes: {taints: null}\n"
    )
    assert load_profile("onprem").spec.kubernetes.taints  # onprem taints its GPU nodes
    assert load_profile("untainted").spec.kubernetes.taints == ()


def test_set_null_removes(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "show", "onprem", "--json", "--set", "kubernetes.labels=null")
    assert code == 0, err
    assert json.loads(out)["kubernetes"]["labels"] == {}


def test_nvidia_options_set_with_gpu_off_in_the_same_layer_still_fail(workdir: Path) -> None:
    (workdir / "profiles" / "confused.yaml").write_text(
        "extends: base\ntarget: iso\n"
        "iso: {base: {url: 'https://example.invalid/x.iso', sha256sums_url: 'https://example.invalid/S'}}\n"
        "gpu: {enabled: false, nvidia: {driver_branch: '570'}}\n"
    )
    with pytest.raises(ValidationError) as exc:
        load_profile("confused")
    assert any(
        "gpu.nvidia.driver_branch: NVIDIA options are set but gpu.enabled is false" in p
        for p in exc.value.problems
    )
