"""The qcow2 `builder image` makes for a qcow2 site, for the boot lane (tests only).

A REAL ``packer build`` (Packer's qemu builder, TCG here) from the STAND-IN base image
(``rootfs.build_base_image``: Debian for Ubuntu's cloud image) with the site's real
provisioning scripts against the STAND-IN apt repository served over HTTP on the host's
loopback (the build VM reaches it at 10.0.2.2), exactly as tests/integration/
test_packer_layers.py does. The site is rendered for the boot lab's hub (the cached hub
identity ``builder boot-test`` uses: its enrollment URL, CA and WireGuard key), as a user
renders theirs for their hub; and with a SITE TOKEN baked in (``enrollment.site_token``),
minted beforehand on a lab hub database that ``PackerImage.lab`` keeps, so the image can
also be booted with no seed at all.

The disk has no boot loader (the stand-in base has none): it boots by direct kernel boot
with the base image's kernel and initrd (``boot_args``). Never cached: a site token is made
per build, and the build is what is under test.

The package set is, though: ``builder image`` keeps the installed package set as a layer
(builder/targets/layers.py), keyed by the repository URLs among its inputs. The stand-in
repository is therefore made once per content (``standin_repo``: cached, with its signing
key) and served at a URL that names that content on a port of its own (``REPO_PORTS``), so
the next build reuses the layer. On an ephemeral port every build had a new URL: a new layer,
the whole package set installed again under TCG (the clean-clone CI run of 2026-11-30 spent
most of the boot lane's 468 s first setup on it).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.boottest import BootImage, Lab, boot_image, hub_overrides
from builder.boottest.lab import cache_root
from builder.boottest.site import lab_identity
from builder.errors import BuilderError
from builder.fsutil import atomic_write
from builder.site.profile import load_profile
from builder.site.render import render_site
from builder.targets import packer
from tests.support import nodedisk, rootfs, standins

log = logging.getLogger("tests.support.packerimage")

# the base image's kernel command line (rootfs.KERNEL_APPEND) as `builder boot-test` uses it
APPEND = rootfs.KERNEL_APPEND


@dataclass
class PackerImage:
    """A built qcow2, how to boot it, and the lab hub database that knows its site token."""

    site: str
    qcow2: Path
    kernel: Path
    initrd: Path
    tree: Path
    lab: Lab  # not entered: ``with image.lab:`` starts using it (the token is in its DB)
    site_token_id: str
    seconds: dict[str, float] = field(default_factory=dict)

    def image(self, append_extra: str = "") -> BootImage:
        return boot_image(self.qcow2, kernel=self.kernel, initrd=self.initrd,
                          append=f"{APPEND} {append_extra}".strip())  # fmt: skip

    def boot_args(self) -> list[str]:
        """``builder boot-test SITE`` options that boot this image."""
        return ["--image", str(self.qcow2), "--kernel", str(self.kernel),
                "--initrd", str(self.initrd), "--append", APPEND]  # fmt: skip


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


# the stand-in repository's ports: below Linux's default ephemeral range (32768-60999) and
# tests/support/ports.py's (its 12000 below it), one picked by the repository's content;
# taken (another lane serves its repository): an ephemeral port, and a new layer
REPO_PORTS = range(19000, 20000)


def standin_repo() -> standins.StandinRepo:
    """The stand-in repository with the default versions, built once per content (the
    stand-in module and programs) under ``<cache>/boot-test/standin-repo/<digest>``."""
    h = hashlib.sha256(json.dumps(standins.DEFAULT_VERSIONS, sort_keys=True).encode())
    nodedisk.feed_standin_sources(h)
    digest = h.hexdigest()[:16]
    out = cache_root() / "standin-repo" / digest
    if (out / "Release.key").is_file():
        os.utime(out)
        return standins.StandinRepo(out, out / "Release.key", dict(standins.DEFAULT_VERSIONS))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=out.parent))
    try:
        repo = standins.build_standin_repo(tmp / "repo")
        try:
            (tmp / "repo").rename(out)
        except OSError:  # another session made it first: the same content
            if not (out / "Release.key").is_file():
                raise
        return standins.StandinRepo(out, out / "Release.key", repo.versions, repo.packages)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def repo_port(repo: standins.StandinRepo) -> int:
    """The port the stand-in repository ``repo`` is served on when it is free."""
    return REPO_PORTS[int(repo.path.name, 16) % len(REPO_PORTS)]


# (directory, port asked for) -> [server, users]: one server per repository in a process
_SERVERS: dict[tuple[str, int], list[Any]] = {}
_SERVERS_LOCK = threading.Lock()


@contextmanager
def serve(directory: Path, port: int = 0) -> Iterator[int]:
    """Serve ``directory`` on 127.0.0.1 while the block runs: on ``port`` when it is free,
    else on an ephemeral one (the port is yielded). Blocks of this process that serve the
    same directory on the same ``port`` share one server (and so one URL)."""
    key = (str(directory), port)
    with _SERVERS_LOCK:
        entry = _SERVERS.get(key) if port else None
        if entry is None:
            handler = functools.partial(_Quiet, directory=str(directory))
            try:
                server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
            except OSError:
                log.info("port %d is taken: the stand-in repository on an ephemeral port", port)
                server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            entry = [server, 0]
            if port:
                _SERVERS[key] = entry
        entry[1] += 1
    try:
        yield int(entry[0].server_address[1])
    finally:
        with _SERVERS_LOCK:
            entry[1] -= 1
            last = entry[1] == 0
            if last and _SERVERS.get(key) is entry:
                del _SERVERS[key]
        if last:
            entry[0].shutdown()
            entry[0].server_close()


def repo_overrides(url: str, key_url: str, gpu: bool) -> list[str]:
    """``--set`` overrides pointing every package source at the stand-in repository."""
    sets = [f"kubernetes.apt.url={url}", f"kubernetes.apt.key_url={key_url}",
            f"crio.apt.url={url}", f"crio.apt.key_url={key_url}"]  # fmt: skip
    if gpu:
        sets += [f"gpu.nvidia.apt.url={url}", f"gpu.nvidia.apt.key_url={key_url}"]
    return sets


@contextmanager
def served_render(site: str, tree: Path, overrides: Sequence[str] = ()) -> Iterator[Path]:
    """Render ``site`` (target qcow2) into ``tree`` for a packer build against the stand-in
    repository, served (``standin_repo``) while the block runs."""
    repo = standin_repo()
    name = repo.path.name  # the URL names the content: a new repository is a new layer
    with serve(repo.path.parent, repo_port(repo)) as port:
        url = f"http://10.0.2.2:{port}/{name}/"
        gpu = bool(load_profile(site, None, list(overrides)).spec.gpu.enabled)
        profile = load_profile(site, None, [
            *repo_overrides(url, url + "Release.key", gpu), "target=qcow2", *overrides,
        ])  # fmt: skip
        render_site(profile, tree)
        pkrvars = tree / "packer" / "site.auto.pkrvars.json"
        data = json.loads(pkrvars.read_text())
        # one vCPU: one of the boot lane's guests (guestslots.py), one host thread under TCG
        data.update(ssh_username="nodeforge-build", qemu_ssh_timeout="15m",
                    qemu_memory_mb=1024, qemu_cpus=1, disk_size_gb=4)  # fmt: skip
        pkrvars.write_text(json.dumps(data, indent=2) + "\n")
        yield tree


def build_qcow2(
    site: str,
    workdir: Path,
    *,
    overrides: Sequence[str] = (),
    edit_tree: Callable[[Path], None] | None = None,
    site_token_uses: int = 4,
    timeout: float = 3600,
) -> PackerImage:
    """Render ``site`` (target qcow2) for the lab hub with a site token and the stand-in
    repository, and run the real ``packer build``. ``edit_tree(tree)`` may change the
    rendered tree before the build (e.g. to show a test fails on a broken image).
    ``timeout``: 1500 s was not enough with 8 helpers on 2 cores (load ~30, 2026-11-30);
    unloaded the build takes ~120 s."""
    t0 = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    ident = lab_identity(site, None, overrides)
    lab = Lab(workdir / "site-token-lab", ident)
    token = lab.token(site, uses=site_token_uses, ttl="6h")
    token_file = workdir / "site-token"
    atomic_write(token_file, token + "\n", 0o600)
    base = rootfs.build_base_image()
    tree = workdir / "build" / site
    with served_render(site, tree, [*hub_overrides(ident),
                                    f"enrollment.site_token=file:{token_file}",
                                    *overrides]):  # fmt: skip
        if edit_tree is not None:
            edit_tree(tree)
        t1 = time.monotonic()
        serial = workdir / "packer-serial.log"
        result = packer.build_packer_image(
            tree, "qcow2", base_image=base.qcow2,
            qemu_args=[*base.qemu_args(), ["-serial", f"file:{serial}"]], timeout=timeout,
        )  # fmt: skip
    if not isinstance(result, packer.PackerResult):
        raise BuilderError(f"packer build of {site} returned no image")
    dist = tree.parent.parent / "dist" / site
    [art] = json.loads((dist / "manifest.json").read_text())["artifacts"]
    secs = {"render": round(t1 - t0, 1), "packer": round(time.monotonic() - t1, 1)}
    log.info("%s: qcow2 built by packer in %.1f s", site, secs["packer"])
    tid = token.split(".")[1]
    return PackerImage(site, dist / art["name"], base.kernel, base.initrd, tree, lab, tid, secs)
