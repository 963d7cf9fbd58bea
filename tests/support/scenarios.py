"""Boots of the stand-in node (tests only): the hub is late, the token expired, no seed.

They drive the product's lab and node (``builder.boottest``) directly and read the TEST-ONLY
check program's report from the console (``bootcheck``), since what they prove happens
inside the guest: the agent's retries, and a clean stop with nothing half-configured.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from builder.boottest import Lab, make_node, node_user_data
from builder.boottest.constants import HUB_PORT, HUB_URL
from builder.boottest.node import boot_node
from builder.errors import BuilderError
from builder.node import agent
from builder.run import PIPE, popen, stop
from tests.support import bootcheck
from tests.support.bootcheck import STANDIN_GPU_ARG
from tests.support.nodedisk import StandinSite
from tests.support.packerimage import PackerImage
from tests.support.reportchecks import check_hub, check_joined, check_not_configured

_REFUSER = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
while True:
    c, _ = s.accept()
    print("refused", time.time(), flush=True)
    c.close()
"""


class HubOutage:
    """Stands in for a hub that is down: in the lab's namespace, accepts each connection
    on the hub's port and closes it at once (the node sees a failed TLS handshake), counting
    the attempts. ``stop()`` frees the port for the real hub."""

    def __init__(self, lab: Lab) -> None:
        self.attempts: list[float] = []
        self.proc = popen(
            lab.exec_argv([sys.executable, "-c", _REFUSER, str(HUB_PORT)]),
            stdout=PIPE,
            stderr=None,
            stdin=None,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if raw.startswith(b"refused"):
                self.attempts.append(time.time())

    def stop(self) -> None:
        stop(self.proc, 0, sig=signal.SIGKILL)


def run_hub_late(
    s: StandinSite,
    workdir: Path,
    *,
    outage: float = 60.0,
    timeout: float = 900,
    standin_gpu: bool = False,
) -> dict[str, Any]:
    """The hub is unreachable for ``outage`` seconds after the node's first attempt; the
    node must retry (backoff) and then enroll and join. ``standin_gpu``: the machine has
    the TEST-ONLY stand-in NVIDIA GPU with its driver loaded (kernel argument, see
    tests/support/guest/nodeforge_standin_gpu.sh), and the report is checked for it."""
    out: dict[str, Any] = {"problems": []}
    image = s.image()
    if standin_gpu:
        image = dataclasses.replace(image, append=f"{image.append} {STANDIN_GPU_ARG}=1")
    with Lab(workdir, s.ident) as lab:
        user_data = (s.tree / "cloud-init/user-data").read_bytes()
        name = f"{s.site}-late"
        ud = node_user_data(user_data, site=s.site, hostname=name, token=lab.token(s.site))
        node = make_node(name, image, workdir, ud, s.site)
        down = HubOutage(lab)
        errors: list[BaseException] = []

        def later() -> None:
            try:
                deadline = time.monotonic() + timeout
                while not down.attempts and time.monotonic() < deadline:
                    time.sleep(0.5)
                if not down.attempts:
                    return
                time.sleep(max(0.0, down.attempts[0] + outage - time.time()))
                down.stop()
                out["hub_started"] = time.time()
                lab.start_hub()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        starter = threading.Thread(target=later, daemon=True)
        starter.start()
        try:
            boot = boot_node(lab, node, image, console=(bootcheck.CONSOLE_MARKER,),
                             timeout=timeout)  # fmt: skip
        finally:
            down.stop()
        starter.join(timeout=30)
        if errors:
            raise errors[0]
        report = bootcheck.read_report(boot.console)
        out["report"] = report
        out["boot"] = boot.as_dict()
        out["refused_attempts"] = len(down.attempts)
        p = out["problems"]
        if not down.attempts:
            p.append("the node never tried the hub while it was down")
        else:
            out["outage_seconds"] = round(out.get("hub_started", 0) - down.attempts[0], 1)
            if out["outage_seconds"] < outage - 1:
                p.append(f"the outage lasted only {out['outage_seconds']} s")
        waits = [
            x for x in report.get("enroll_journal", []) if "step=enroll" in x and "waiting" in x
        ]
        out["retries_logged"] = len(waits)
        if not waits:
            p.append("the agent logged no retry while the hub was down")
        # and said so on the console (once an agent run), naming the lab's hub: a wait, not a
        # failure of the boot (boot_node fails at once only for another hub's URL)
        said = re.findall(rf"^{re.escape(agent.PREFIX)} {re.escape(agent.UNREACHABLE_SAY)} "
                          rf"{re.escape(HUB_URL)}: .*$",
                          Path(boot.console).read_text(errors="replace"), re.M)  # fmt: skip
        out["console_unreachable"] = said
        if not said:
            p.append("the node did not say on the console that it cannot reach the hub")
        if not boot.joined:
            p.append("the hub did not see the node joined")
        p += check_joined(report, s.expect, gpu_device=standin_gpu)
        p += check_hub(lab, [report], s.site)
        if p:
            out["hub_log_tail"] = lab.hub_log()
    return out


def run_expired_token(s: StandinSite, workdir: Path, *, timeout: float = 900) -> dict[str, Any]:
    """An expired one-time token: the node stops (exit 78) with a clear journal message and
    nothing half-configured (no wg0.conf, no tunnel, not joined); the hub records nothing."""
    out: dict[str, Any] = {"problems": []}
    image = s.image()
    with Lab(workdir, s.ident) as lab:
        lab.start_hub()
        token = lab.token(s.site, ttl="1s")
        time.sleep(2.5)  # let it expire
        user_data = (s.tree / "cloud-init/user-data").read_bytes()
        name = f"{s.site}-expired"
        ud = node_user_data(user_data, site=s.site, hostname=name, token=token)
        node = make_node(name, image, workdir, ud, s.site)
        boot = boot_node(lab, node, image, until_joined=False,
                         console=(bootcheck.CONSOLE_MARKER,), timeout=timeout)  # fmt: skip
        report = bootcheck.read_report(boot.console)
        out["report"] = report
        p = out["problems"]
        p += check_not_configured(report)
        journal = report.get("enroll_journal", [])
        stop = [x for x in journal if "permanent failure" in x]
        out["journal_message"] = stop[-1] if stop else None
        if not stop or not any("401" in x or "expired" in x for x in stop):
            p.append(f"no clear journal message about the refused token: {journal[-5:]}")
        if lab.nodes():
            p.append(f"the hub recorded nodes for an expired token: {lab.nodes()}")
    return out


# -- no seed at all: a machine powered on with nothing but the image -----------------------
# journald copies every journal line to the console (systemd-journald.service(8), kernel
# command line systemd.journald.forward_to_console=), as "<identifier>[<pid>]: <message>":
# what the journal holds shows on the serial console beside what the agent writes there
FORWARD_JOURNAL = "systemd.journald.forward_to_console=1"
JOURNAL_LINE = r"nodeforge-enroll\[\d+\]: nodeforge-enroll: "
# written by the agent itself to /dev/console (not through the journal: no "[pid]: " before)
CONSOLE_LINE = r"(?<!\]: )nodeforge-enroll: "


def _boot_or_reason(lab: Lab, node: Any, image: Any, **kw: Any) -> Any:
    try:
        return boot_node(lab, node, image, **kw)
    except BuilderError as exc:
        return exc.message


def run_site_token_no_seed(img: PackerImage, workdir: Path, *, nodes: int = 2,
                           timeout: float = 900) -> dict[str, Any]:  # fmt: skip
    """``nodes`` machines boot the same image with NO seed: only the site token baked into
    it. Each must join under a name of its own, derived from the machine (``<site>-`` +
    8 hex of its machine-id), never the image's fixed name; the site token is used once
    per machine."""
    out: dict[str, Any] = {"problems": [], "names": {}}
    p = out["problems"]
    image = img.image(FORWARD_JOURNAL)
    # the agent's line: PREFIX step=<step> <key=value ...> <message> (agent.log)
    done = JOURNAL_LINE + r"step=done (?:\S+=\S+ )*node enrolled and joined"
    named = re.compile(JOURNAL_LINE + r"step=identity hostname=(\S+) .*named after the "
                       r"machine-id")  # fmt: skip
    with img.lab as lab:
        lab.start_hub()
        vms = [make_node(f"{img.site}-bare{i + 1}", image, workdir, b"", img.site,
                         with_seed=False) for i in range(nodes)]  # fmt: skip
        with concurrent.futures.ThreadPoolExecutor(max_workers=nodes) as pool:
            futs = [pool.submit(_boot_or_reason, lab, n, image, until_joined=False,
                                console=(done,), timeout=timeout) for n in vms]  # fmt: skip
            outcomes = [f.result() for f in futs]
        for n, b in zip(vms, outcomes, strict=True):
            if isinstance(b, str):
                p.append(f"{n.name}: no 'joined' on its console: {b[-1500:]}")
                continue
            m = named.search(Path(b.console).read_text(errors="replace"))
            out["names"][n.name] = m.group(1) if m else None
        rows = lab.nodes()
        out["hub_nodes"] = [{k: r.get(k) for k in ("hostname", "state", "ip", "site")}
                            for r in rows]  # fmt: skip
        names = [r.get("hostname") for r in rows]
        if len(rows) != nodes:
            p.append(f"hub has {len(rows)} nodes, want {nodes}: {names}")
        if len(set(names)) != len(names):
            p.append(f"two machines enrolled under one name: {names}")
        pat = re.compile(rf"{re.escape(img.site)}-[0-9a-f]{{8}}")
        for r in rows:
            if not pat.fullmatch(str(r.get("hostname"))):
                p.append(f"hub: node named {r.get('hostname')!r}, not <site>-<machine-id>")
            if r.get("state") != "joined" or r.get("site") != img.site:
                p.append(f"hub: {r.get('hostname')} is {r.get('state')} for {r.get('site')}")
        said = sorted(v for v in out["names"].values() if v)
        if said != sorted(str(n) for n in names):
            p.append(f"the nodes named themselves {said}, the hub has {names}")
        hs = lab.handshakes()
        if not all(hs.get(str(r.get("pubkey")), 0) > 0 for r in rows):
            p.append("the hub has no WireGuard handshake with every node")
        used = {t["id"]: t.get("used") for t in lab.tokens()}
        out["site_token_used"] = used.get(img.site_token_id)
        if used.get(img.site_token_id) != nodes:
            p.append(f"site token used {used.get(img.site_token_id)} times, want {nodes}")
        if p:
            out["hub_log_tail"] = lab.hub_log()
    return out


def run_no_seed_no_token(s: StandinSite, workdir: Path, *, timeout: float = 900) -> dict[str, Any]:
    """No seed and no site token: the agent must say so at once, on the console and in the
    journal (what to attach), not wait 300 s in silence; the hub records nothing."""
    out: dict[str, Any] = {"problems": []}
    img = s.image()
    image = dataclasses.replace(img, append=f"{img.append} {FORWARD_JOURNAL}")
    hint = r"no enrollment token in /etc/nodeforge/enroll-token: .*`builder seed`"
    said = (CONSOLE_LINE + hint, JOURNAL_LINE + r"step=token " + hint)
    with Lab(workdir, s.ident) as lab:
        lab.start_hub()
        node = make_node(f"{s.site}-notoken", image, workdir, b"", s.site, with_seed=False)
        b = _boot_or_reason(lab, node, image, until_joined=False, console=said,
                            timeout=timeout)  # fmt: skip
        if isinstance(b, str):
            out["problems"].append(f"no clear message on the console and in the journal: "
                                   f"{b[-2000:]}")  # fmt: skip
        else:
            out["boot"] = b.as_dict()
            text = Path(b.console).read_text(errors="replace")
            out["console_lines"] = [m.group(0) for m in re.finditer(r".*no enrollment token in.*",
                                                                    text)]  # fmt: skip
        if lab.nodes():
            out["problems"].append(f"the hub recorded nodes without a token: {lab.nodes()}")
    return out
