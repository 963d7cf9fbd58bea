"""Random and mutated profiles never produce a traceback: only ValidationError/UsageError.

Reproducible in CI (the "ci" hypothesis profile in tests/conftest.py draws the same examples
every run); every failure a random run ever found is kept below as an @example.
"""

from __future__ import annotations

import string
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from builder.errors import BuilderError
from builder.site.model import build_spec
from builder.site.profile import collect_layers, load_profile, merge_layers, validate_data

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False),
    st.text(string.printable, max_size=20),
    st.sampled_from(
        [
            "10.0.0.0/8",
            "1.35",
            "1.35.0",
            "env:X",
            "file:/nope",
            "sha256:00",
            "https://x",
            "10.200.0.1",
            "abc=",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.text(string.ascii_lowercase + "._", min_size=1, max_size=12), children, max_size=4
        ),
    ),
    max_leaves=12,
)
KEYS = [
    "target",
    "os.release",
    "kubernetes.version",
    "crio.version",
    "wireguard.overlay_cidr",
    "wireguard.hub_overlay_ip",
    "wireguard.mtu",
    "network.site_lan",
    "network.static",
    "kernel.sysctls",
    "kernel.modules",
    "gpu",
    "gpu.nvidia",
    "enrollment.ca_pin",
    "enrollment.ca_cert",
    "admin.password",
    "kubernetes.labels",
    "kubernetes.taints",
    "iso",
    "aws",
    "extends",
    "os",
    "nonsense.key",
]


def set_path(data: dict, dotted: str, value: object) -> None:
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(st.sampled_from(KEYS), values), min_size=1, max_size=4))
def test_mutated_profiles_never_crash(workdir: Path, mutations: list) -> None:
    layers = collect_layers("aws")
    data, sources = merge_layers(layers)
    for key, value in mutations:
        set_path(data, key, value)
    problems = validate_data(data, sources, "profiles/aws.yaml")
    assert all(isinstance(p, str) and ": " in p for p in problems)
    if not problems:  # whatever validates must give the typed view without an error
        build_spec(data, layers[0].data)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values)
@example({None: 1})
@example({"extends": "base", "kernel": {"sysctls": {None: 1, "a": 2}}})
def test_random_profile_files_never_crash(workdir: Path, doc: object) -> None:
    (workdir / "profiles" / "fuzz.yaml").write_text(yaml.safe_dump(doc))
    try:
        load_profile("fuzz")
    except BuilderError as exc:
        assert exc.message


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200))
@example(b"~: 1\n")  # a null key: TypeError (issue 18 item 8); now "a key must be text"
@example(b"extends: base\nkubernetes:\n  labels:\n    ~: 1\n    a: b\n")
@example(b"[1]: 2")  # an unhashable key: TypeError inside the duplicate-key check
@example(b"extends: base\nkernel: {sysctls: {~: 1}}")  # null key sorted among names
def test_garbage_bytes_never_crash(workdir: Path, blob: bytes) -> None:
    (workdir / "profiles" / "fuzz.yaml").write_bytes(blob)
    try:
        load_profile("fuzz")
    except BuilderError as exc:
        assert exc.message
