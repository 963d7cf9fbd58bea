"""builder/targets/layers.py without Packer: keys, entries, integrity, the staged layer tree.
(The real builds: tests/integration/test_packer_layers.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from builder.errors import BuilderError
from builder.targets import fetch, layers


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """The hash records (fetch.file_sha256) go to a cache of the test's own."""
    monkeypatch.setenv("BUILDER_CACHE_DIR", str(tmp_path / "cache"))


ENV = [
    "NF_TOOL=nodeforge",
    "NF_SITE=aws",
    "NF_PROFILE_HASH=ab",
    "NF_NTP_SERVERS=a b",
    "NF_K8S_VERSION=1.35.0",
    "NF_K8S_MINOR=1.35",
    "NF_K8S_APT_URL=http://k/",
    "NF_K8S_APT_KEY_URL=http://k/key",
    "NF_CRIO_VERSION=1.35",
    "NF_CRIO_APT_URL=http://c/",
    "NF_CRIO_APT_KEY_URL=http://c/key",
    "NF_CRIO_PAUSE_IMAGE=registry.k8s.io/pause:3.10",
    "NF_GPU=1",
    "NF_NVIDIA_DRIVER_BRANCH=580",
    "NF_NVIDIA_APT_URL=http://n/",
]


def test_package_env_is_what_the_install_steps_read():
    assert layers.package_env(ENV) == sorted(
        [
            "NF_TOOL=nodeforge",
            "NF_K8S_VERSION=1.35.0",
            "NF_K8S_APT_URL=http://k/",
            "NF_K8S_APT_KEY_URL=http://k/key",
            "NF_CRIO_VERSION=1.35",
            "NF_CRIO_APT_URL=http://c/",
            "NF_CRIO_APT_KEY_URL=http://c/key",
            "NF_GPU=1",
            "NF_NVIDIA_DRIVER_BRANCH=580",
            "NF_NVIDIA_APT_URL=http://n/",
        ]
    )


def test_the_package_variables_are_the_ones_the_install_scripts_use():
    """Every NF_* the package steps' scripts name is kept; none of the site-only ones."""
    import re

    scripts = Path(__file__).resolve().parents[2] / "packer" / "scripts"
    used = set()
    for name in ("install-crio.sh", "install-kubernetes.sh", "install-nvidia.sh"):
        used |= set(re.findall(r"\bNF_[A-Z0-9_]+", (scripts / name).read_text()))
    used -= {"NF_FILES_DIR", "NF_CHROOT"}  # not provisioning variables (INTERFACES.md)
    assert used and all(layers.PACKAGE_ENV.fullmatch(v) for v in used), used
    for site_only in ("NF_SITE", "NF_NTP_SERVERS", "NF_CRIO_PAUSE_IMAGE", "NF_MODULES"):
        assert not layers.PACKAGE_ENV.fullmatch(site_only)


def entry(root: Path, key: str, data: bytes, created: float | None = None) -> Path:
    built = root / "built.qcow2"
    root.mkdir(parents=True, exist_ok=True)
    built.write_bytes(data)
    img = layers.store(root, key, built, {"x": 1})
    if created is not None:
        meta = root / f"{key}.json"
        rec = json.loads(meta.read_text())
        rec["created"] = created
        meta.write_text(json.dumps(rec))
    return img


def test_store_records_an_independent_sha256_and_moves_the_file(tmp_path):
    img = entry(tmp_path, "k1", b"layer bytes")
    rec = json.loads((tmp_path / "k1.json").read_text())
    assert rec["sha256"] == hashlib.sha256(b"layer bytes").hexdigest()
    assert rec["size"] == 11 and rec["inputs"] == {"x": 1}
    assert not (tmp_path / "built.qcow2").exists() and img.read_bytes() == b"layer bytes"
    assert not list(tmp_path.glob(".*.part"))
    assert layers.lookup(tmp_path, "k1", 3600) == (img, "hit")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda img, meta: img.write_bytes(b"layer bytez"), "corrupt: sha256"),
        (lambda img, meta: img.write_bytes(b"short"), "corrupt: size 5, recorded 11"),
        (lambda img, meta: meta.write_text("{"), "corrupt: unreadable record"),
        (lambda img, meta: meta.unlink(), "missing"),
        (lambda img, meta: img.unlink(), "missing"),
    ],
)
def test_a_damaged_entry_is_never_used_and_is_removed(tmp_path, damage, reason):
    img = entry(tmp_path, "k1", b"layer bytes")
    damage(img, tmp_path / "k1.json")
    found, why = layers.lookup(tmp_path, "k1", 3600)
    assert found is None and why.startswith(reason)
    if why != "missing":
        assert not img.exists() and not (tmp_path / "k1.json").exists()


def test_an_old_entry_expires_and_prune_keeps_the_current_one(tmp_path):
    old = time.time() - 10 * 86400
    entry(tmp_path, "old", b"a", created=old)
    entry(tmp_path, "cur", b"b", created=old)
    entry(tmp_path, "new", b"c")
    assert layers.lookup(tmp_path, "old", 7 * 86400) == (None, "expired")
    layers.prune(tmp_path, 7 * 86400, keep="cur")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cur.json",
        "cur.qcow2",
        "new.json",
        "new.qcow2",
    ]


def test_max_age_and_switch_from_the_environment(monkeypatch):
    monkeypatch.setenv("BUILDER_LAYER_MAX_AGE_DAYS", "0.5")
    assert layers.max_age_seconds() == 43200
    monkeypatch.setenv("BUILDER_LAYER_MAX_AGE_DAYS", "soon")
    with pytest.raises(BuilderError, match="BUILDER_LAYER_MAX_AGE_DAYS: not a number"):
        layers.max_age_seconds()
    monkeypatch.setenv("BUILDER_PACKER_LAYERS", "0")
    assert not layers.enabled() and layers.enabled(True)
    monkeypatch.delenv("BUILDER_PACKER_LAYERS")
    assert layers.enabled() and not layers.enabled(False)


def test_base_digest_local_file_or_literal_checksum_only(tmp_path):
    base = tmp_path / "base.img"
    base.write_bytes(b"base")
    assert layers.base_digest(base, {}) == hashlib.sha256(b"base").hexdigest()
    hexd = "ab" * 32
    assert layers.base_digest(None, {"qemu_base_image_checksum": f"sha256:{hexd}"}) == hexd
    # a SHA256SUMS URL names no content until downloaded: no layer key
    assert layers.base_digest(None, {"qemu_base_image_checksum": "file:https://x/SUMS"}) is None


def test_staged_layer_tree_has_only_the_package_variables(tmp_path):
    site = tmp_path / "build" / "aws"
    (site / "scripts").mkdir(parents=True)
    (site / "files" / "etc").mkdir(parents=True)
    (site / "files" / "etc" / "token").write_text("secret")
    for name in layers.PACKAGE_SCRIPTS + ("configure-node.sh", "cleanup.sh"):
        (site / "scripts" / name).write_text(f"# {name}\n")
    (site / "scripts" / "provision.env").write_text("NF_SITE=aws\n")
    pkrvars = {"site": "aws", "provision_env": ENV}
    tree = layers.stage_layer_tree(site, pkrvars, tmp_path / "stage")
    assert tree.name == "aws"
    env = (tree / "scripts" / "provision.env").read_text().split()
    assert env == layers.package_env(ENV) and "NF_SITE=aws" not in env
    staged = json.loads((tree / "packer" / "site.auto.pkrvars.json").read_text())
    assert staged["provision_env"] == env and staged["site"] == "aws"
    assert list((tree / "files").iterdir()) == []  # no overlay (no token) in a shared layer
    assert (tree / "scripts" / "install-crio.sh").read_text() == "# install-crio.sh\n"
    # the key moves with every script the package steps run
    inputs = layers.layer_inputs(site, pkrvars, "0" * 64)
    key = layers.layer_key(inputs)
    (site / "scripts" / "cleanup.sh").write_text("# site step: not in the layer\n")
    assert layers.layer_key(layers.layer_inputs(site, pkrvars, "0" * 64)) == key
    (site / "scripts" / "common.sh").write_text("# changed\n")
    assert layers.layer_key(layers.layer_inputs(site, pkrvars, "0" * 64)) != key


def test_a_hit_hashes_the_layer_once_until_it_changes(tmp_path, monkeypatch):
    """Issue 17: the layer is hashed on its first use; later hits trust the recorded hash
    while the file's stamps are unchanged; any write (same size, even with the old mtime
    put back) changes ctime, and the layer is hashed again and dropped."""
    img = entry(tmp_path, "k1", b"layer bytes")
    hashed: list[Path] = []
    real = fetch.sha256_file

    def counting(path, *a, **k):
        hashed.append(Path(path))
        return real(path, *a, **k)

    monkeypatch.setattr(fetch, "sha256_file", counting)
    assert layers.lookup(tmp_path, "k1", 3600) == (img, "hit")
    assert layers.lookup(tmp_path, "k1", 3600) == (img, "hit")
    assert hashed == [img]
    st = img.stat()
    time.sleep(0.02)  # kernels without fine-grained ctime stamp in clock ticks (<= 10 ms)
    img.write_bytes(b"layer bytez")
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    found, why = layers.lookup(tmp_path, "k1", 3600)
    assert found is None and why.startswith("corrupt: sha256") and hashed == [img, img]


def test_a_local_base_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    base = tmp_path / "base.img"
    base.write_bytes(b"base")
    calls = []
    real = fetch.sha256_file
    monkeypatch.setattr(fetch, "sha256_file", lambda p, *a, **k: calls.append(p) or real(p))
    assert layers.base_digest(base, {}) == layers.base_digest(base, {})
    assert len(calls) == 1
    time.sleep(0.02)
    base.write_bytes(b"BASE")
    assert layers.base_digest(base, {}) == hashlib.sha256(b"BASE").hexdigest()
    assert len(calls) == 2
