"""Issue 15 item 6: show --origin, builder init NEW --from SITE, line numbers in profile
errors, "quote it" for values YAML read as numbers, and the expected form named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from builder import cli
from builder.site.profile import load_profile


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main([*args])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_show_origin(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "show", "onprem", "--origin", "--json", "--set", "wireguard.mtu=1380"
    )
    assert code == 0, err
    origin = {r["key"]: (r["value"], r["origin"]) for r in json.loads(out)}
    assert origin["gpu.enabled"] == (True, "profiles/onprem.yaml")
    assert origin["wireguard.mtu"] == (1380, "--set")
    assert origin["wireguard.interface"] == ("wg0", "profiles/base.yaml")
    assert origin["aws.instance_type"][1] == "builder defaults"
    code, text, _ = run_cli(capsys, "show", "onprem", "--origin")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("gpu.enabled ")]
    assert line.split() == ["gpu.enabled", "true", "#", "profiles/onprem.yaml"]


def test_init_from_a_site(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "init", "lab2", "--from", "onprem")
    assert code == 0, err
    path = workdir / "profiles" / "lab2.yaml"
    assert out.strip() == str(path)
    text = path.read_text()
    assert text.startswith("# lab2: site profile scaffolded by `builder init lab2 --from onprem`")
    assert "# from profiles/onprem.yaml" in text
    new, old = load_profile("lab2"), load_profile("onprem")
    assert new.resolve_file("enrollment.ca_cert") == old.resolve_file("enrollment.ca_cert")
    same_ca = dataclasses.replace(new.spec.enrollment, ca_cert=old.spec.enrollment.ca_cert)
    assert dataclasses.replace(new.spec, enrollment=same_ca) == old.spec  # the same settings
    assert "extends" not in yaml.safe_load(text)
    # file: references made absolute (they would resolve from the new file's directory)
    ca = yaml.safe_load(text)["enrollment"]["ca_cert"]
    assert ca == f"file:{(workdir / 'profiles' / 'demo-hub-ca.pem').resolve()}"
    code, _, err = run_cli(capsys, "init", "lab2", "--from", "onprem")
    assert code == 2 and "exists; refusing to overwrite it" in err


def test_init_outside_a_checkout_writes_to_dot_profiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./profiles: --from finds the shipped examples
    monkeypatch.delenv("BUILDER_PROFILES", raising=False)
    code, out, err = run_cli(capsys, "init", "mysite", "--from", "aws")
    assert code == 0, err
    assert (tmp_path / "profiles" / "mysite.yaml").is_file()
    code, out, _ = run_cli(capsys, "profiles")
    assert out.split()[0] == "mysite"


def write(workdir: Path, text: str) -> None:
    (workdir / "profiles" / "x.yaml").write_text(text)


def test_errors_carry_the_line_and_say_quote_it(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(
        workdir,
        "extends: onprem\n"
        "kubernetes:\n"
        "  version: 1.34\n"
        "wiregaurd: {}\n"
        "iso:\n"
        "  volume_id: 'bad id'\n"
        "os:\n"
        "  codename: Noble\n",
    )
    code, _, err = run_cli(capsys, "show", "x")
    assert code == 2
    lines = err.splitlines()
    assert (
        "error: profiles/x.yaml: line 3: kubernetes.version: expected string, got a number; "
        'YAML read 1.34 as a number: quote it ("1.34")'
    ) in lines
    assert (
        "error: profiles/x.yaml: line 4: wiregaurd: unknown key (did you mean 'wireguard'?)"
        in lines
    )
    assert any(
        ln.startswith("error: profiles/x.yaml: line 6: iso.volume_id: 'bad id' is not in the "
                      "expected form (1-32 characters A-Z 0-9 _)")
        for ln in lines
    )  # fmt: skip
    # a key without a hint of its own still says the form (the schema's pattern)
    (codename,) = [ln for ln in lines if "os.codename" in ln]
    assert codename == (
        "error: profiles/x.yaml: line 8: os.codename: 'Noble' is not in the expected form "
        "(the form: ^[a-z]+$)"
    )
