"""Every shipped profile renders and passes the real third-party validators."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder import targets
from builder.errors import ToolMissing, ValidationError
from builder.site import validate
from builder.site.profile import load_profile
from builder.site.render import render_site

pytestmark = pytest.mark.integration

SITES = sorted(
    p.stem for p in (Path(__file__).parents[2] / "profiles").glob("*.yaml") if p.stem != "base"
)


@pytest.mark.parametrize("site", SITES)
def test_shipped_profile_passes_every_validator(workdir: Path, site: str) -> None:
    ran = targets.validate_site(lambda out: render_site(load_profile(site), out))
    assert ran == [
        "autoinstall-schema",
        "cloud-init-schema",
        "shellcheck",
        "systemd-analyze",
        "packer-validate",
    ]


@pytest.fixture
def tree(workdir: Path) -> Path:
    return render_site(load_profile("onprem")).path


def test_cloud_init_schema_catches_bad_user_data(tree: Path) -> None:
    path = tree / "cloud-init/user-data"
    path.write_text(path.read_text() + "runcmd: 42\n")
    problems = validate.check_cloud_init(tree)
    assert problems and "runcmd" in problems[0]


def test_autoinstall_schema_catches_bad_key(tree: Path) -> None:
    path = tree / "cloud-init/autoinstall.yaml"
    path.write_text(path.read_text() + "identity-typo: {}\n")
    problems = validate.check_autoinstall(tree)
    assert any("identity-typo" in p for p in problems)


def test_shellcheck_catches_bad_script(tree: Path) -> None:
    (tree / "scripts/zz-bad.sh").write_text("#!/bin/bash\necho $UNQUOTED_VAR\nrm -rf $DIR/\n")
    problems = validate.check_shellcheck(tree)
    assert any("zz-bad.sh" in p and "SC2086" in p for p in problems)


def test_shellcheck_split_over_processes_reports_every_script_in_order(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One shellcheck per core: findings of scripts checked by different processes all come
    back, in script order, the same as one shellcheck over every script prints them."""
    (tree / "scripts/aa-bad.sh").write_text("#!/bin/bash\necho $ONE\n")
    (tree / "scripts/zz-bad.sh").write_text("#!/bin/bash\necho $TWO\n")
    monkeypatch.setattr(validate.os, "cpu_count", lambda: 4)
    problems = validate.check_shellcheck(tree)
    scripts = sorted((tree / "scripts").glob("*.sh"))
    argv = ["shellcheck", "--format=gcc", "--external-sources", "--source-path=SCRIPTDIR"]
    one = validate.run([*argv, *scripts], check=False).stdout.splitlines()
    assert problems == [ln for ln in one if ln.strip()]
    assert [p.split(":")[0].rsplit("/", 1)[-1] for p in problems] == ["aa-bad.sh", "zz-bad.sh"]


def test_systemd_analyze_catches_bad_unit(tree: Path) -> None:
    unit = tree / "files/etc/systemd/system/nodeforge-enroll.service"
    unit.write_text(unit.read_text().replace("[Service]", "[Service]\nRestartt=always"))
    problems = validate.check_units(tree)
    assert any("Restartt" in p for p in problems)


def test_every_check_passes_the_clean_tree(tree: Path) -> None:
    # the baseline for the "catches" tests: a check that always complains cannot pass here
    for check in targets.CHECKS:
        assert check.func(tree) == [], check.name


def test_packer_validate_catches_bad_vars(tree: Path) -> None:
    pvars = tree / "packer/site.auto.pkrvars.json"
    pvars.write_text(pvars.read_text().replace('"site"', '"no_such_variable_in_templates"', 1))
    problems = targets.CHECKS[-1].func(tree)
    # packer's own words (packer 1.x HCL2: a used variable without value or default), once
    # per template, each naming the vars file
    for template in ("ami", "qcow2"):
        assert f'{pvars}: packer validate ({template}): Error: Unset variable "site"' in problems
        assert any(
            p.startswith(f"{pvars}: packer validate ({template}): ")
            and '"no_such_variable_in_templates"' in p
            for p in problems
        )
    assert all(p.startswith(f"{pvars}: packer validate (") for p in problems)


def test_validate_tree_reports_everything(tree: Path) -> None:
    (tree / "scripts/zz-bad.sh").write_text("#!/bin/bash\necho $X\n")
    path = tree / "cloud-init/user-data"
    path.write_text(path.read_text() + "runcmd: 42\n")
    with pytest.raises(ValidationError) as exc:
        validate.validate_tree(tree, checks=targets.CHECKS)
    text = "\n".join(exc.value.problems)
    assert "zz-bad.sh" in text and "runcmd" in text


def test_missing_tool_is_reported(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(validate, "which", lambda t: None if t == "packer" else real(t))
    with pytest.raises(ToolMissing) as exc:  # not "the rendered tree failed validation"
        validate.validate_tree(tree, checks=targets.CHECKS)
    assert exc.value.message == "needs packer: apt-get install --no-install-recommends packer"
    assert exc.value.hint is not None and "--skip packer-validate" in exc.value.hint
    assert exc.value.exit_code == 1


def test_cached_pass_does_not_hide_a_new_problem(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real validators, cached: nothing changed -> nothing runs; a bad script -> found."""
    monkeypatch.setenv("BUILDER_CACHE_DIR", str(tmp_path / "vcache"))
    assert validate.validate_tree(tree, checks=targets.CHECKS)  # cold: every check runs
    calls: list[str] = []
    real_run = validate.run
    monkeypatch.setattr(
        validate, "run", lambda argv, **kw: calls.append(argv) or real_run(argv, **kw)
    )
    validate.validate_tree(tree, checks=targets.CHECKS)
    assert calls == []  # warm: the site checks ran nothing
    (tree / "scripts/zz-bad.sh").write_text("#!/bin/bash\necho $UNQUOTED_VAR\n")
    with pytest.raises(ValidationError) as exc:
        validate.validate_tree(tree, checks=targets.CHECKS)
    assert any("zz-bad.sh" in p and "SC2086" in p for p in exc.value.problems)
    assert {str(a[0]) for a in calls} == {"shellcheck"}  # only the check whose input changed
