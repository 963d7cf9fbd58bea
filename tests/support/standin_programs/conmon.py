#!/usr/bin/python3
"""STAND-IN for conmon (package cri-o, /usr/libexec/crio/conmon), nodeforge test fixture.

The container monitor CRI-O starts per container: ``-c ID -b BUNDLE -r RUNTIME
[--runtime-arg ARG]...``. The stand-in execs ``RUNTIME ARG... run --bundle BUNDLE ID``
(the real one runs ``create`` and leaves ``start`` to CRI-O; one ``run`` is enough here).
"""

from __future__ import annotations

import os
import sys
import time

LOG = os.environ.get("NODEFORGE_STANDIN_LOG", "/var/log/nodeforge-standins.log")


def main(argv: list[str]) -> int:
    cid = bundle = runtime = ""
    runtime_args: list[str] = []
    it = iter(argv)
    for a in it:
        if a in ("-c", "--cid"):
            cid = next(it, "")
        elif a in ("-b", "--bundle"):
            bundle = next(it, "")
        elif a in ("-r", "--runtime"):
            runtime = next(it, "")
        elif a == "--runtime-arg":
            runtime_args.append(next(it, ""))
        elif a in ("--version", "-v"):
            print("conmon version @VERSION@ (nodeforge stand-in)")
            return 0
    try:
        with open(LOG, "a") as fh:
            fh.write(
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} conmon {' '.join(argv)}\n"
            )
    except OSError:
        pass
    if not (cid and bundle and runtime):
        print("conmon: -c, -b and -r are required", file=sys.stderr)
        return 1
    argv2 = [runtime, *runtime_args, "run", "--bundle", bundle, cid]
    try:
        os.execv(runtime, argv2)
    except OSError as exc:
        print(f"conmon: exec {runtime}: {exc}", file=sys.stderr)
        return 1
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
