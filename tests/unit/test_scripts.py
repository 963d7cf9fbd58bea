"""Static checks of packer/scripts/*.sh (no tools run): shape, variables, order."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "packer" / "scripts"
STEPS = ["configure-node", "install-crio", "install-kubernetes", "install-nvidia", "cleanup"]
ALL = sorted(SCRIPTS.glob("*.sh"))


def documented_vars() -> set[str]:
    text = (REPO / "builder" / "INTERFACES.md").read_text()
    return set(re.findall(r"\bNF_[A-Z0-9_]+", text))


def test_every_step_exists_and_provision_runs_them_in_order():
    names = {p.stem for p in ALL}
    assert set(STEPS) | {"provision", "common"} <= names
    text = (SCRIPTS / "provision.sh").read_text()
    m = re.search(r"^all_steps=\(([a-z\- ]+)\)$", text, flags=re.M)
    assert m and m.group(1).split() == ["base-packages", *STEPS]
    # NF_STEPS (the qcow2 layer cache) selects among them, in this order, nothing else
    assert 'read -r -a steps <<<"${NF_STEPS:-${all_steps[*]}}"' in text
    assert "NF_STEPS: unknown step" in text


@pytest.mark.parametrize("script", [p for p in ALL if p.name != "common.sh"], ids=lambda p: p.name)
def test_script_shape(script: Path):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    if script.name != "provision.sh":
        assert "common.sh" in text


def test_common_is_sourced_not_run():
    text = (SCRIPTS / "common.sh").read_text()
    assert not text.startswith("#!")
    assert not os.access(SCRIPTS / "common.sh", os.X_OK)


@pytest.mark.parametrize("script", ALL, ids=lambda p: p.name)
def test_only_documented_variables(script: Path):
    used = set(re.findall(r"\bNF_[A-Z0-9_]+", script.read_text()))
    # NF_PROVISION_ENV (where provision.env is) and NF_CHROOT (force chroot detection) are
    # documented in INTERFACES.md as well
    assert used <= documented_vars(), sorted(used - documented_vars())


def test_nothing_starts_services_in_a_chroot():
    # every start/restart is guarded by systemd_running (false in a chroot)
    for script in ALL:
        for line in script.read_text().splitlines():
            if re.search(r"systemctl (re)?start", line):
                assert "systemd_running" in line, f"{script.name}: {line.strip()}"


def test_repos_are_flat_and_signed_by():
    text = (SCRIPTS / "common.sh").read_text()
    assert "deb [signed-by=%s] %s /" in text
    assert "Pin-Priority: 1001" in text
    assert "apt-mark hold" in text
