#!/usr/bin/python3
"""STAND-IN for nvidia-ctk (nvidia-container-toolkit-base), nodeforge test fixture.

- ``nvidia-ctk [--quiet] config [--config-file F] [--in-place] [--set KEY=VALUE]...``: reads
  the runtime config (missing -> defaults), sets dotted keys (lists split on ":" or ","),
  writes it back with --in-place (what the package's postinst and our script run);
- ``nvidia-ctk cdi generate --output=F``: needs the driver (else NVML fails, nothing written);
- anything else is only logged.
"""

from __future__ import annotations

import os
import sys
import time
import tomllib

DEFAULT = {
    "nvidia-container-runtime": {"mode": "auto", "runtimes": ["runc", "crun"]},
}
CONFIG = "/etc/nvidia-container-runtime/config.toml"
# a booted test guest cannot load a stand-in nvidia.ko: this file stands for "loaded"
STANDIN_DRIVER_FLAG = "/run/nodeforge-standin/nvidia-driver-loaded"
LOG = os.environ.get("NODEFORGE_STANDIN_LOG", "/var/log/nodeforge-standins.log")
LIST_KEYS = {"nvidia-container-runtime.runtimes"}


def log(msg: str) -> None:
    try:
        with open(LOG, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} nvidia-ctk {msg}\n")
    except OSError:
        pass


def dump(data: dict) -> str:
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, (int, float)):
            return str(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    out = []
    for section in sorted(data):
        out.append(f"[{section}]")
        out += [f"{k} = {value(v)}" for k, v in sorted(data[section].items())]
        out.append("")
    return "\n".join(out)


def config(args: list[str]) -> int:
    path, in_place, sets = CONFIG, False, []
    it = iter(args)
    for a in it:
        if a.startswith("--config-file="):
            path = a.split("=", 1)[1]
        elif a == "--config-file":
            path = next(it, CONFIG)
        elif a in ("--in-place", "-i"):
            in_place = True
        elif a.startswith("--set="):
            sets.append(a.split("=", 1)[1])
        elif a == "--set":
            sets.append(next(it, ""))
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        data = {}
    for section, values in DEFAULT.items():
        for k, v in values.items():
            data.setdefault(section, {}).setdefault(k, v)
    for item in sets:
        key, _, raw = item.partition("=")
        section, _, name = key.rpartition(".")
        if not section:
            print(f"invalid --set {item!r}", file=sys.stderr)
            return 1
        val: object = raw
        if key in LIST_KEYS:
            val = [x for x in raw.replace(",", ":").split(":") if x]
        data.setdefault(section, {})[name] = val
    text = dump(data)
    if in_place:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str]) -> int:
    log(" ".join(argv))
    args = [a for a in argv if a not in ("--quiet", "-q")]
    if args[:1] in (["--version"], ["-v"]):
        print("NVIDIA Container Toolkit CLI version @VERSION@ (nodeforge stand-in)")
        return 0
    if args[:1] == ["config"]:
        return config(args[1:])
    if args[:2] == ["cdi", "generate"]:
        if not (
            os.path.exists("/proc/driver/nvidia/version")
            or os.path.isdir("/sys/module/nvidia")
            or os.path.exists(STANDIN_DRIVER_FLAG)
        ):
            msg = (
                "failed to create device CDI specs: failed to construct device spec "
                "generators: failed to initialize NVML: Driver Not Loaded"
            )
            print(f"failed to generate CDI spec: {msg}", file=sys.stderr)
            return 1
        out = next((a.split("=", 1)[1] for a in args if a.startswith("--output=")), "")
        spec = "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: [{name: all}]\n"
        if out:
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "w") as fh:
                fh.write(spec)
        else:
            sys.stdout.write(spec)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
