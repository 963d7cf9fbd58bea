"""builder.site.yamlload on libyaml (issue 17): the same data, key lines and errors as the
pure-Python parser, which stays the reference (every error is raised by it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builder.site import yamlload

PROFILES = sorted((Path(__file__).resolve().parents[2] / "profiles").glob("*.yaml"))
pytestmark = pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")


def pure(monkeypatch: pytest.MonkeyPatch, fn, text: str):
    with monkeypatch.context() as m:
        m.setattr(yamlload, "_C_LOADER", None)
        m.setattr(yamlload, "_C_UNIQUE", None)
        return fn(text)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_profile_reads_the_same_on_libyaml(monkeypatch, path: Path) -> None:
    text = path.read_text()
    assert yamlload.load(text) == pure(monkeypatch, yamlload.load, text)
    lines = yamlload.key_lines(text)
    assert lines and lines == pure(monkeypatch, yamlload.key_lines, text)


def laughs() -> str:
    """Six levels of ten aliases: 10^7 values in a few hundred bytes."""
    lines = ["a: &b0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 7):
        lines.append(f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


BAD = {
    "duplicate key": "a: 1\nb:\n  c: 2\n  c: 3\n",
    "number key": "a: 1\n3: x\n",
    "syntax": "a: [1, 2\nb: 3\n",
    "tab": "a:\n\tb: 1\n",
    "too deep": "a: " + "[" * 70 + "]" * 70 + "\n",
    "laughs": laughs(),
}


@pytest.mark.parametrize("text", BAD.values(), ids=BAD.keys())
def test_errors_are_the_pure_python_parsers(monkeypatch, text: str) -> None:
    with pytest.raises((yaml.YAMLError, yamlload.DocumentTooLarge)) as ours:
        yamlload.load(text)
    with pytest.raises((yaml.YAMLError, yamlload.DocumentTooLarge)) as ref:
        pure(monkeypatch, yamlload.load, text)
    assert type(ours.value) is type(ref.value)
    assert str(ours.value) == str(ref.value)


def test_the_c_pass_is_what_runs_on_a_valid_document(monkeypatch) -> None:
    """The pure-Python loader is not touched when libyaml reads the document."""

    def boom(*a, **k):
        raise AssertionError("pure-Python parser used")

    monkeypatch.setattr(yamlload.UniqueKeyLoader, "__init__", boom)
    assert yamlload.load("a: {b: [1, 2]}\n") == {"a": {"b": [1, 2]}}
