#!/usr/bin/python3
"""STAND-IN for crio (package cri-o), built by nodeforge's test fixtures.

Reproduces what nodeforge relies on (UPSTREAM.md, "CRI-O"):
- config: the main file (``--config``, default /etc/crio/crio.conf; skipped when missing
  unless given explicitly), then every regular file under ``--config-dir`` (default
  /etc/crio/crio.conf.d), recursively, in lexical order, later wins; a file that is not
  TOML is fatal; a ``[crio.runtime.runtimes.X]`` table replaces handler X whole;
- validation: cgroup_manager, conmon_cgroup for that manager, default_runtime must have a
  table, each handler's runtime_path/monitor_path must resolve (empty -> $PATH lookup);
  a failing default handler is fatal, other failing handlers are dropped with a warning;
- ``crio`` (daemon): validate, then listen on the CRI socket (``[crio.api] listen``);
  ``crio config``: validate and print the effective runtime settings.
STAND-IN only (the real crio has no such command): ``crio run-container
[--runtime-handler H] [--env K=V]...`` starts a container the way CRI-O does for a pod:
the handler's monitor (conmon) runs the handler's runtime_path with ``--root runtime_root
run --bundle DIR ID``; the exit status is the runtime's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
import tomllib
import uuid

VERSION = "@VERSION@"
LOG = os.environ.get("NODEFORGE_STANDIN_LOG", "/var/log/nodeforge-standins.log")
DEFAULT_CONFIG = "/etc/crio/crio.conf"
DEFAULT_CONFIG_DIR = "/etc/crio/crio.conf.d"
DEFAULT_LISTEN = "/var/run/crio/crio.sock"
COMPILED_DEFAULT_RUNTIME = "crun"


class Fatal(Exception):
    pass


def log(msg: str) -> None:
    try:
        with open(LOG, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} crio {msg}\n")
    except OSError:
        pass


def merge(base: dict, new: dict, path: tuple[str, ...] = ()) -> None:
    for key, value in new.items():
        here = (*path, key)
        if here[:3] == ("crio", "runtime", "runtimes") and len(here) == 4:
            base[key] = dict(value)  # a map entry: a fresh handler, nothing inherited
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value, here)
        elif isinstance(value, dict):
            base[key] = {}
            merge(base[key], value, here)
        else:
            base[key] = value


def dropins(directory: str) -> list[str]:
    out: list[str] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return out
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            out += dropins(path)
        elif os.path.isfile(path):
            out.append(path)
    return out


def load(config: str | None, config_dir: str) -> dict:
    cfg: dict = {}
    files = []
    main = config or DEFAULT_CONFIG
    if os.path.isfile(main):
        files.append(main)
    elif config:
        raise Fatal(f"config file {main} does not exist")
    else:
        log(f"Skipping not-existing config file {main}")
    files += dropins(config_dir)
    for path in files:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise Fatal(
                f"update config from drop-in file {path}: unable to decode configuration: {exc}"
            ) from None
        merge(cfg, data)
    return cfg


def lookpath(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", ""))


def check_handler(name: str, h: dict) -> dict:
    out = dict(h)
    rp = h.get("runtime_path", "")
    if not rp:
        found = lookpath(name)
        if not found:
            raise ValueError(
                f'"{name}" not found in $PATH: exec: "{name}": executable file not found in $PATH'
            )
        out["runtime_path"] = found
    elif not os.path.exists(rp):
        raise ValueError(
            f"invalid runtime_path for runtime '{name}': stat {rp}: no such file or directory"
        )
    mp = h.get("monitor_path", "")
    if not mp:
        found = lookpath("conmon")
        if not found:
            raise ValueError(
                f"failed to translate monitor fields for runtime {name}: "
                'exec: "conmon": executable file not found in $PATH'
            )
        out["monitor_path"] = found
    elif not os.path.exists(mp):
        raise ValueError(
            f"invalid monitor_path for runtime '{name}': stat {mp}: no such file or directory"
        )
    rtype = h.get("runtime_type", "oci")
    if rtype not in ("oci", "vm", "pod", ""):
        raise ValueError(f"invalid runtime_type {rtype!r} for runtime '{name}'")
    return out


def validate(cfg: dict) -> tuple[str, dict[str, dict]]:
    rt = cfg.get("crio", {}).get("runtime", {})
    manager = rt.get("cgroup_manager", "systemd")
    if manager not in ("systemd", "cgroupfs"):
        raise Fatal(f"invalid cgroup manager: {manager}")
    conmon_cgroup = rt.get("conmon_cgroup", "")
    if manager == "systemd":
        cg = conmon_cgroup or "system.slice"
        if cg != "pod" and not cg.endswith(".slice"):
            raise Fatal("conmon cgroup should be 'pod' or a systemd slice")
    elif conmon_cgroup not in ("", "pod"):
        raise Fatal("cgroupfs manager conmon cgroup should be 'pod' or empty")
    default = rt.get("default_runtime", COMPILED_DEFAULT_RUNTIME)
    handlers = rt.get("runtimes")
    if handlers is None:
        handlers = {COMPILED_DEFAULT_RUNTIME: {}}
    if default not in handlers:
        raise Fatal(
            f"default_runtime set to {default!r}, but no runtime entry table "
            f"[crio.runtime.runtimes.{default}] was found"
        )
    valid: dict[str, dict] = {}
    for name, h in handlers.items():
        try:
            valid[name] = check_handler(name, h)
        except ValueError as exc:
            if name == default:
                raise Fatal(f"validating runtime config: {exc}") from None
            print(f'level=warning msg="{exc}; runtime {name} removed"', file=sys.stderr)
            log(f"warning: {exc}")
    return default, valid


def run_container(default: str, valid: dict[str, dict], args: list[str]) -> int:
    handler, env = default, []
    it = iter(args)
    for a in it:
        if a == "--runtime-handler":
            handler = next(it, "") or default
        elif a == "--env":
            env.append(next(it, ""))
        else:
            raise Fatal(f"run-container: unknown argument {a}")
    if handler not in valid:
        print(
            f"failed to find runtime handler {handler} from runtime list {sorted(valid)}",
            file=sys.stderr,
        )
        return 1
    h = valid[handler]
    cid = uuid.uuid4().hex
    bundle = f"/run/nodeforge-standin/containers/{cid}"
    os.makedirs(bundle, mode=0o700)
    spec = {
        "ociVersion": "1.0.2",
        "process": {"args": ["/pause"], "env": env},
        "root": {"path": "rootfs"},
    }
    with open(os.path.join(bundle, "config.json"), "w") as fh:
        json.dump(spec, fh)
    argv = [h["monitor_path"], "-c", cid, "-b", bundle, "-r", h["runtime_path"]]
    if h.get("runtime_root"):
        argv += ["--runtime-arg", "--root", "--runtime-arg", h["runtime_root"]]
    log(f"run-container handler={handler} " + " ".join(argv))
    print(f"crio: container {cid} handler {handler} runtime {h['runtime_path']}", flush=True)
    os.execv(argv[0], argv)
    return 127


def main(argv: list[str]) -> int:
    config, config_dir, rest = None, DEFAULT_CONFIG_DIR, []
    it = iter(argv)
    for a in it:
        if a in ("-c", "--config"):
            config = next(it, None)
        elif a.startswith("--config="):
            config = a.split("=", 1)[1]
        elif a in ("-d", "--config-dir"):
            config_dir = next(it, DEFAULT_CONFIG_DIR)
        elif a.startswith("--config-dir="):
            config_dir = a.split("=", 1)[1]
        elif a in ("--version", "version", "-v"):
            print(f"crio version {VERSION} (nodeforge stand-in)")
            return 0
        else:
            rest.append(a)
    log(" ".join(argv))
    try:
        cfg = load(config, config_dir)
        default, valid = validate(cfg)
    except Fatal as exc:
        print(f'level=fatal msg="{exc}"', file=sys.stderr)
        log(f"fatal: {exc}")
        return 1
    if rest[:1] == ["config"]:
        print(f'[crio.runtime]\ndefault_runtime = "{default}"')
        for name, h in sorted(valid.items()):
            print(f"\n[crio.runtime.runtimes.{name}]")
            for k in ("runtime_path", "runtime_root", "monitor_path"):
                print(f'{k} = "{h.get(k, "")}"')
        return 0
    if rest[:1] == ["run-container"]:
        try:
            return run_container(default, valid, rest[1:])
        except Fatal as exc:
            print(str(exc), file=sys.stderr)
            return 2
    if rest:
        print(f"crio: unknown command {rest[0]} (stand-in)", file=sys.stderr)
        return 2
    # the CRI socket, where the real crio serves gRPC ([crio.api] listen): kubeadm's CRI
    # preflight check and the kubelet connect to it (the stand-ins only need it to answer)
    listen = str((cfg.get("crio", {}).get("api", {}) or {}).get("listen") or DEFAULT_LISTEN)
    os.makedirs(os.path.dirname(listen), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(listen)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(listen)
    sock.listen(64)
    print(f"crio: config ok, default runtime {default}, handlers {sorted(valid)}", flush=True)
    while True:  # the daemon: accept and drop connections
        conn, _ = sock.accept()
        conn.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
