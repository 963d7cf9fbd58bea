"""Target ``iso``: profile -> rendered tree -> verified base ISO -> remastered ISO in dist/.

``build_iso(profile, …)``:

1. render the build tree (``builder.render.render_site``), whose ``iso/`` holds the files
   to add (``nocloud/user-data``, ``nocloud/meta-data``, ``nodeforge/…``);
2. get the base: ``--base-iso PATH`` (sha256-verified unless ``verify=False``) or
   ``builder.fetch.fetch`` (download, resume, verify, cache);
3. if ``dist/<site>/manifest.json`` records the same cache key (base sha256, the rendered
   iso/ tree, volume id, timeout, epoch, builder version and remaster code) and the ISO is
   there with its recorded size, that is a cache hit (``force`` rebuilds);
4. remaster (``builder.iso.remaster``) into a temp file in ``dist/<site>/`` renamed into
   place only when complete: a killed build leaves no ``.iso`` (stale temp files are
   removed by the next build, under a lock);
5. write ``manifest.json`` and ``SHA256SUMS`` through ``builder.dist`` (the one schema:
   profile hash, builder version/commit, versions, the artifact's sha256 and size, plus
   the base url + sha256, the ISO settings and the cache key).

An ISO built from a tree that carries the site enrollment token is written 0600, with a
warning: it is a secret itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import mmap
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import TOOL, __version__, buildinfo, progress
from builder import dist as distfiles
from builder.errors import BuilderError, Refused, UsageError
from builder.fsutil import atomic_output, claim_output_dir, mark_ours
from builder.site import demo
from builder.site.profile import Profile, load_profile
from builder.site.render import image_name, render_site

from . import fetch, iso, packer
from .packer import PackerPlan, PackerResult

log = logging.getLogger("builder.image")

ISO_CODE = Path(iso.__file__)
HASH_STEP = 64 << 20  # bytes per hash update (each releases the GIL)


@dataclass(frozen=True)
class ImageResult:
    path: Path
    manifest: Path
    sha256: str
    size: int
    cached: bool


def default_dist(site: str) -> Path:
    return Path.cwd() / "dist" / site


@contextlib.contextmanager
def _dist_lock(dist: Path) -> Iterator[None]:
    claim_output_dir(dist, "--dist")
    dist.mkdir(parents=True, exist_ok=True)
    mark_ours(dist)
    with open(dist / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuilderError(
                f"{dist}: another build of this site is running",
                hint="wait for it to finish",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clean_stale(dist: Path, name: str) -> None:
    for stale in dist.glob(f".{name}.*.part"):
        log.info("removing the leftover of an interrupted build: %s", stale.name)
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def hash_and_flush(path: Path) -> tuple[str, int]:
    """sha256 and size of the just-written ``path``, with its fsync running meanwhile.

    The pages are still in the page cache: the hash maps them (no copy into this process)
    while a second thread writes them back to the disk, so the fsync ``atomic_output`` does
    before its rename finds nothing left to do. Both release the GIL.
    """
    h = hashlib.sha256()
    with open(path, "rb+") as fh:
        size = os.fstat(fh.fileno()).st_size
        flusher = threading.Thread(target=os.fsync, args=(fh.fileno(),), name="iso-fsync")
        flusher.start()
        try:
            if size:
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
                    pages = memoryview(view)  # slices of it are views, not copies
                    try:
                        for off in range(0, size, HASH_STEP):
                            h.update(pages[off : off + HASH_STEP])
                    finally:
                        pages.release()
        finally:
            flusher.join()
    return h.hexdigest(), size


def _tree_digest(tree: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(tree.rglob("*")):
        if p.is_file():
            rel = p.relative_to(tree).as_posix()
            mode = "x" if os.stat(p).st_mode & 0o111 else "-"
            h.update(f"{rel}\0{mode}\0".encode() + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def iso_settings(profile: Profile) -> tuple[str, int]:
    """Volume id and GRUB timeout (the schema has checked the timeout is >= 0)."""
    settings = profile.spec.iso
    volume_id = settings.volume_id or f"{TOOL.upper()}_{profile.site.upper()}"
    iso.check_volume_id(volume_id, profile.where("iso.volume_id"))
    return volume_id, settings.grub_timeout


@dataclass(frozen=True)
class LocalBase:
    """``--base-iso`` and how to check it, from the command line.

    The expected sha256, first match wins: ``sha256`` (``--base-sha256``), ``sums``
    (``--base-sha256sums FILE``), the profile's pinned ``iso.base.sha256``, a ``SHA256SUMS``
    file beside the ISO, the profile's ``iso.base.sha256sums_url`` (fetched). ``verify=False``
    (``--no-verify``) skips the check.
    """

    path: Path
    sha256: str | None = None
    sums: Path | None = None
    verify: bool = True


def check_base_options(
    base_iso: Path | None, verify: bool, base_sha256: str | None, base_sums: Path | None
) -> None:
    """Reject option combinations that would be silently ignored."""
    if base_iso is None:
        given = [
            opt
            for opt, on in (
                ("--no-verify", not verify),
                ("--base-sha256", base_sha256),
                ("--base-sha256sums", base_sums),
            )
            if on
        ]
        if given:
            raise UsageError(
                f"{', '.join(given)}: only with --base-iso (they say how to check a local ISO)",
                hint="a downloaded ISO is always checked against the profile's iso.base",
            )
        return
    if not verify and (base_sha256 or base_sums):
        raise UsageError("--no-verify and --base-sha256/--base-sha256sums contradict each other")
    if base_sha256 and base_sums:
        raise UsageError("give --base-sha256 or --base-sha256sums, not both")
    if base_sha256 and not fetch.is_sha256(base_sha256):
        raise UsageError(f"--base-sha256: not a sha256 hex digest: {base_sha256!r}")


def _local_sha256(profile: Profile, local: LocalBase, cache: Path | None) -> str:
    url = profile.spec.iso.base.url
    pinned = profile.spec.iso.base.sha256
    names = list(dict.fromkeys([fetch.file_name(url) if url else local.path.name, local.path.name]))
    if local.sha256:
        given = local.sha256.lower().removeprefix("sha256:")
        if pinned and pinned.lower().removeprefix("sha256:") != given:
            raise UsageError(
                f"--base-sha256: {given} differs from {profile.where('iso.base.sha256')} "
                f"({pinned})",
                hint="the profile pins the base; drop --base-sha256 or --set iso.base.sha256=…",
            )
        return given
    sums = local.sums
    if sums is None and not pinned:
        beside = local.path.parent / "SHA256SUMS"
        sums = beside if beside.is_file() else None
    if sums is not None:
        try:
            text = sums.read_text(errors="replace")
        except OSError as exc:
            raise UsageError(f"--base-sha256sums: {sums}: {exc.strerror}") from None
        for name in names:
            digest = fetch.parse_sha256sums(text, name)
            if digest:
                log.info("expected sha256 of %s from %s", name, sums)
                return digest
        raise UsageError(f"{sums}: no sha256 listed for {' or '.join(names)}")
    try:
        return fetch.resolve_sha256(
            pinned, profile.spec.iso.base.sha256sums_url, names[0], cache=cache
        )
    except BuilderError as exc:
        raise BuilderError(
            exc.message,
            hint="offline: give the checksum with --base-sha256 HEX, or put the release's "
            "SHA256SUMS beside the ISO (or --base-sha256sums FILE)",
        ) from exc


def _base(
    profile: Profile, local: LocalBase | None, cache: Path | None
) -> tuple[Path, str, dict[str, Any]]:
    url = profile.spec.iso.base.url
    pinned = profile.spec.iso.base.sha256
    sums = profile.spec.iso.base.sha256sums_url
    info: dict[str, Any] = {"url": url}
    if sums:
        info["sha256sums_url"] = sums
    if local is not None:
        base_iso = local.path
        if not base_iso.is_file():
            raise UsageError(f"--base-iso: {base_iso}: no such file")
        if local.verify:
            want = _local_sha256(profile, local, cache)
            log.info("verifying %s", base_iso)
            fetch.verify_file(base_iso, want)
            digest = want
        else:
            log.warning("--no-verify: using %s without checking its sha256", base_iso)
            digest = fetch.file_sha256(base_iso)
            info["verified"] = False
        info["local_path"] = str(base_iso)
        return base_iso, digest, info
    if not url:
        raise UsageError(
            f"{profile.where('iso.base.url')}: no base ISO URL", hint="or pass --base-iso PATH"
        )
    path = fetch.fetch(url, sha256=pinned, sha256sums_url=sums, cache=cache)
    return path, path.parent.name, info


def _cache_key(base_sha: str, tree: Path, volume_id: str, timeout: int | None, epoch: int) -> str:
    data = {
        "base_sha256": base_sha,
        "iso_tree": _tree_digest(tree),
        "volume_id": volume_id,
        "grub_timeout": timeout,
        "source_date_epoch": epoch,
        "builder_version": __version__,
        "remaster_code": hashlib.sha256(ISO_CODE.read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _cache_hit(dist: Path, name: str, key: str) -> ImageResult | None:
    man = distfiles.read(dist)
    if man is None or man.get("cache_key") != key:
        return None
    path = dist / name
    for art in man["artifacts"]:
        if art.get("name") == name and path.is_file() and path.stat().st_size == art.get("size"):
            manifest_path = dist / distfiles.MANIFEST
            return ImageResult(path, manifest_path, art["sha256"], art["size"], cached=True)
    return None


def build_iso(
    profile: Profile,
    *,
    dist: Path | None = None,
    build_dir: Path | None = None,
    base_iso: Path | None = None,
    verify: bool = True,
    force: bool = False,
    cache: Path | None = None,
    base_sha256: str | None = None,
    base_sums: Path | None = None,
) -> ImageResult:
    """Build (or reuse) ``dist/<site>/<image name>.iso``; see the module docstring."""
    volume_id, timeout = iso_settings(profile)
    check_base_options(base_iso, verify, base_sha256, base_sums)
    if base_iso is not None and not base_iso.is_file():
        raise UsageError(f"--base-iso: {base_iso}: no such file")
    local = LocalBase(base_iso, base_sha256, base_sums, verify) if base_iso else None
    dist = claim_output_dir(dist or default_dist(profile.site), "--dist")  # before writing
    rendered = render_site(profile, build_dir)
    tree = rendered.path / "iso"
    if not (tree / "nocloud" / "user-data").is_file():
        raise BuilderError(f"{tree}: the rendered tree has no nocloud/user-data")
    base, base_sha, base_info = _base(profile, local, cache)
    epoch = buildinfo.source_date_epoch()
    key = _cache_key(base_sha, tree, volume_id, timeout, epoch)
    name = f"{image_name(profile)}.iso"
    manifest_path = dist / distfiles.MANIFEST
    # an ISO that embeds a secret (the site enrollment token) is a secret itself
    carried = [rel for rel in rendered.secret_files if rel.startswith("iso/")]
    mode = 0o600 if carried else 0o644
    if carried:
        log.warning(
            "the ISO carries the site enrollment token (%s): it is written 0600; "
            "store and hand it out like the token itself",
            ", ".join(rel.removeprefix("iso/") for rel in carried),
        )
    with _dist_lock(dist):
        _clean_stale(dist, name)
        if not force:
            hit = _cache_hit(dist, name, key)
            if hit:
                os.chmod(hit.path, mode)
                log.info("cache hit: %s is up to date (--force rebuilds)", hit.path)
                return hit
        target = dist / name
        with (
            atomic_output(target, mode=mode) as tmp,
            progress.watch_file(tmp, base.stat().st_size, f"remaster {name}"),
        ):
            iso.remaster(base, tmp, tree, volume_id=volume_id, grub_timeout=timeout, epoch=epoch)
            digest, size = hash_and_flush(tmp)
        doc = distfiles.manifest(
            distfiles.tree_record(rendered.path),
            "iso",
            [{"type": "iso", "name": name, "sha256": digest, "size": size}],
            details={
                "cache_key": key,
                "base": {**base_info, "sha256": base_sha},
                "iso": {"volume_id": volume_id, "grub_timeout": timeout},
            },
        )
        distfiles.write(dist, doc)
    log.info("built %s (%d bytes, sha256 %s)", target, size, digest)
    return ImageResult(target, manifest_path, digest, size, cached=False)


def build_image(
    site: str,
    *,
    profiles_dir: Path | None = None,
    overrides: Sequence[str] = (),
    target: str | None = None,
    dist: Path | None = None,
    base_iso: Path | None = None,
    verify: bool = True,
    force: bool = False,
    base_sha256: str | None = None,
    base_sums: Path | None = None,
) -> ImageResult:
    """Load ``site`` and build its image; this module builds the ``iso`` target."""
    profile = load_profile(site, profiles_dir, overrides)
    kind = target or profile.spec.target
    if kind != "iso":
        raise UsageError(
            f"{profile.where('target')}: target {kind!r} is not an ISO "
            "(ami/qcow2 images are built by Packer)"
        )
    return build_iso(
        profile,
        dist=dist,
        base_iso=base_iso,
        verify=verify,
        force=force,
        base_sha256=base_sha256,
        base_sums=base_sums,
    )


def build(
    site: str,
    *,
    profiles_dir: Path | None = None,
    overrides: Sequence[str] = (),
    target: str | None = None,
    dist: Path | None = None,
    base_iso: Path | None = None,
    verify: bool = True,
    force: bool = False,
    dry_run: bool = False,
    base_image: Path | None = None,
    base_sha256: str | None = None,
    base_sums: Path | None = None,
    allow_demo: bool = False,
) -> ImageResult | PackerResult | PackerPlan:
    """The one target dispatch: build ``site``'s image, the target its profile names.

    ``iso`` is remastered here; ``ami`` and ``qcow2`` are Packer builds (``dry_run`` plans
    the Packer command without running it, ``base_image`` is a local qcow2 base).
    """
    profile = load_profile(site, profiles_dir, overrides)
    kind = target or profile.spec.target
    demo_refusal = None if allow_demo else _demo_refusal(profile)
    if demo_refusal is not None and not dry_run:
        raise demo_refusal
    if kind in packer.TARGETS:
        iso_only = [
            opt
            for opt, on in (
                ("--base-iso", base_iso),
                ("--no-verify", not verify),
                ("--base-sha256", base_sha256),
                ("--base-sha256sums", base_sums),
            )
            if on
        ]
        if iso_only:
            raise UsageError(f"{', '.join(iso_only)}: only for the iso target (this is {kind})")
        result = packer.build_site_image(
            site,
            kind,
            dry_run,
            profiles_dir=profiles_dir,
            overrides=overrides,
            dist=dist,
            base_image=base_image,
            force=force,
        )
        if isinstance(result, PackerPlan) and demo_refusal is not None:
            result.problems.append(demo_refusal)
        return result
    if dry_run or base_image:
        raise UsageError("--dry-run and --base-image are for ami/qcow2 targets")
    return build_image(
        site,
        profiles_dir=profiles_dir,
        overrides=overrides,
        target=kind,
        dist=dist,
        base_iso=base_iso,
        verify=verify,
        force=force,
        base_sha256=base_sha256,
        base_sums=base_sums,
    )


def _demo_refusal(profile: Profile) -> Refused | None:
    """An image must not silently carry the example profiles' demo hub credentials."""
    found = profile.demo_credentials()
    if not found:
        return None
    return Refused(
        f"{profile.site}: refusing to build an image with the demo hub credentials: "
        + "; ".join(found),
        hint=f"{demo.HINT}; --allow-demo builds it anyway (tests, labs)",
    )


def dry_run_report(result: ImageResult | PackerResult | PackerPlan) -> None:
    """For a dry run: log what the real run prepares first (stderr), and raise listing every
    problem the real run would stop at (exit 1) — a dry run that exits 0 would really run."""
    if not isinstance(result, PackerPlan):
        return
    for note in result.prepared:
        log.info("dry run: the build first creates %s", note)
    if result.problems:
        raise BuilderError(
            "\n".join(
                ["the real build would stop before Packer runs:"]
                + [f"  - {p.message}" for p in result.problems]
            ),
            hint=next((p.hint for p in result.problems if p.hint), None),
        )


def result_json(result: ImageResult | PackerResult | PackerPlan) -> dict[str, Any]:
    """``builder image --json``: the artifact(s), or for a dry run the plan and its problems."""
    if isinstance(result, ImageResult):
        return {
            "target": "iso",
            "path": str(result.path),
            "manifest": str(result.manifest),
            "sha256": result.sha256,
            "size": result.size,
            "cached": result.cached,
        }
    if isinstance(result, PackerPlan):
        return {
            "target": result.target,
            "dry_run": True,
            "command": result.command(),
            "argv": list(result.argv),
            "prepared": list(result.prepared),
            "problems": [p.message for p in result.problems],
        }
    return {
        "target": result.plan.target,
        "manifest": str(result.manifest),
        "artifacts": [
            {**a, "path": str(result.plan.dist_dir / a["name"])} if "name" in a else dict(a)
            for a in result.artifacts
        ],
    }


def result_lines(result: ImageResult | PackerResult | PackerPlan) -> list[str]:
    """What ``builder image`` prints on stdout: the ISO path, AMI ids, image paths or the
    planned Packer command."""
    if isinstance(result, ImageResult):
        return [str(result.path)]
    return packer.result_lines(result)
