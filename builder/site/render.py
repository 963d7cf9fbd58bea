"""Render a validated profile into the build tree ``build/<site>/``.

One Jinja2 environment (StrictUndefined, keep_trailing_newline) over ``cloud-init/``;
pure functions from a Profile to file contents, then one atomic write of the whole tree
(rendered into a temp directory beside the target, then renamed into place).

Entry point for the targets: ``render_site(profile, out_dir=None) -> RenderResult``.
The layout of the tree is documented in ``builder/INTERFACES.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from builder import TOOL, __version__, buildinfo, paths
from builder.errors import BuilderError
from builder.fsutil import claim_output_dir, mark_ours
from builder.paths import NODE_DIR, SCRIPTS_DIR, TEMPLATES_DIR

from . import demo
from .checks import pem_to_der
from .credentials import password_hash, protect_secrets, secret_files
from .model import Taint
from .profile import Profile, thaw

ENROLL_UNIT = f"{TOOL}-enroll.service"
AGENT_SOURCE = NODE_DIR / "agent.py"
UNIT_SOURCE = NODE_DIR / ENROLL_UNIT
FAILOVER_UNIT = f"{TOOL}-failover.service"
FAILOVER_SOURCE = NODE_DIR / FAILOVER_UNIT
STATE_DIR = f"/var/lib/{TOOL}"
ETC_DIR = f"/etc/{TOOL}"
TOKEN_PATH = f"{ETC_DIR}/enroll-token"


@dataclass(frozen=True)
class OverlayFile:
    path: str  # absolute path on the node
    content: str
    mode: str = "0644"


@dataclass(frozen=True)
class RenderResult:
    site: str
    path: Path
    input_hash: str
    files: Mapping[str, str]  # relative path -> sha256
    secret_files: tuple[str, ...] = ()  # relative paths of the files that carry a secret (0600)

    def file(self, rel: str) -> Path:
        return self.path / rel


# ---------------------------------------------------------------------------------------
# Jinja2


class _BlockDumper(yaml.SafeDumper):
    """Dumps multi-line strings as literal blocks (PyYAML falls back to quotes if unsafe)."""


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_presenter)


def _to_yaml_scalar(value: Any, indent: int = 0) -> str:
    """``value`` as a YAML scalar placed after ``key: `` where ``key`` is at column ``indent``."""
    text = yaml.dump(value, Dumper=_BlockDumper, width=1 << 16, allow_unicode=True)
    text = text.removesuffix("\n").removesuffix("\n...").removesuffix("...")
    first, *rest = text.split("\n")
    return "\n".join([first, *[(" " * indent + line) if line else "" for line in rest]])


def _to_json(value: Any) -> str:
    return json.dumps(thaw(value), sort_keys=True, ensure_ascii=False)


_ENV_OPTIONS: dict[str, Any] = {
    "keep_trailing_newline": True,
    "trim_blocks": True,
    "lstrip_blocks": True,
    "autoescape": False,
}


def bytecode_cache() -> jinja2.BytecodeCache | None:
    """Compiled templates, kept under ``<cache>/jinja/<key>/`` (issue 17: compiling them is
    most of a render). Jinja keys an entry by template name and source only, so ``<key>``
    covers jinja2's version, ours and the environment's options. The entries are code this
    process runs: used only in directories this user owns that no one else can write."""
    opts = json.dumps([jinja2.__version__, __version__, sorted(_ENV_OPTIONS.items())])
    where = paths.cache_dir() / "jinja" / hashlib.sha256(opts.encode()).hexdigest()[:16]
    try:
        where.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (where.parent, where):
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return None
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(where))


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        bytecode_cache=bytecode_cache(),
        **_ENV_OPTIONS,
    )
    env.filters["to_yaml_scalar"] = _to_yaml_scalar
    env.filters["to_json"] = _to_json
    env.filters["shquote"] = lambda v: shlex.quote(str(v))
    return env


def _render(env: jinja2.Environment, name: str, ctx: Mapping[str, Any]) -> str:
    try:
        return env.get_template(name).render(**ctx)
    except jinja2.TemplateNotFound:
        raise BuilderError(f"{TEMPLATES_DIR / name}: template missing") from None
    except jinja2.UndefinedError as exc:
        raise BuilderError(f"cloud-init/{name}: {exc.message}") from None


# ---------------------------------------------------------------------------------------
# derived values


def image_name(profile: Profile) -> str:
    spec = profile.spec
    return spec.image.name.format(
        site=profile.site,
        os_release=spec.os.release,
        kubernetes_version=spec.kubernetes.version,
    )


def apt_url(url: str, minor: str) -> str:
    return url.replace("{minor}", minor)


def versions(profile: Profile) -> dict[str, Any]:
    spec = profile.spec
    out: dict[str, Any] = {
        "ubuntu": spec.os.release,
        "kubernetes": spec.kubernetes.version,
        "cri-o": spec.crio.version,
    }
    if spec.gpu.enabled:
        out["nvidia-driver"] = spec.gpu.nvidia.driver_branch
        out["nvidia-container-toolkit"] = spec.gpu.nvidia.container_toolkit_version
    return out


NVIDIA_VARIANT_SUFFIX = {"server": "-server", "open": "-open", "server-open": "-server-open"}
# the kernel each target boots (UPSTREAM.md): the installer's linux-generic, the cloud
# image's linux-virtual (= generic for the NVIDIA modules), linux-aws on Canonical's AMIs
NVIDIA_KERNEL_FLAVOUR = {"iso": "generic", "qcow2": "generic", "ami": "aws"}


def nvidia_packages(profile: Profile) -> dict[str, str]:
    """The signed driver the way ``ubuntu-drivers install --gpgpu`` picks it (no DKMS)."""
    nvidia = profile.spec.gpu.nvidia
    branch = nvidia.driver_branch
    sfx = NVIDIA_VARIANT_SUFFIX[nvidia.variant]
    flavour = NVIDIA_KERNEL_FLAVOUR.get(str(profile.spec.target), "generic")
    utils = "-server" if "server" in sfx else ""
    return {
        "flavour": flavour,
        "modules": f"linux-modules-nvidia-{branch}{sfx}-{flavour}",
        "driver": f"nvidia-headless-no-dkms-{branch}{sfx}",
        "utils": f"nvidia-utils-{branch}{utils}",
    }


def nvidia_driver_package(profile: Profile) -> str:
    return nvidia_packages(profile)["driver"]


def provision_env(profile: Profile, build_time: int) -> dict[str, str]:
    """The NF_* variables the provisioning scripts read (see INTERFACES.md)."""
    spec = profile.spec
    k8s_minor = profile.kubernetes_minor
    crio_minor = profile.crio_minor
    env = {
        "NF_TOOL": TOOL,
        "NF_SITE": profile.site,
        "NF_HOSTNAME_DEFAULT": hostname_default(profile),
        "NF_PROFILE_HASH": profile.input_hash,
        "NF_BUILDER_VERSION": __version__,
        "NF_BUILDER_COMMIT": buildinfo.builder_commit(),
        "NF_BUILD_TIME": str(build_time),
        "NF_MODULES": " ".join(profile.modules),
        "NF_SYSCTLS": " ".join(f"{k}={v}" for k, v in profile.sysctls.items()),
        "NF_SWAP": "on" if spec.swap.enabled else "off",
        "NF_NTP_SERVERS": " ".join(spec.time_sync.servers),
        "NF_TIMEZONE": spec.os.timezone,
        "NF_K8S_VERSION": spec.kubernetes.version,
        "NF_K8S_MINOR": k8s_minor,
        "NF_K8S_APT_URL": apt_url(spec.kubernetes.apt.url, k8s_minor),
        "NF_K8S_APT_KEY_URL": apt_url(spec.kubernetes.apt.key_url, k8s_minor),
        "NF_CRIO_VERSION": spec.crio.version,
        "NF_CRIO_APT_URL": apt_url(spec.crio.apt.url, crio_minor),
        "NF_CRIO_APT_KEY_URL": apt_url(spec.crio.apt.key_url, crio_minor),
        "NF_CRIO_CGROUP_MANAGER": spec.crio.cgroup_manager,
        "NF_CRIO_PAUSE_IMAGE": spec.crio.pause_image,
        "NF_CRIO_INSECURE_REGISTRIES": " ".join(spec.crio.insecure_registries),
        "NF_CRIO_REGISTRY_MIRRORS": " ".join(spec.crio.registry_mirrors),
        "NF_GPU": "1" if spec.gpu.enabled else "0",
    }
    if spec.gpu.enabled:
        nvidia = spec.gpu.nvidia
        pkgs = nvidia_packages(profile)
        env.update(
            {
                "NF_NVIDIA_DRIVER_PACKAGE": pkgs["driver"],
                "NF_NVIDIA_MODULES_PACKAGE": pkgs["modules"],
                "NF_NVIDIA_UTILS_PACKAGE": pkgs["utils"],
                "NF_NVIDIA_KERNEL_FLAVOUR": pkgs["flavour"],
                "NF_NVIDIA_DRIVER_BRANCH": nvidia.driver_branch,
                "NF_NVIDIA_VARIANT": nvidia.variant,
                "NF_NVIDIA_TOOLKIT_VERSION": nvidia.container_toolkit_version,
                "NF_NVIDIA_APT_URL": nvidia.apt.url,
                "NF_NVIDIA_APT_KEY_URL": nvidia.apt.key_url,
            }
        )
    return env


def env_file(env: Mapping[str, str]) -> str:
    lines = [f"# {TOOL} provisioning settings (rendered from the site profile)."]
    lines += [f"{k}={shlex.quote(str(v))}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def node_config(profile: Profile, build_time: int) -> dict[str, Any]:
    """``/etc/nodeforge/node.json``: what the enrollment agent needs (INTERFACES.md)."""
    spec = profile.spec
    return {
        "site": profile.site,
        "enroll_url": spec.enrollment.url,
        "ca_file": f"{ETC_DIR}/hub-ca.pem",
        "ca_pin": spec.enrollment.ca_pin,
        "token_file": TOKEN_PATH,
        "interface": spec.wireguard.interface,
        "image_version": profile.input_hash[:12],
        "build_time": build_time,
        "labels": dict(spec.kubernetes.labels),
        "taints": [_taint(t) for t in spec.kubernetes.taints],
        "kubernetes_version": spec.kubernetes.version,
        "state_dir": STATE_DIR,
        "retry_max_seconds": spec.enrollment.retry_max_seconds,
        "hostname_default": hostname_default(profile),
    }


def hostname_default(profile: Profile) -> str:
    """The image's placeholder host name: an image names no machine (cleanup.sh writes it,
    the ISO's identity sets it); a node still called so at enrollment names itself after its
    machine-id (the agent; the ISO's node seed)."""
    return f"{profile.site}-node"


def _taint(taint: Taint) -> dict[str, str]:
    """A taint as the profile wrote it (``value`` only when set)."""
    out = {"key": taint.key, "effect": taint.effect}
    if taint.value is not None:
        out["value"] = taint.value
    return out


def hub_ca_pem(profile: Profile) -> str:
    if not profile.spec.enrollment.ca_cert:
        raise BuilderError(
            f"{profile.where('enrollment.ca_cert')}: the hub CA certificate is required to "
            "build an image (nodes verify the hub with it)",
            hint="run `builder hub init DIR` and set enrollment.ca_cert: file:DIR/ca.pem",
        )
    text = profile.resolve_file("enrollment.ca_cert").read_text()
    pem_to_der(text)  # validated in profile; re-parse to fail loudly on a swapped file
    return text if text.endswith("\n") else text + "\n"


def _read_node_file(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise BuilderError(f"{path}: missing from the builder package") from None


def overlay_files(
    profile: Profile,
    env: jinja2.Environment,
    ctx: Mapping[str, Any],
    build_time: int,
    penv: Mapping[str, str],
) -> list[OverlayFile]:
    """Every file the node gets, as (node path, content, mode)."""
    files = [
        OverlayFile(
            f"/etc/modules-load.d/90-{TOOL}.conf", _render(env, "files/modules-load.conf.j2", ctx)
        ),
        OverlayFile(f"/etc/sysctl.d/90-{TOOL}.conf", _render(env, "files/sysctl.conf.j2", ctx)),
        OverlayFile(
            f"/etc/crio/crio.conf.d/20-{TOOL}.conf", _render(env, "files/crio.conf.j2", ctx)
        ),
        OverlayFile("/etc/default/kubelet", _render(env, "files/kubelet.default.j2", ctx)),
        OverlayFile(
            f"/etc/systemd/system/kubelet.service.d/20-{TOOL}.conf",
            _render(env, "files/kubelet-dropin.conf.j2", ctx),
        ),
        OverlayFile(
            f"{ETC_DIR}/node.json",
            json.dumps(node_config(profile, build_time), indent=2, sort_keys=True) + "\n",
        ),
        OverlayFile(f"{ETC_DIR}/hub-ca.pem", hub_ca_pem(profile)),
        OverlayFile(f"{ETC_DIR}/provision.env", env_file(penv)),
        OverlayFile(f"/usr/lib/{TOOL}/{TOOL}-enroll", _read_node_file(AGENT_SOURCE), "0755"),
        OverlayFile(f"/etc/systemd/system/{ENROLL_UNIT}", _read_node_file(UNIT_SOURCE)),
        OverlayFile(f"/etc/systemd/system/{FAILOVER_UNIT}", _read_node_file(FAILOVER_SOURCE)),
    ]
    if profile.spec.crio.registry_mirrors or profile.spec.crio.insecure_registries:
        files.append(
            OverlayFile(
                f"/etc/containers/registries.conf.d/90-{TOOL}.conf",
                _render(env, "files/registries.conf.j2", ctx),
            )
        )
    if profile.spec.time_sync.servers:
        files.append(
            OverlayFile(
                f"/etc/systemd/timesyncd.conf.d/10-{TOOL}.conf",
                _render(env, "files/timesyncd.conf.j2", ctx),
            )
        )
        files.append(
            OverlayFile(
                f"/etc/chrony/sources.d/{TOOL}.sources",
                _render(env, "files/chrony.sources.j2", ctx),
            )
        )
    if profile.spec.gpu.enabled:
        files.append(
            OverlayFile(
                f"/etc/crio/crio.conf.d/99-{TOOL}-nvidia.conf",
                _render(env, "files/crio-nvidia.conf.j2", ctx),
            )
        )
    token = profile.resolve_secret("enrollment.site_token")
    if token:
        files.append(OverlayFile(TOKEN_PATH, token + "\n", "0600"))
    return sorted(files, key=lambda f: f.path)


def context(profile: Profile, build_time: int) -> dict[str, Any]:
    spec = profile.spec
    static = spec.network.static
    return {
        "site": profile.site,
        "tool": TOOL,
        "os": spec.os,
        "admin": spec.admin,
        "crio": spec.crio,
        "modules": profile.modules,
        "sysctls": profile.sysctls,
        "swap_enabled": spec.swap.enabled,
        "ntp_servers": list(spec.time_sync.servers),
        "enroll_unit": ENROLL_UNIT,
        "wg_interface": spec.wireguard.interface,
        "static": static.template_data() if static else None,
        "storage_layout": spec.iso.storage_layout,
        # the kernel subiquity installs = the one the signed NVIDIA modules are for
        "kernel_flavour": NVIDIA_KERNEL_FLAVOUR["iso"],
        "hostname_default": hostname_default(profile),
        "instance_id": f"{profile.site}-{profile.input_hash[:12]}",
        "hostname": None,
        "build_time": build_time,
    }


def packer_vars(profile: Profile, build_time: int, penv: Mapping[str, str]) -> dict[str, Any]:
    """``packer/site.auto.pkrvars.json``: every variable the HCL2 templates declare."""
    spec = profile.spec
    aws, base = spec.aws, spec.qcow2.base_image
    return {
        "site": profile.site,
        "image_name": image_name(profile),
        "profile_hash": profile.input_hash,
        "builder_version": __version__,
        "builder_commit": buildinfo.builder_commit(),
        "build_time": build_time,
        "ubuntu_release": spec.os.release,
        "ubuntu_codename": spec.os.codename,
        "kubernetes_version": spec.kubernetes.version,
        "crio_version": spec.crio.version,
        "gpu": spec.gpu.enabled,
        "nvidia_driver_branch": spec.gpu.nvidia.driver_branch if spec.gpu.enabled else "",
        "disk_size_gb": spec.image.disk_size_gb,
        "aws_region": aws.region or "",
        "aws_instance_type": aws.instance_type,
        "aws_volume_size_gb": aws.volume_size_gb,
        "aws_ami_regions": list(aws.ami_regions),
        "aws_ami_users": list(aws.ami_users),
        "aws_kms_key_id": aws.kms_key_id or "",
        "aws_region_kms_key_ids": dict(aws.region_kms_key_ids),
        "aws_subnet_id": aws.subnet_id or "",
        "aws_vpc_id": aws.vpc_id or "",
        "aws_ssh_interface": aws.ssh_interface,
        "aws_tags": dict(aws.tags),
        "qemu_base_image_url": base.url,
        "qemu_base_image_checksum": (
            f"sha256:{base.sha256}" if base.sha256 else f"file:{base.sha256sums_url}"
        ),
        "provision_env": [f"{k}={v}" for k, v in penv.items()],
    }


# ---------------------------------------------------------------------------------------
# the tree


def render_files(profile: Profile) -> dict[str, tuple[bytes, int]]:
    """Every file of the build tree: relative path -> (content, mode). Pure."""
    build_time = buildinfo.source_date_epoch()
    env = environment()
    ctx = context(profile, build_time)
    penv = provision_env(profile, build_time)
    overlay = overlay_files(profile, env, ctx, build_time, penv)
    ctx_ud = {**ctx, "overlay_files": overlay}
    user_data = _render(env, "user-data.yaml.j2", ctx_ud)
    try:
        user_data_obj = yaml.safe_load(user_data)
    except yaml.YAMLError as exc:
        raise BuilderError(f"cloud-init/user-data.yaml.j2 rendered invalid YAML: {exc}") from None
    meta_data = _render(env, "meta-data.yaml.j2", ctx)
    autoinstall = _render(
        env,
        "autoinstall.yaml.j2",
        {**ctx, "admin_password_hash": password_hash(profile), "user_data": user_data_obj},
    )
    out: dict[str, tuple[bytes, int]] = {}

    def put(rel: str, text: str | bytes, mode: int = 0o644) -> None:
        out[rel] = (text.encode() if isinstance(text, str) else text, mode)

    put("cloud-init/user-data", user_data)
    put("cloud-init/meta-data", meta_data)
    put("cloud-init/autoinstall.yaml", autoinstall)
    if ctx["static"]:
        put("cloud-init/network-config", _render(env, "network-config.yaml.j2", ctx))
    for f in overlay:
        put("files" + f.path, f.content, int(f.mode, 8))
    penv_text = env_file(penv)
    put("scripts/provision.env", penv_text)
    scripts = sorted(SCRIPTS_DIR.glob("*.sh")) if SCRIPTS_DIR.is_dir() else []
    for script in scripts:
        put(f"scripts/{script.name}", script.read_bytes(), 0o755)
    put(
        "packer/site.auto.pkrvars.json",
        json.dumps(packer_vars(profile, build_time, penv), indent=2, sort_keys=True) + "\n",
    )
    # the ISO root additions: nocloud seed with the autoinstall, and our payload
    put(
        "iso/nocloud/user-data",
        "#cloud-config\nautoinstall:\n"
        + "".join(
            f"  {line}" if line.strip() else line for line in autoinstall.splitlines(keepends=True)
        ),
    )
    put("iso/nocloud/meta-data", meta_data)
    for rel in [r for r in out if r.startswith(("files/", "scripts/"))]:
        put(f"iso/{TOOL}/{rel}", *out[rel])
    put("profile.json", json.dumps(profile.masked(), indent=2, sort_keys=True) + "\n")
    protect_secrets(out, profile.resolve_secret("enrollment.site_token"))
    return out


def template_inputs_hash() -> str:
    """sha256 over every template, script and node file that feeds a render."""
    h = hashlib.sha256(__version__.encode())
    # named as in the checkout, so a wheel install (builder/_data/…) hashes the same
    for base, label in (
        (TEMPLATES_DIR, "cloud-init"),
        (SCRIPTS_DIR, "packer/scripts"),
        (NODE_DIR, "builder/node"),
    ):
        if not base.is_dir():
            continue
        for path in sorted(
            p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        ):
            rel = f"{label}/{path.relative_to(base).as_posix()}"
            h.update(rel.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def manifest(profile: Profile, files: Mapping[str, tuple[bytes, int]]) -> dict[str, Any]:
    digests = {rel: hashlib.sha256(data).hexdigest() for rel, (data, _) in sorted(files.items())}
    input_hash = hashlib.sha256((profile.input_hash + template_inputs_hash()).encode()).hexdigest()
    return {
        "tool": TOOL,
        "site": profile.site,
        "builder_version": __version__,
        "builder_commit": buildinfo.builder_commit(),
        "source_date_epoch": buildinfo.source_date_epoch(),
        "profile_hash": profile.input_hash,
        "input_hash": input_hash,
        "layers": list(profile.layers),
        "target": profile.spec.target,
        "image_name": image_name(profile),
        "versions": versions(profile),
        "files": digests,
    }


def default_build_dir(site: str) -> Path:
    return Path.cwd() / "build" / site


def render_site(profile: Profile, out_dir: Path | None = None) -> RenderResult:
    """Render the whole tree for ``profile`` into ``out_dir`` (default ``build/<site>``).

    Written atomically: the tree is built in a temp directory beside ``out_dir`` and
    renamed into place, so a failed render leaves the previous tree untouched.
    """
    target = Path(out_dir) if out_dir else default_build_dir(profile.site)
    claim_output_dir(target, "-o")  # before rendering: a refused directory costs nothing
    files = render_files(profile)
    demo.warn(profile.site, profile.demo_credentials())
    man = manifest(profile, files)
    files["manifest.json"] = (json.dumps(man, indent=2, sort_keys=True).encode() + b"\n", 0o644)
    write_tree(target, files)
    return RenderResult(profile.site, target, man["input_hash"], man["files"], secret_files(files))


def write_tree(target: Path, files: Mapping[str, tuple[bytes, int]]) -> None:
    """Write ``files`` as the tree ``target``, replacing it only if it is ours (marker)."""
    claim_output_dir(target, "-o")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        for rel, (data, mode) in sorted(files.items()):
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(path, mode)
        mark_ours(tmp)
        os.chmod(tmp, 0o755)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
