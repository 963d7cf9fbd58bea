"""Mapping keys in a profile are text: a null, number, list or mapping key is bad input
(`file: line L, column C: message`, exit 2), never an internal error (issue 18 finding 8:
the fuzz test found ``~: 1`` ending in ``internal error: TypeError``, exit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder import cli
from builder.errors import ValidationError
from builder.site.profile import load_profile

BAD_KEYS = [
    # (profile text, line:column of the bad key, what the key is)
    ("~: 1\n", "line 1, column 1", "null"),
    ("extends: aws\nkernel: {sysctls: {~: 1}}\n", "line 2, column 20", "null"),
    ("[1]: 2\n", "line 1, column 1", "a list"),
    ("? [a]\n: 1\n", "line 1, column 3", "a list"),
    ("extends: aws\n? {a: 1}\n: 2\n", "line 2, column 3", "a mapping"),
    ("extends: aws\nkubernetes: {labels: {7: x}}\n", "line 2, column 23", "an integer"),
    ("extends: aws\nkernel: {sysctls: {true: 1}}\n", "line 2, column 20", "a boolean"),
]


@pytest.mark.parametrize(("text", "where", "what"), BAD_KEYS)
def test_non_text_key_is_a_clear_problem(workdir: Path, text: str, where: str, what: str) -> None:
    (workdir / "profiles/fz.yaml").write_text(text)
    with pytest.raises(ValidationError) as exc:
        load_profile("fz")
    assert exc.value.problems == [f"profiles/fz.yaml: {where}: a key must be text, not {what}"]


@pytest.mark.parametrize(("text", "where", "what"), BAD_KEYS)
def test_non_text_key_exits_2_without_traceback(
    workdir: Path, capsys: pytest.CaptureFixture[str], text: str, where: str, what: str
) -> None:
    (workdir / "profiles/fz.yaml").write_text(text)
    with pytest.raises(SystemExit) as exc:
        cli.main(["render", "fz"])
    _, err = capsys.readouterr()
    assert exc.value.code == 2
    assert f"error: profiles/fz.yaml: {where}: a key must be text, not {what}" in err
    assert "internal error" not in err and "Traceback" not in err
    assert not (workdir / "build").exists()


def test_quoted_keys_stay_keys(workdir: Path) -> None:
    # the same keys written as strings are ordinary keys (the label value is checked as usual)
    (workdir / "profiles/ok.yaml").write_text(
        "extends: aws\nkubernetes: {labels: {'7': x, 'null': y}}\n"
    )
    profile = load_profile("ok")
    assert profile.get("kubernetes.labels")["7"] == "x"
