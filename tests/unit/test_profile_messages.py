"""Schema problems word for word (issue 18: mutmut rewrote these messages and the profile
tests stayed green). The form is the house style: `source: key.path: message`, with the
hint a user needs to fix the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.errors import ValidationError
from builder.site.profile import load_profile

CASES = [
    (
        "admin.ssh_authorized_keys=[not-a-key]",
        "--set: admin.ssh_authorized_keys.0: 'not-a-key' is not in the expected form "
        "(an OpenSSH public key line)",
    ),
    (
        "enrollment.ca_pin=sha1:00",
        "--set: enrollment.ca_pin: 'sha1:00' is not in the expected form "
        "(sha256:<64 hex digits>, as printed by `builder hub init`)",
    ),
    (
        "os.release=24",
        "--set: os.release: expected string, got an integer; YAML read 24 as a number: "
        'quote it ("24")',
    ),
    ("wireguard.mtu=abc", "--set: wireguard.mtu: expected integer, got a string"),
    ("target=floppy", "--set: target: 'floppy' is not one of 'iso', 'ami', 'qcow2'"),
    (
        "admin.password=hunter2",
        "--set: admin.password: must be a reference (env:NAME or file:PATH), "
        "never the secret itself",
    ),
    ("kernel.sysctls=[1]", "--set: kernel.sysctls: expected object, got a list"),
    ("kubernetes.taints=[{key: a}]", "--set: kubernetes.taints.0.effect: required key is missing"),
    ("admin.usernam=x", "--set: admin.usernam: unknown key (did you mean 'username'?)"),
]


@pytest.mark.parametrize(("override", "problem"), CASES, ids=[c[0] for c in CASES])
def test_schema_problem_word_for_word(workdir: Path, override: str, problem: str) -> None:
    with pytest.raises(ValidationError) as exc:
        load_profile("aws", overrides=[override])
    assert exc.value.problems[0] == problem
    if override.startswith("enrollment.ca_pin"):  # also: it is not the shipped CA's pin
        # `openssl x509 -in profiles/demo-hub-ca.pem -outform der | sha256sum` (2026-11-30)
        pin = "sha256:d509091427fb9165fe29c32c125acaed349f5dd4b83036f4b4acfadb095a338a"
        assert exc.value.problems[1:] == [
            "--set: enrollment.ca_pin: does not match the CA certificate "
            f"profiles/demo-hub-ca.pem ({pin})"
        ]
    else:
        assert len(exc.value.problems) == 1


def test_unknown_key_without_a_guess_lists_the_allowed_keys(workdir: Path) -> None:
    with pytest.raises(ValidationError) as exc:
        load_profile("aws", overrides=["swap.qqqqqqqq=1"])
    (problem,) = exc.value.problems
    assert problem.startswith("--set: swap.qqqqqqqq: unknown key; allowed: ")
