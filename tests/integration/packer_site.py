"""Test helper: render a real site (builder.render) with its package sources pointed at the
STAND-IN apt repository (builder/standins.py), so the provisioning scripts and Packer see
exactly the tree `builder render` writes, only with reachable repositories.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from builder.site.profile import load_profile
from builder.site.render import render_site

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES = REPO_ROOT / "profiles"


def standin_overrides(repo: str | dict[str, str], key_url: str, *, gpu: bool) -> list[str]:
    """--set overrides; ``repo`` is one URL or {kubernetes, crio, nvidia: URL}."""
    urls = repo if isinstance(repo, dict) else dict.fromkeys(("kubernetes", "crio", "nvidia"), repo)
    sets = [
        f"kubernetes.apt.url={urls['kubernetes']}",
        f"kubernetes.apt.key_url={key_url}",
        f"crio.apt.url={urls['crio']}",
        f"crio.apt.key_url={key_url}",
        "crio.insecure_registries=[registry.lab:5000]",
        "crio.registry_mirrors=['docker.io=mirror.lab:5000,mirror2.lab']",
        "kernel.modules=[nf_conntrack]",
        "time_sync.servers=[ntp1.example.net, ntp2.example.net]",
    ]
    if gpu:
        sets += [
            f"gpu.nvidia.apt.url={urls['nvidia']}",
            f"gpu.nvidia.apt.key_url={key_url}",
            "gpu.nvidia.container_toolkit_version='1.18.0'",
        ]
    return sets


def render_standin_site(
    site: str,
    out_dir: Path,
    repo_url: str | dict[str, str],
    key_url: str,
    extra: list[str] | None = None,
) -> Path:
    """Render ``site`` into ``out_dir`` (= build/<site>) with stand-in package sources."""
    probe = load_profile(site, PROFILES)
    gpu = bool(probe.get("gpu.enabled"))
    profile = load_profile(
        site, PROFILES, standin_overrides(repo_url, key_url, gpu=gpu) + (extra or [])
    )
    render_site(profile, out_dir)
    return out_dir


def set_pkrvars(tree: Path, **values: Any) -> None:
    path = tree / "packer" / "site.auto.pkrvars.json"
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data, indent=2) + "\n")


def shipped_sites() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml") if p.stem != "base")
