"""STAND-IN apt repository for tests: real .debs named like the real packages.

Our machines cannot reach pkgs.k8s.io, the CRI-O or the NVIDIA repositories, so the
provisioning scripts are exercised against a local, signed, flat apt repository of
**stand-in** packages built here with ``dpkg-deb``. They carry the pinned versions (plus
newer decoy versions, so a broken pin is caught), and they reproduce the real packages'
observable layout and behaviour as recorded in ``UPSTREAM.md`` (the register; its values
are read by ``register()``):

- ``cri-o``: ``/usr/bin/crio``, ``/usr/libexec/crio/{conmon,crun,runc}``, the shipped
  ``/etc/crio/crio.conf.d/10-crio.conf`` and ``crio.service`` in /usr/lib/systemd/system,
  no ``crictl``; its ``crio`` merges drop-ins in the real precedence and refuses what the
  real one refuses (tests/support/standin_programs/crio.py), and starts a container
  through a handler's conmon and runtime (stand-in subcommand ``crio run-container``);
- ``kubeadm``/``kubelet``/``kubectl`` (kubelet.service, kubeadm's 10-kubeadm.conf drop-in,
  /etc/default/kubelet as a conffile); ``kubeadm join`` decodes, validates, runs the
  preflight checks, verifies the CA pin against the stand-in cluster's CA, writes the
  kubelet's files and restarts it through systemctl, then waits for it
  (standin_programs/kubeadm.py); the ``kubelet`` refuses what the real one refuses
  (standin_programs/kubelet.py);
- the NVIDIA driver the way ``ubuntu-drivers install --gpgpu`` installs it:
  ``linux-modules-nvidia-<branch>-server-{generic,aws}`` (signed modules),
  ``nvidia-headless-no-dkms-<branch>-server``, ``nvidia-utils-<branch>-server``
  (``nvidia-smi``: fails without a loaded driver), and the DKMS decoys
  ``nvidia-driver-<branch>-server`` -> ``nvidia-dkms-<branch>-server``;
- the toolkit split like the real one (``nvidia-container-toolkit`` depends on
  ``nvidia-container-toolkit-base (= version)``), whose ``nvidia-container-runtime``
  resolves its low-level runtime by the real rules and fails with the real message.

Every program appends ``"<time> <name> <args>"`` to ``/var/log/nodeforge-standins.log``.
Repository setup, signed-by keyrings, pinning, holds and service wiring run through real
apt/dpkg/gpg::

    repo = build_standin_repo(tmp / "repo")
    repo.path      # directory to serve (file:// or http) as a flat repo: deb [...] URL /
    repo.key_path  # armored public key, like the upstream Release.key
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.fsutil import atomic_write
from builder.run import run

REPO_ROOT = Path(__file__).resolve().parents[2]
PROGRAMS = Path(__file__).resolve().parent / "standin_programs"
STANDIN_LOG = "/var/log/nodeforge-standins.log"
STANDIN_JOIN_CONFIG = "/var/log/nodeforge-standins-kubeadm-join.yaml"

DEFAULT_VERSIONS = {
    "kubernetes": "1.35.0-1.1",
    "crio": "1.35.0-1.1",
    "nvidia_driver_branch": "580",
    "nvidia_driver": "580.173.02-0ubuntu0.24.04.1",
    "nvidia_toolkit": "1.18.0-1",
}


@functools.cache
def register() -> dict[str, Any]:
    """The machine-readable values of UPSTREAM.md (its last fenced ``yaml`` block)."""
    text = (REPO_ROOT / "UPSTREAM.md").read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```", text, flags=re.S | re.M)
    if not blocks:
        raise ValueError("UPSTREAM.md: no fenced yaml block with the machine-readable values")
    data = yaml.safe_load(blocks[-1])
    assert isinstance(data, dict)
    return data


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


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    description: str
    files: dict[str, str] = field(default_factory=dict)  # path -> text (0644)
    programs: dict[str, str] = field(default_factory=dict)  # path -> text (0755)
    depends: str = ""
    conffiles: tuple[str, ...] = ()
    postinst: str = ""


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
# (tests/support/standins.py): it records how it was called.
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) {name} $*" >>{STANDIN_LOG} 2>/dev/null || true
case "${{1:-}}" in
    --version|version|-v) echo "{name} version {version} (nodeforge stand-in)"; exit 0 ;;
esac
{extra}{tail}
"""


def program(name: str, package: str, version: str, binary: str = "") -> str:
    """A stand-in program from standin_programs/ with its placeholders filled in."""
    text = (PROGRAMS / name).read_text()
    return (
        text.replace("@VERSION@", version)
        .replace("@PACKAGE@", package)
        .replace("@NAME@", binary or name)
    )


# the control plane's side of `kubeadm join`, as the stand-in kubeadm reads it (no API server
# here): the cluster CA (cluster-info; its public-key hash is boottest's STATIC_CA_HASH) and
# the KubeletConfiguration kubeadm init uploads (kubelet-config ConfigMap; kubeadm's defaults)
STANDIN_CLUSTER_DIR = "/usr/share/nodeforge-standin/cluster"
STANDIN_CLUSTER_CA = PROGRAMS / "cluster-ca.crt"
STANDIN_KUBELET_CONFIG = """apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
healthzBindAddress: 127.0.0.1
healthzPort: 10248
rotateCertificates: true
staticPodPath: /etc/kubernetes/manifests
"""

_KUBELET_UNIT = """[Unit]
Description=kubelet: The Kubernetes Node Agent (nodeforge STAND-IN)
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""

# kubeadm's drop-in (REL 10-kubeadm.conf, /etc/sysconfig -> /etc/default under debbuild)
_KUBEADM_DROPIN = """# nodeforge STAND-IN of kubeadm's kubelet drop-in
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"""  # noqa: E501

_CRIO_UNIT = """[Unit]
Description=Container Runtime Interface for OCI (CRI-O) (nodeforge STAND-IN)
Wants=network-online.target
Before=kubelet.service
After=network-online.target

[Service]
Type=simple
EnvironmentFile=-/etc/default/crio
ExecStart=/usr/bin/crio $CRIO_CONFIG_OPTIONS
ExecReload=/bin/kill -s HUP $MAINPID
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
Alias=cri-o.service
"""


def crio_shipped_dropin(reg: dict[str, Any]) -> str:
    """The settings of the real package's 10-crio.conf (UPSTREAM.md), in our words."""
    c = reg["crio"]
    lines = [
        "# nodeforge STAND-IN of the cri-o package's drop-in (same settings as the real one)",
        "[crio.image]",
        'signature_policy = "/etc/crio/policy.json"',
        "",
        "[crio.runtime]",
        f'default_runtime = "{c["default_runtime"]}"',
    ]
    for name, h in c["runtimes"].items():
        lines += [
            "",
            f"[crio.runtime.runtimes.{name}]",
            f'runtime_path = "{h["runtime_path"]}"',
            f'runtime_root = "{h["runtime_root"]}"',
            f'monitor_path = "{c["conmon"]}"',
        ]
    return "\n".join(lines) + "\n"


def _crio(version: str, reg: dict[str, Any]) -> Pkg:
    c = reg["crio"]
    progs = {
        c["binary"]: program("crio.py", "cri-o", version),
        c["conmon"]: program("conmon.py", "cri-o", version),
    }
    for name, h in c["runtimes"].items():
        progs[h["runtime_path"]] = program("oci_runtime.sh", "cri-o", version, name)
    return Pkg(
        "cri-o",
        version,
        "CRI-O container runtime",
        files={
            c["shipped_dropin"]: crio_shipped_dropin(reg),
            "/etc/crio/policy.json": '{"default": [{"type": "insecureAcceptAnything"}]}\n',
            f"{c['unit_dir']}/{c['unit']}": _CRIO_UNIT,
            # the real package's registries drop-in (a conffile): the short-name search list
            c["shipped_registries_dropin"]: "unqualified-search-registries = "
            + json.dumps(c["shipped_unqualified_search_registries"])
            + "\n",
        },
        programs=progs,
        depends="python3",
        conffiles=(c["shipped_registries_dropin"],),
    )


def _kubernetes(v: str) -> list[Pkg]:
    return [
        Pkg(
            "kubeadm",
            v,
            "kubeadm",
            files={
                "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf": _KUBEADM_DROPIN,
                f"{STANDIN_CLUSTER_DIR}/ca.crt": STANDIN_CLUSTER_CA.read_text(),
                f"{STANDIN_CLUSTER_DIR}/kubelet-config.yaml": STANDIN_KUBELET_CONFIG,
            },
            programs={"/usr/bin/kubeadm": program("kubeadm.py", "kubeadm", v)},
            depends="python3, python3-yaml, openssl",
        ),
        Pkg(
            "kubelet",
            v,
            "kubelet",
            files={
                "/usr/lib/systemd/system/kubelet.service": _KUBELET_UNIT,
                "/etc/default/kubelet": "KUBELET_EXTRA_ARGS=\n",
            },
            programs={"/usr/bin/kubelet": program("kubelet.py", "kubelet", v)},
            conffiles=("/etc/default/kubelet",),
            depends="python3, python3-yaml",
        ),
        Pkg(
            "kubectl",
            v,
            "kubectl",
            programs={"/usr/bin/kubectl": _tool_script("kubectl", v, "kubectl", False)},
        ),
    ]


def _nvidia_driver(branch: str, drv: str, reg: dict[str, Any]) -> list[Pkg]:
    n = reg["nvidia"]
    sfx = n["variant_suffix"]["server"]
    fmt = {"branch": branch, "variant": sfx, "utils_variant": sfx}
    pkgs = [
        Pkg(
            n["modules_package"].format(**fmt, flavour=flavour),
            drv,
            f"the signed precompiled NVIDIA {branch} modules for linux-{flavour}",
            files={f"/lib/modules/standin-{flavour}/nvidia-{branch}srv/nvidia.ko": "stand-in\n"},
        )
        for flavour in sorted(set(n["kernel_flavour"].values()))
    ]
    pkgs += [
        Pkg(n["userspace_package"].format(**fmt), drv, "the NVIDIA headless driver, no DKMS"),
        Pkg(
            n["utils_package"].format(**fmt),
            drv,
            "the NVIDIA driver utilities",
            programs={
                n["nvidia_smi"]: program("nvidia_smi.sh", f"nvidia-utils-{branch}-server", drv)
            },
        ),
        Pkg(
            f"nvidia-dkms-{branch}{sfx}",
            drv,
            "NVIDIA DKMS modules (unsigned: do not load under Secure Boot)",
            files={f"/usr/src/nvidia-{branch}/dkms.conf": "stand-in\n"},
        ),
        Pkg(
            f"nvidia-driver-{branch}{sfx}",
            drv,
            "the NVIDIA driver metapackage (DKMS)",
            depends=f"nvidia-dkms-{branch}{sfx} (= {drv}), "
            f"{n['utils_package'].format(**fmt)} (= {drv})",
        ),
    ]
    return pkgs


def _toolkit(v: str, reg: dict[str, Any]) -> list[Pkg]:
    n = reg["nvidia"]
    base = "nvidia-container-toolkit-base"
    return [
        Pkg(
            base,
            v,
            "the NVIDIA container toolkit base",
            programs={
                n["runtime_binary"]: program("nvidia_container_runtime.py", base, v),
                n["ctk_binary"]: program("nvidia_ctk.py", base, v),
            },
            depends="python3",
            postinst=f"#!/bin/sh\nset -e\n{n['ctk_binary']} --quiet config "
            f"--config-file={n['runtime_config']} --in-place\n",
        ),
        Pkg("libnvidia-container1", v, "the NVIDIA container library"),
        Pkg(
            "libnvidia-container-tools",
            v,
            "the NVIDIA container library CLI",
            depends=f"libnvidia-container1 (>= {v})",
        ),
        Pkg(
            n["toolkit_package"],
            v,
            "the NVIDIA container toolkit",
            programs={
                "/usr/bin/nvidia-container-runtime-hook": _tool_script(
                    n["toolkit_package"], v, "nvidia-container-runtime-hook", False
                )
            },
            depends=f"{base} (= {v}), libnvidia-container-tools (>= {v})",
        ),
    ]


def _build_deb(work: Path, out_dir: Path, pkg: Pkg) -> Path:
    root = work / f"{pkg.name}_{pkg.version}"
    (root / "DEBIAN").mkdir(parents=True)
    control = (
        f"Package: {pkg.name}\n"
        f"Version: {pkg.version}\n"
        "Architecture: amd64\n"
        "Maintainer: nodeforge tests <tests@nodeforge.invalid>\n"
        "Section: admin\n"
        "Priority: optional\n"
        + (f"Depends: {pkg.depends}\n" if pkg.depends else "")
        + f"Description: STAND-IN for {pkg.description}\n"
        " Built by nodeforge's test fixtures; behaves like the real package where\n"
        " nodeforge relies on it (UPSTREAM.md).\n"
    )
    (root / "DEBIAN" / "control").write_text(control)
    if pkg.conffiles:
        (root / "DEBIAN" / "conffiles").write_text("".join(f"{c}\n" for c in pkg.conffiles))
    if pkg.postinst:
        (root / "DEBIAN" / "postinst").write_text(pkg.postinst)
        (root / "DEBIAN" / "postinst").chmod(0o755)
    for rel, text in {**pkg.files, **pkg.programs}.items():
        dest = root / rel.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        dest.chmod(0o755 if rel in pkg.programs else 0o644)
    deb = out_dir / f"{pkg.name}_{pkg.version}_amd64.deb"
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, deb])
    return deb


def _specs(versions: dict[str, str]) -> list[Pkg]:
    reg = register()
    k8s, crio = versions["kubernetes"], versions["crio"]
    branch, drv, tk = (
        versions["nvidia_driver_branch"],
        versions["nvidia_driver"],
        versions["nvidia_toolkit"],
    )
    specs: list[Pkg] = []
    for v in (k8s, _bump_patch(k8s), _bump_minor(k8s)):
        specs += _kubernetes(v)
    for v in (crio, _bump_minor(crio)):
        specs.append(_crio(v, reg))
    specs += _nvidia_driver(branch, drv, reg)
    for v in (tk, _bump_minor(tk)):
        specs += _toolkit(v, reg)
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
        for pkg in _specs(vers):
            _build_deb(work / "roots", dest / "pool", pkg)
            packages.setdefault(pkg.name, []).append(pkg.version)
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
