"""The validated site profile as frozen, typed sections: one dataclass per profile section.

Built once by ``load_profile`` after the schema and the cross-field checks passed
(``Profile.spec``), so every key the schema requires or ``defaults.yaml`` supplies is
present with the type the schema promises. Optional keys that neither provides are
``None``. The defaults themselves live only in ``defaults.yaml``; nothing here repeats them.

Secret fields (``admin.password``, ``enrollment.site_token``) hold the *reference*
(``env:NAME`` / ``file:PATH``), never the secret: ``Profile.resolve_secret`` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class AptSource:
    url: str
    key_url: str


@dataclass(frozen=True)
class BaseImage:
    url: str | None
    sha256: str | None
    sha256sums_url: str | None


@dataclass(frozen=True)
class OsSection:
    distribution: str
    release: str
    codename: str
    locale: str
    timezone: str
    keyboard: str


@dataclass(frozen=True)
class AdminSection:
    username: str
    password: str | None  # a secret reference
    ssh_authorized_keys: tuple[str, ...]


@dataclass(frozen=True)
class StaticNetwork:
    address: str
    gateway: str
    interface: str | None
    dns: tuple[str, ...] | None

    def template_data(self) -> dict[str, Any]:
        """The mapping the cloud-init templates read (keys the profile set, only)."""
        out: dict[str, Any] = {"address": self.address, "gateway": self.gateway}
        if self.interface is not None:
            out["interface"] = self.interface
        if self.dns is not None:
            out["dns"] = list(self.dns)
        return out


@dataclass(frozen=True)
class NetworkSection:
    site_lan: str | None
    static: StaticNetwork | None


@dataclass(frozen=True)
class Taint:
    key: str
    value: str | None
    effect: str


@dataclass(frozen=True)
class KubernetesSection:
    version: str
    apt: AptSource
    pod_cidr: str
    service_cidr: str
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]


@dataclass(frozen=True)
class CrioSection:
    version: str
    apt: AptSource
    cgroup_manager: str
    pause_image: str
    insecure_registries: tuple[str, ...]
    registry_mirrors: tuple[str, ...]


@dataclass(frozen=True)
class KernelSection:
    modules: tuple[str, ...]
    sysctls: Mapping[str, int | str]


@dataclass(frozen=True)
class SwapSection:
    enabled: bool


@dataclass(frozen=True)
class TimeSyncSection:
    servers: tuple[str, ...]


@dataclass(frozen=True)
class WireguardSection:
    interface: str
    listen_port: int | None
    hub_endpoint: str
    hub_public_key: str
    overlay_cidr: str
    hub_overlay_ip: str
    mtu: int
    keepalive: int


@dataclass(frozen=True)
class EnrollmentSection:
    url: str
    ca_cert: str | None  # file:PATH of the hub CA certificate
    ca_pin: str
    site_token: str | None  # a secret reference
    retry_max_seconds: int


@dataclass(frozen=True)
class NvidiaSection:
    driver_branch: str
    variant: str
    container_toolkit_version: str
    apt: AptSource


@dataclass(frozen=True)
class GpuSection:
    enabled: bool
    nvidia: NvidiaSection


@dataclass(frozen=True)
class ImageSection:
    name: str
    disk_size_gb: int


@dataclass(frozen=True)
class IsoSection:
    base: BaseImage
    volume_id: str
    grub_timeout: int
    storage_layout: str


@dataclass(frozen=True)
class AwsSection:
    region: str | None
    instance_type: str
    volume_size_gb: int
    ami_regions: tuple[str, ...]
    ami_users: tuple[str, ...]
    kms_key_id: str | None
    region_kms_key_ids: Mapping[str, str]
    subnet_id: str | None
    vpc_id: str | None
    ssh_interface: str
    tags: Mapping[str, str]


@dataclass(frozen=True)
class Qcow2Section:
    base_image: BaseImage


@dataclass(frozen=True)
class SiteSpec:
    """Every section of a validated profile."""

    target: str
    description: str
    os: OsSection
    admin: AdminSection
    network: NetworkSection
    kubernetes: KubernetesSection
    crio: CrioSection
    kernel: KernelSection
    swap: SwapSection
    time_sync: TimeSyncSection
    wireguard: WireguardSection
    enrollment: EnrollmentSection
    gpu: GpuSection
    image: ImageSection
    iso: IsoSection
    aws: AwsSection
    qcow2: Qcow2Section


# ---------------------------------------------------------------------------------------
# building it from validated data


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value or ())


def _apt(d: Mapping[str, Any]) -> AptSource:
    return AptSource(url=d["url"], key_url=d["key_url"])


def _base(d: Mapping[str, Any]) -> BaseImage:
    return BaseImage(
        url=d.get("url"), sha256=d.get("sha256"), sha256sums_url=d.get("sha256sums_url")
    )


def _static(d: Mapping[str, Any] | None) -> StaticNetwork | None:
    if d is None:
        return None
    dns = d.get("dns")
    return StaticNetwork(
        address=d["address"],
        gateway=d["gateway"],
        interface=d.get("interface"),
        dns=None if dns is None else _strs(dns),
    )


def _under(defaults: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with the keys it lacks taken from ``defaults`` (mappings recursively)."""
    out = dict(defaults)
    for key, value in data.items():
        low = defaults.get(key)
        if isinstance(value, Mapping) and isinstance(low, Mapping):
            out[key] = _under(low, value)
        else:
            out[key] = value
    return out


def build_spec(data: Mapping[str, Any], defaults: Mapping[str, Any]) -> SiteSpec:
    """The typed view of merged, *validated* profile data (see the module docstring).

    ``defaults`` is the builder-defaults layer. Layering already put it under ``data``;
    it is applied again here for the one case layering cannot cover: a layer that
    replaced a whole section with a non-mapping (``gpu: null``) under a later layer that
    set only part of it (``gpu: {enabled: true}``) — the schema accepts that, and the
    missing keys then still have their defaults.
    """
    data = _under(defaults, data)
    k, c, g, a = data["kubernetes"], data["crio"], data["gpu"], data["aws"]
    nv, wg, en, iso = g["nvidia"], data["wireguard"], data["enrollment"], data["iso"]
    return SiteSpec(
        target=data["target"],
        description=data["description"],
        os=OsSection(**{f: data["os"][f] for f in OsSection.__dataclass_fields__}),
        admin=AdminSection(
            username=data["admin"]["username"],
            password=data["admin"].get("password"),
            ssh_authorized_keys=_strs(data["admin"].get("ssh_authorized_keys")),
        ),
        network=NetworkSection(
            site_lan=data["network"].get("site_lan"), static=_static(data["network"].get("static"))
        ),
        kubernetes=KubernetesSection(
            version=k["version"],
            apt=_apt(k["apt"]),
            pod_cidr=k["pod_cidr"],
            service_cidr=k["service_cidr"],
            labels=MappingProxyType({str(n): str(v) for n, v in k["labels"].items()}),
            taints=tuple(Taint(t["key"], t.get("value"), t["effect"]) for t in k["taints"]),
        ),
        crio=CrioSection(
            version=c["version"],
            apt=_apt(c["apt"]),
            cgroup_manager=c["cgroup_manager"],
            pause_image=c["pause_image"],
            insecure_registries=_strs(c["insecure_registries"]),
            registry_mirrors=_strs(c["registry_mirrors"]),
        ),
        kernel=KernelSection(
            modules=_strs(data["kernel"]["modules"]),
            sysctls=MappingProxyType(dict(data["kernel"]["sysctls"])),
        ),
        swap=SwapSection(enabled=data["swap"]["enabled"]),
        time_sync=TimeSyncSection(servers=_strs(data["time_sync"]["servers"])),
        wireguard=WireguardSection(
            interface=wg["interface"],
            listen_port=wg.get("listen_port"),
            hub_endpoint=wg["hub_endpoint"],
            hub_public_key=wg["hub_public_key"],
            overlay_cidr=wg["overlay_cidr"],
            hub_overlay_ip=wg["hub_overlay_ip"],
            mtu=wg["mtu"],
            keepalive=wg["keepalive"],
        ),
        enrollment=EnrollmentSection(
            url=en["url"],
            ca_cert=en.get("ca_cert"),
            ca_pin=en["ca_pin"],
            site_token=en.get("site_token"),
            retry_max_seconds=en["retry_max_seconds"],
        ),
        gpu=GpuSection(
            enabled=g["enabled"],
            nvidia=NvidiaSection(
                driver_branch=nv["driver_branch"],
                variant=nv["variant"],
                container_toolkit_version=nv["container_toolkit_version"],
                apt=_apt(nv["apt"]),
            ),
        ),
        image=ImageSection(name=data["image"]["name"], disk_size_gb=data["image"]["disk_size_gb"]),
        iso=IsoSection(
            base=_base(iso["base"]),
            volume_id=iso["volume_id"],
            grub_timeout=iso["grub_timeout"],
            storage_layout=iso["storage_layout"],
        ),
        aws=AwsSection(
            region=a.get("region"),
            instance_type=a["instance_type"],
            volume_size_gb=a["volume_size_gb"],
            ami_regions=_strs(a["ami_regions"]),
            ami_users=_strs(a["ami_users"]),
            kms_key_id=a.get("kms_key_id"),
            region_kms_key_ids=MappingProxyType(
                {str(r): str(k) for r, k in (a.get("region_kms_key_ids") or {}).items()}
            ),
            subnet_id=a.get("subnet_id"),
            vpc_id=a.get("vpc_id"),
            ssh_interface=a["ssh_interface"],
            tags=MappingProxyType({str(n): str(v) for n, v in a["tags"].items()}),
        ),
        qcow2=Qcow2Section(base_image=_base(data["qcow2"]["base_image"])),
    )
