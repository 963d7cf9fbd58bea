"""The package layer cache of qcow2 builds: install a package set once, reuse it.

A qcow2 build is split in two Packer runs of the same template:

1. the **package layer**: the base image plus ``provision.sh``'s package steps
   (``base-packages install-crio install-kubernetes install-nvidia``), run with only the
   provisioning variables those steps read (:data:`PACKAGE_ENV`). Its output qcow2 is
   stored in the cache under a key that hashes exactly those inputs: the base image's
   sha256, those variables, the scripts the steps run, the build user and the disk size;
2. the **site build**: that layer booted as the base, running the site steps
   (``configure-node cleanup``): the overlay, swap, time, enrollment, release file, cleanup.

A rebuild with an unchanged package set (another NTP server, a new token, a new hub CA, or
another site with the same packages) skips step 1: nothing is downloaded or installed again;
the build is one boot of the layer, the site steps and the shutdown.

Integrity: an entry is ``<key>.qcow2`` plus ``<key>.json`` (its size and sha256, the inputs
and when it was made), each written atomically (temp file, fsync, rename), the qcow2 first.
Before use the qcow2's sha256 is compared with the record (and Packer checks the same
sha256 again); the qcow2 is hashed on its first use and then again only when its identity or
change stamps differ (``fetch.file_sha256``: device, inode, size, mtime, ctime; ctime is set
by the kernel on every change and cannot be set back, see builder/targets/fetch.py), as is
a local base image (issue 17: the two re-hashes were 14-19 s of a rebuild on a busy disk,
more than 5 % of it); a mismatch deletes the entry and the layer is rebuilt from the repositories,
where apt verifies every package against the signed indexes as on any build. Entries older
than ``BUILDER_LAYER_MAX_AGE_DAYS`` (default 7) are rebuilt, so the main archive's updates
reach the image at least weekly; ``builder image --force`` rebuilds the layer now.
``BUILDER_PACKER_LAYERS=0`` turns the cache off (one Packer run, every step, as before).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import BuilderError
from builder.fsutil import atomic_output, atomic_write, sha256_file
from builder.paths import cache_dir

from . import fetch

log = logging.getLogger("builder.layers")

FORMAT = 1  # bump when the split below changes in a way the inputs do not show
PACKAGE_STEPS = "base-packages install-crio install-kubernetes install-nvidia"
SITE_STEPS = "configure-node cleanup"
# what the package steps run (provision.sh sources common.sh and runs the install scripts)
PACKAGE_SCRIPTS = (
    "provision.sh",
    "common.sh",
    "install-crio.sh",
    "install-kubernetes.sh",
    "install-nvidia.sh",
)
# the only provisioning variables the package steps see (INTERFACES.md)
PACKAGE_ENV = re.compile(
    r"NF_(TOOL|GPU|K8S_VERSION|K8S_APT_URL|K8S_APT_KEY_URL"
    r"|CRIO_VERSION|CRIO_APT_URL|CRIO_APT_KEY_URL|NVIDIA_[A-Z0-9_]+)"
)
DEFAULT_MAX_AGE_DAYS = 7.0
_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")


def enabled(flag: bool | None = None) -> bool:
    if flag is not None:
        return flag
    return os.environ.get("BUILDER_PACKER_LAYERS", "1") not in ("0", "off", "no", "false")


def layer_root() -> Path:
    """``$BUILDER_LAYER_CACHE_DIR``, else ``layers/`` in the one cache dir."""
    env = os.environ.get("BUILDER_LAYER_CACHE_DIR")
    return Path(env) if env else cache_dir() / "layers"


def max_age_seconds() -> float:
    raw = os.environ.get("BUILDER_LAYER_MAX_AGE_DAYS", str(DEFAULT_MAX_AGE_DAYS))
    try:
        days = float(raw)
    except ValueError as exc:
        raise BuilderError(f"BUILDER_LAYER_MAX_AGE_DAYS: not a number: {raw!r}") from exc
    return days * 86400


def package_env(provision_env: Sequence[str]) -> list[str]:
    """The ``KEY=value`` entries the package steps read, sorted."""
    return sorted(e for e in provision_env if PACKAGE_ENV.fullmatch(e.partition("=")[0]))


def layer_inputs(site_tree: Path, pkrvars: Mapping[str, Any], base_sha256: str) -> dict[str, Any]:
    """Everything the package layer depends on (its cache key is the hash of this)."""
    scripts = site_tree / "scripts"
    return {
        "format": FORMAT,
        "base_sha256": base_sha256,
        "env": package_env(pkrvars.get("provision_env") or []),
        "scripts": {n: sha256_file(scripts / n) for n in PACKAGE_SCRIPTS},
        "steps": PACKAGE_STEPS,
        "ssh_username": str(pkrvars.get("ssh_username", "ubuntu")),
        "disk_size_gb": pkrvars.get("disk_size_gb", 20),
    }


def layer_key(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class LayerUse:
    """What the build did with the layer cache (``PackerResult.layer``)."""

    key: str
    path: Path
    hit: bool
    reason: str  # "hit", "missing", "expired", "corrupt: …", "forced"


def lookup(root: Path, key: str, max_age: float) -> tuple[Path | None, str]:
    """The verified layer for ``key``, or None and why not (a bad entry is removed)."""
    img, meta = root / f"{key}.qcow2", root / f"{key}.json"
    if not img.exists() or not meta.exists():
        return None, "missing"
    try:
        record = json.loads(meta.read_text())
        want, size, made = str(record["sha256"]), int(record["size"]), float(record["created"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _drop(img, meta, f"corrupt: unreadable record ({exc})")
    if time.time() - made > max_age:
        return _drop(img, meta, "expired")
    have_size = img.stat().st_size
    if have_size != size:
        return _drop(img, meta, f"corrupt: size {have_size}, recorded {size}")
    have = fetch.file_sha256(img)  # hashed again only if the file changed since (see above)
    if have != want:
        return _drop(img, meta, f"corrupt: sha256 {have}, recorded {want}")
    return img, "hit"


def _drop(img: Path, meta: Path, reason: str) -> tuple[None, str]:
    log.warning("layer cache: %s: %s; rebuilding it", img.name, reason)
    for p in (meta, img):  # the record first: an image without a record is never used
        p.unlink(missing_ok=True)
    return None, reason


def store(root: Path, key: str, built: Path, inputs: Mapping[str, Any]) -> Path:
    """Move ``built`` into the cache as ``key`` (atomic), record its sha256; return the path."""
    img, meta = root / f"{key}.qcow2", root / f"{key}.json"
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{key}.json").unlink(missing_ok=True)
    with atomic_output(img) as tmp:
        try:
            os.replace(built, tmp)  # same filesystem: the layer is built below root
        except OSError:
            shutil.copyfile(built, tmp)
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
    record = {"sha256": digest, "size": size, "created": time.time(), "inputs": inputs}
    atomic_write(meta, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return img


def prune(root: Path, max_age: float, keep: str) -> None:
    """Remove entries older than ``max_age`` (never ``keep``) and stale temp files."""
    now = time.time()
    for meta in root.glob("*.json"):
        key = meta.stem
        if key == keep:
            continue
        try:
            made = float(json.loads(meta.read_text())["created"])
        except (OSError, ValueError, KeyError, TypeError):
            made = 0.0
        if now - made > max_age:
            meta.unlink(missing_ok=True)
            (root / f"{key}.qcow2").unlink(missing_ok=True)
    for part in root.glob(".*.part"):
        if now - part.stat().st_mtime > 86400:
            part.unlink(missing_ok=True)


def stage_layer_tree(site_tree: Path, pkrvars: Mapping[str, Any], dest: Path) -> Path:
    """A build tree for the package layer: the scripts, only the package variables, no overlay."""
    tree = dest / site_tree.name
    (tree / "scripts").mkdir(parents=True)
    (tree / "files").mkdir()
    (tree / "packer").mkdir()
    for script in sorted((site_tree / "scripts").glob("*.sh")):
        shutil.copy2(script, tree / "scripts" / script.name)
    env = package_env(pkrvars.get("provision_env") or [])
    atomic_write(tree / "scripts" / "provision.env", "".join(f"{e}\n" for e in env))
    atomic_write(
        tree / "packer" / "site.auto.pkrvars.json",
        json.dumps({**pkrvars, "provision_env": env}, indent=2, sort_keys=True) + "\n",
    )
    return tree


def base_digest(base_image: Path | None, pkrvars: Mapping[str, Any]) -> str | None:
    """The base image's sha256: hashed when local, else a literal ``sha256:`` checksum."""
    if base_image is not None:
        return fetch.file_sha256(base_image)
    m = _SHA256.fullmatch(str(pkrvars.get("qemu_base_image_checksum", "")).lower())
    return m.group(1) if m else None


def build_layered(
    site_tree: Path,
    *,
    dist_dir: Path | None,
    templates: Path | None,
    base_image: Path | None,
    qemu_args: Sequence[Sequence[str]] | None,
    extra_vars: Mapping[str, str] | None,
    timeout: float | None,
    force: bool = False,
) -> Any:
    """Build the qcow2 of ``site_tree`` on its cached package layer (made first if needed)."""
    from . import packer

    site_tree = site_tree.resolve()
    pkrvars = {**packer.load_site_tree(site_tree), **(extra_vars or {})}
    digest = base_digest(base_image, pkrvars)
    if digest is None:
        log.info("layer cache: the base image has no sha256 to key on; building in one run")
        return packer.build_packer_image(
            site_tree, "qcow2", dist_dir=dist_dir, templates=templates, base_image=base_image,
            qemu_args=qemu_args, extra_vars=extra_vars, timeout=timeout, layers=False,
        )  # fmt: skip
    root = layer_root()
    max_age = max_age_seconds()
    inputs = layer_inputs(site_tree, pkrvars, digest)
    key = layer_key(inputs)
    layer, reason = (None, "forced") if force else lookup(root, key, max_age)
    if layer is None:
        log.info("layer cache: %s (%s): installing the package set", key, reason)
        layer = _build_layer(
            site_tree, pkrvars, key, inputs, root, base_image, digest,
            templates=templates, qemu_args=qemu_args, timeout=timeout,
        )  # fmt: skip
        prune(root, max_age, keep=key)
    else:
        log.info("layer cache: %s hit: the package set is installed already", key)
    site_vars = {
        **(extra_vars or {}),
        "provision_steps": SITE_STEPS,
        "qemu_base_image_checksum": "sha256:" + sha256_of_entry(root, key),
    }
    result = packer.build_packer_image(
        site_tree, "qcow2", dist_dir=dist_dir, templates=templates, base_image=layer,
        qemu_args=qemu_args, extra_vars=site_vars, timeout=timeout, layers=False,
    )  # fmt: skip
    assert isinstance(result, packer.PackerResult)
    result.layer = LayerUse(key, layer, reason == "hit", reason)
    return result


def sha256_of_entry(root: Path, key: str) -> str:
    return str(json.loads((root / f"{key}.json").read_text())["sha256"])


def _build_layer(
    site_tree: Path,
    pkrvars: Mapping[str, Any],
    key: str,
    inputs: Mapping[str, Any],
    root: Path,
    base_image: Path | None,
    digest: str,
    *,
    templates: Path | None,
    qemu_args: Sequence[Sequence[str]] | None,
    timeout: float | None,
) -> Path:
    from . import packer

    # the layer is built below the cache root (never in dist/), then renamed into place
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root))
    try:
        tree = stage_layer_tree(site_tree, pkrvars, work / "build")
        # the base was hashed for the key already: Packer checks that digest
        layer_vars = {
            "provision_steps": PACKAGE_STEPS,
            "qemu_base_image_checksum": f"sha256:{digest}",
        }
        plan = packer.plan_packer(
            tree, "qcow2", dist_dir=work / "dist", base_image=base_image,
            qemu_args=qemu_args, extra_vars=layer_vars,
        )  # fmt: skip
        built = _run_plan(plan, templates, timeout)
        return store(root, key, built, inputs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_plan(plan: Any, templates: Path | None, timeout: float | None) -> Path:
    """Run the layer's Packer ``plan``; return its qcow2, left in the run dir."""
    from . import packer

    version = packer.packer_version()
    packer.preflight(plan.target, {**plan.pkrvars, **plan.runtime_vars}, version)
    packer._prepare(plan, version, templates)
    log.info("+ %s", plan.command())
    packer._stream(plan.argv, timeout)
    images = [
        Path(a["path"]) if Path(a["path"]).is_absolute() else plan.run_dir / a["path"]
        for b in packer.read_packer_manifest(plan.manifest_path)
        for a in packer.artifacts_from_build(b)
        if str(a.get("path", "")).endswith(".qcow2")
    ]
    if len(images) != 1:
        raise BuilderError(f"{plan.manifest_path}: expected one qcow2, Packer made {images}")
    return images[0]
