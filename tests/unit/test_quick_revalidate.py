"""Issue 17, `builder validate` with nothing changed: the profile's schema pass is remembered
(jsonschema is then not even imported) and compiled templates are kept, without changing
what is reported or rendered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from builder.errors import ValidationError
from builder.site import checks, render
from builder.site.profile import load_profile
from builder.site.render import render_site

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BUILDER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _explode(*a: object, **k: object) -> None:
    raise AssertionError("the schema ran")


def test_a_schema_pass_is_remembered(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_profile("onprem")
    assert list((cache / "validate").glob("profile-schema-*"))
    monkeypatch.setattr(jsonschema, "Draft202012Validator", _explode)
    load_profile("onprem")  # the same data: the remembered pass, the schema does not run
    with pytest.raises(AssertionError, match="the schema ran"):
        load_profile("onprem", overrides=["hub.url=https://other.example:8443"])


def test_a_remembered_pass_does_not_hide_a_new_problem(cache: Path) -> None:
    load_profile("onprem")
    with pytest.raises(ValidationError) as exc:
        load_profile("onprem", overrides=["iso.grub_timeout=-1"])
    assert any("iso.grub_timeout" in p for p in exc.value.problems)
    assert len(list((cache / "validate").glob("profile-schema-*"))) == 1  # failures: never


def test_data_that_is_not_plain_json_is_never_remembered() -> None:
    assert checks._schema_pass_mark({}, {"a": {1: "int key"}}) is None
    assert checks._schema_pass_mark({}, {"a": float("nan")}) is None
    assert checks._schema_pass_mark({}, {"a": (1, 2)}) is None
    assert checks._schema_pass_mark({}, {"a": [1, True, None, "x", 1.5]}) is not None
    # the schema is part of the key
    assert checks._schema_pass_mark({}, {"a": 1}) != checks._schema_pass_mark({"x": 1}, {"a": 1})


@pytest.mark.allow_subprocess
def test_validate_with_nothing_changed_does_not_import_jsonschema(cache: Path) -> None:
    code = (
        "import sys\n"
        "from builder.cli import main\n"
        "try:\n"
        "    main(['validate', 'onprem', '--skip', 'cloud-init-schema', '--skip', 'shellcheck',"
        " '--skip', 'systemd-analyze', '--skip', 'packer-validate'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('jsonschema' in sys.modules)\n"
    )
    env = {**os.environ, "BUILDER_CACHE_DIR": str(cache)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
        )
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    assert [r.stdout.split()[-1] for r in runs] == ["True", "False"]


def test_compiled_templates_render_the_same_bytes(cache: Path, tmp_path: Path) -> None:
    profile = load_profile("onprem")
    cold = render_site(profile, tmp_path / "cold").path
    kept = list((cache / "jinja").glob("*/__jinja2_*"))
    assert kept  # compiled templates were kept
    warm = render_site(profile, tmp_path / "warm").path
    files = sorted(p.relative_to(cold) for p in cold.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(warm) for p in warm.rglob("*") if p.is_file())
    for rel in files:
        assert (cold / rel).read_bytes() == (warm / rel).read_bytes(), rel


def test_compiled_templates_only_from_a_directory_no_one_else_can_write(cache: Path) -> None:
    assert render.bytecode_cache() is not None
    os.chmod(cache / "jinja", 0o777)
    assert render.bytecode_cache() is None
    os.chmod(cache / "jinja", 0o755)
    assert render.bytecode_cache() is not None
