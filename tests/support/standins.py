"""STAND-IN apt repository for tests: real .debs named like the real packages.

Our machines cannot reach pkgs.k8s.io, the CRI-O or the NVIDIA repositories, so the
provisioning scripts are exercised against a local, signed, flat apt repository of
**stand-in** packages built here with ``dpkg-deb``: ``cri-o``, ``kubeadm``, ``kubelet``,
``kubectl``, ``nvidia-driver-<branch>-server`` (+ ``-open``), ``nvidia-container-toolkit``.
They carry the pinned versions (plus newer decoy versions, so a broken pin is caught), the
real systemd unit names (``crio.service``, ``kubelet.service``) and binaries that append
their arguments to ``/var/log/nodeforge-standins.log``. Repository setup, signed-by
keyrings, pinning, holds and service wiring thus run through real apt/dpkg/gpg.

Used by the chroot provisioning test, the Packer qemu build test (issue 5) and the QEMU
boot tests (issue 6)::

    repo = build_standin_repo(tmp / "repo")
    repo.path      # directory to serve (file:// or http) as a flat repo: deb [...] URL /
    repo.key_path  # armored public key, like pkgs.k8s.io's Release.key
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from builder.fsutil import atomic_write
from builder.run import run

STANDIN_LOG = "/var/log/nodeforge-standins.log"
STANDIN_JOIN_CONFIG = "/var/log/nodeforge-standins-kubeadm-join.yaml"

DEFAULT_VERSIONS = {
    "kubernetes": "1.35.0-1.1",
    "crio": "1.35.0-1.1",
    "nvidia_driver_branch": "570",
    "nvidia_driver": "570.195.03-0ubuntu0.24.04.1",
    "nvidia_toolkit": "1.18.0-1",
}


@dataclass(frozen=True)
class StandinRepo:
    path: Path
    key_path: Path
    versions: dict[str, str]
    packages: dict[str, list[str]] = field(default_factory=dict)  # name -> versions

    @property
    def url(self) -> str:
        return self.path.resolve().as_uri() + "/"

    @property
    def key_url(self) -> str:
        return self.key_path.resolve().as_uri()


def _bump_patch(version: str) -> str:
    """1.35.0-1.1 -> 1.35.1-1.1 (a decoy the pin must not choose)."""
    upstream, _, rev = version.partition("-")
    parts = upstream.split(".")
    parts[-1] = str(int(parts[-1]) + 1) if parts[-1].isdigit() else parts[-1] + "1"
    return ".".join(parts) + (f"-{rev}" if rev else "")


def _bump_minor(version: str) -> str:
    """1.35.0-1.1 -> 1.36.0-1.1 (a decoy from the next minor)."""
    upstream, _, rev = version.partition("-")
    parts = upstream.split(".")
    parts[1] = str(int(parts[1]) + 1)
    parts[2:] = ["0"] * len(parts[2:])
    return ".".join(parts) + (f"-{rev}" if rev else "")


def _tool_script(package: str, version: str, name: str, daemon: bool, extra: str = "") -> str:
    tail = "exec sleep infinity" if daemon else "exit 0"
    return f"""#!/bin/sh
# STAND-IN for {name} from {package} {version}, built by nodeforge's test fixtures
# (builder/standins.py): it only records how it was called.
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) {name} $*" >>{STANDIN_LOG} 2>/dev/null || true
case "${{1:-}}" in
    --version|version|-v) echo "{name} version {version} (nodeforge stand-in)"; exit 0 ;;
esac
{extra}{tail}
"""


_NVIDIA_SMI = """if [ "${1:-}" = -L ]; then
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor" 2>/dev/null)" = 0x10de ] && { echo "GPU 0: stand-in"; exit 0; }
    done
    echo "No devices were found"; exit 6
fi
"""

# `kubeadm join --config FILE`: keep a copy of the JoinConfiguration it was given (0600: it
# holds a bootstrap token) so boot tests can check node-ip, labels and taints.
_KUBEADM = """if [ "${1:-}" = join ]; then
    prev=""
    for a in "$@"; do
        if [ "$prev" = --config ] && [ -f "$a" ]; then
            (umask 077; cp "$a" @JOIN_CONFIG@) 2>/dev/null || true
        fi
        prev="$a"
    done
fi
""".replace("@JOIN_CONFIG@", STANDIN_JOIN_CONFIG)


_UNIT = """[Unit]
Description={desc} (nodeforge STAND-IN)
After=network-online.target

[Service]
ExecStart=/usr/bin/{binary}
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
"""


def _build_deb(
    work: Path,
    out_dir: Path,
    package: str,
    version: str,
    tools: dict[str, str],
    units: dict[str, str],
    description: str,
) -> Path:
    root = work / f"{package}_{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\n"
        f"Version: {version}\n"
        "Architecture: amd64\n"
        "Maintainer: nodeforge tests <tests@nodeforge.invalid>\n"
        "Section: admin\n"
        "Priority: optional\n"
        f"Description: STAND-IN for {description}\n"
        " Built by nodeforge's test fixtures; its programs only log their arguments.\n"
    )
    for rel, text in {**tools, **units}.items():
        dest = root / rel.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        dest.chmod(0o755 if rel in tools else 0o644)
    deb = out_dir / f"{package}_{version}_amd64.deb"
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, deb])
    return deb


def _specs(versions: dict[str, str]) -> list[tuple[str, str, dict[str, str], dict[str, str], str]]:
    k8s, crio = versions["kubernetes"], versions["crio"]
    branch, drv, tk = (
        versions["nvidia_driver_branch"],
        versions["nvidia_driver"],
        versions["nvidia_toolkit"],
    )
    specs = []
    for v in (k8s, _bump_patch(k8s), _bump_minor(k8s)):
        specs += [
            (
                "kubeadm",
                v,
                {"/usr/bin/kubeadm": _tool_script("kubeadm", v, "kubeadm", False, _KUBEADM)},
                {},
                "kubeadm",
            ),
            (
                "kubelet",
                v,
                {"/usr/bin/kubelet": _tool_script("kubelet", v, "kubelet", True)},
                {
                    "/lib/systemd/system/kubelet.service": _UNIT.format(
                        desc="kubelet", binary="kubelet"
                    )
                },
                "kubelet",
            ),
            (
                "kubectl",
                v,
                {"/usr/bin/kubectl": _tool_script("kubectl", v, "kubectl", False)},
                {},
                "kubectl",
            ),
        ]
    for v in (crio, _bump_minor(crio)):
        specs.append(
            (
                "cri-o",
                v,
                {
                    "/usr/bin/crio": _tool_script("cri-o", v, "crio", True),
                    "/usr/bin/crictl": _tool_script("cri-o", v, "crictl", False),
                },
                {"/lib/systemd/system/crio.service": _UNIT.format(desc="CRI-O", binary="crio")},
                "CRI-O container runtime",
            )
        )
    for pkg in (f"nvidia-driver-{branch}-server", f"nvidia-driver-{branch}-server-open"):
        specs.append(
            (
                pkg,
                drv,
                {"/usr/bin/nvidia-smi": _tool_script(pkg, drv, "nvidia-smi", False, _NVIDIA_SMI)},
                {},
                "the NVIDIA driver",
            )
        )
    for v in (tk, _bump_minor(tk)):
        specs.append(
            (
                "nvidia-container-toolkit",
                v,
                {
                    "/usr/bin/nvidia-ctk": _tool_script(
                        "nvidia-container-toolkit", v, "nvidia-ctk", False
                    ),
                    "/usr/bin/nvidia-container-runtime": _tool_script(
                        "nvidia-container-toolkit", v, "nvidia-container-runtime", False
                    ),
                },
                {},
                "the NVIDIA container toolkit",
            )
        )
    return specs


def _release(repo: Path) -> str:
    lines = [
        "Origin: nodeforge-standin",
        "Label: nodeforge STAND-IN packages",
        "Architectures: amd64",
        "Date: " + time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime()),
        "SHA256:",
    ]
    for name in ("Packages", "Packages.gz"):
        data = (repo / name).read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
    return "\n".join(lines) + "\n"


def build_standin_repo(dest_dir: str | Path, **versions: str) -> StandinRepo:
    """Build a signed flat apt repository of stand-in packages in ``dest_dir``.

    ``versions`` overrides DEFAULT_VERSIONS (keys: kubernetes, crio, nvidia_driver_branch,
    nvidia_driver, nvidia_toolkit; full Debian versions). The throwaway signing key is
    made fresh each time; only its public half is kept (``Release.key``).
    """
    unknown = set(versions) - set(DEFAULT_VERSIONS)
    if unknown:
        raise ValueError(f"unknown stand-in version keys: {sorted(unknown)}")
    vers = {**DEFAULT_VERSIONS, **versions}
    dest = Path(dest_dir)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "pool").mkdir(parents=True)
    packages: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="nf-standin-") as tmp:
        work = Path(tmp)
        for pkg, ver, tools, units, desc in _specs(vers):
            _build_deb(work / "roots", dest / "pool", pkg, ver, tools, units, desc)
            packages.setdefault(pkg, []).append(ver)
        scan = run(["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"], cwd=dest)
        (dest / "Packages").write_text(scan.stdout)
        (dest / "Packages.gz").write_bytes(gzip.compress(scan.stdout.encode(), mtime=0))
        (dest / "Release").write_text(_release(dest))

        gnupg = work / "gnupg"
        gnupg.mkdir(mode=0o700)
        env = {"GNUPGHOME": str(gnupg)}
        gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
        run(
            [
                *gpg,
                "--quick-gen-key",
                "nodeforge stand-in repo <standin@nodeforge.invalid>",
                "ed25519",
                "sign",
                "never",
            ],
            env=env,
        )
        run([*gpg, "--yes", "--clearsign", "-o", dest / "InRelease", dest / "Release"], env=env)
        run([*gpg, "--yes", "-abs", "-o", dest / "Release.gpg", dest / "Release"], env=env)
        key = run([*gpg, "--armor", "--export"], env=env).stdout
        atomic_write(dest / "Release.key", key)
        run(["gpgconf", "--kill", "all"], env=env, check=False)
    return StandinRepo(path=dest, key_path=dest / "Release.key", versions=vers, packages=packages)
