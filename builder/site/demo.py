"""The demo hub credentials the example profiles ship with, and how to tell a profile uses them.

``profiles/base.yaml`` points every example site at a demo hub: the CA certificate
``profiles/demo-hub-ca.pem`` (pinned by ``enrollment.ca_pin``) and a demo WireGuard hub key
(``wireguard.hub_public_key``). They let ``render``/``validate`` work out of the box, but an
image that carries them trusts a hub that is not yours. The reference values are read from
the shipped example profiles (``builder.paths.PROFILES_DIR``), so they follow those files.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging

import yaml

from builder.paths import PROFILES_DIR

from .checks import pem_to_der

log = logging.getLogger("builder.demo")

DEMO_CA_FILE = PROFILES_DIR / "demo-hub-ca.pem"
HINT = (
    "run `builder hub init DIR` for your own hub and set enrollment.ca_cert, enrollment.ca_pin "
    "and wireguard.hub_public_key from what it prints"
)


@functools.cache
def demo_values() -> tuple[str | None, str | None]:
    """(the demo CA's pin ``sha256:<hex>``, the demo hub WireGuard public key)."""
    pin = key = None
    with contextlib.suppress(OSError, ValueError):
        pin = "sha256:" + hashlib.sha256(pem_to_der(DEMO_CA_FILE.read_text())).hexdigest()
    try:
        fast = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the same data, faster
        base = yaml.load((PROFILES_DIR / "base.yaml").read_text(), Loader=fast) or {}
        key = (base.get("wireguard") or {}).get("hub_public_key")
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    return pin, key if isinstance(key, str) else None


def demo_credentials(ca_pin: str | None, hub_public_key: str | None) -> list[str]:
    """Which demo credentials a profile still carries: ``enrollment.ca_pin`` (the demo CA),
    ``wireguard.hub_public_key`` (the demo hub key)."""
    pin, key = demo_values()
    found = []
    if pin and ca_pin and ca_pin.lower() == pin:
        found.append("enrollment.ca_pin (the demo hub CA, profiles/demo-hub-ca.pem)")
    if key and hub_public_key == key:
        found.append("wireguard.hub_public_key (the demo hub key)")
    return found


def warn(site: str, found: list[str]) -> None:
    """The loud warning: every line starts with WARNING so it stands out in a build log."""
    if not found:
        return
    log.warning("WARNING: %s uses the DEMO hub credentials of the example profiles:", site)
    for item in found:
        log.warning("WARNING:   - %s", item)
    log.warning("WARNING: nodes built from it trust a hub that is not yours; %s", HINT)
