#!/usr/bin/python3
"""STAND-IN for nvidia-container-runtime (nvidia-container-toolkit-base), nodeforge fixture.

Reproduces what nodeforge relies on (UPSTREAM.md, "NVIDIA"):
- config: $NVIDIA_CTK_CONFIG_FILE_PATH, else $XDG_CONFIG_HOME/nvidia-container-runtime/
  config.toml when XDG_CONFIG_HOME is set, else /etc/nvidia-container-runtime/config.toml;
  missing -> the defaults;
- the low-level runtime: ``[nvidia-container-runtime] runtimes`` (default ["runc", "crun"]),
  first hit wins; a candidate with a "/" is taken as that path (must be an executable
  file); otherwise each directory of $PATH, then /usr/local/sbin /usr/local/bin /usr/sbin
  /usr/bin /sbin /bin; none found -> the real error message, exit 1;
- a container that requests no device (NVIDIA_VISIBLE_DEVICES unset, empty or "void") is
  handed to the low-level runtime unchanged; one that requests devices needs the driver
  (/proc/driver/nvidia/version or /sys/module/nvidia), else it fails with the real
  error chain (NVML: Driver Not Loaded).
Then it execs the low-level runtime with its own arguments.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib

DEFAULT_RUNTIMES = ["runc", "crun"]
DEFAULT_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
# a booted test guest cannot load a stand-in nvidia.ko: this file stands for "loaded"
STANDIN_DRIVER_FLAG = "/run/nodeforge-standin/nvidia-driver-loaded"
LOG = os.environ.get("NODEFORGE_STANDIN_LOG", "/var/log/nodeforge-standins.log")
PREFIX = "failed to create NVIDIA Container Runtime"


def log(msg: str) -> None:
    try:
        with open(LOG, "a") as fh:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            fh.write(f"{stamp} nvidia-container-runtime {msg}\n")
    except OSError:
        pass


def config_path() -> str:
    if os.environ.get("NVIDIA_CTK_CONFIG_FILE_PATH"):
        return os.environ["NVIDIA_CTK_CONFIG_FILE_PATH"]
    base = os.environ.get("XDG_CONFIG_HOME") or "/etc"
    return os.path.join(base, "nvidia-container-runtime", "config.toml")


def load_config() -> dict:
    try:
        with open(config_path(), "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}


def executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def search_dirs() -> list[str]:
    env = [d for d in os.environ.get("PATH", "").split(":") if d]
    return env + [d for d in DEFAULT_PATH if d not in env]


def locate(candidates: list[str]) -> str | None:
    for c in candidates:
        if "/" in c:
            if executable(c):
                return c
            continue
        for d in search_dirs():
            if executable(os.path.join(d, c)):
                return os.path.join(d, c)
    return None


def driver_loaded() -> bool:
    return (
        os.path.exists("/proc/driver/nvidia/version")
        or os.path.isdir("/sys/module/nvidia")
        or os.path.exists(STANDIN_DRIVER_FLAG)
    )


def requested_devices(argv: list[str]) -> str:
    bundle = ""
    for i, a in enumerate(argv):
        if a in ("--bundle", "-b") and i + 1 < len(argv):
            bundle = argv[i + 1]
    if not bundle:
        return ""
    try:
        with open(os.path.join(bundle, "config.json")) as fh:
            env = json.load(fh).get("process", {}).get("env", [])
    except (OSError, ValueError):
        return ""
    value = ""
    for item in env:
        if item.startswith("NVIDIA_VISIBLE_DEVICES="):
            value = item.split("=", 1)[1]
    return "" if value in ("", "void") else value


def main(argv: list[str]) -> int:
    if argv[:1] in (["--version"], ["-v"]):
        print("NVIDIA Container Runtime version @VERSION@ (nodeforge stand-in)")
        return 0
    log(" ".join(argv))
    section = load_config().get("nvidia-container-runtime", {})
    candidates = section.get("runtimes", DEFAULT_RUNTIMES)
    if not candidates:
        msg = "at least one runtime candidate must be specified"
        print(f"{PREFIX}: error constructing low-level runtime: {msg}", file=sys.stderr)
        return 1
    runtime = locate(list(candidates))
    if runtime is None:
        listed = " ".join(candidates)
        msg = (
            f"{PREFIX}: error constructing low-level runtime: error locating runtime: "
            f"no runtime binary found from candidate list: [{listed}]"
        )
        print(msg, file=sys.stderr)
        log(f"error: {msg}")
        return 1
    devices = requested_devices(argv)
    if devices and not driver_loaded():
        # jit-cdi (the "auto" default) in nvml mode; NVML_ERROR_DRIVER_NOT_LOADED's text comes
        # from libnvidia-ml (installed with the driver userspace): UPSTREAM.md, NVIDIA
        msg = (
            f"{PREFIX}: failed to construct OCI spec modifier: failed to create the automatic "
            'CDI modifier: failed to generate CDI spec for mode "auto": failed to construct '
            "device spec generators: failed to initialize NVML: Driver Not Loaded"
        )
        print(msg, file=sys.stderr)
        log(f"error: {msg}")
        return 1
    if devices:
        print(f"nvidia-container-runtime: devices {devices} injected (stand-in)", flush=True)
    log(f"low-level runtime {runtime}")
    os.execv(runtime, [runtime, *argv])
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
