"""STAND-IN installer step of the ISO path (host side): what subiquity + curtin do to /target.

The steps themselves are in standin_installer.py, which the stand-in live ISO also runs
inside the guest (ubuntu_like_iso.py), so both paths install the same way.

No Ubuntu live-server ISO can be fetched here, so the boot tests of the ISO target install
the stand-in node root (a Debian root, tests/support/rootfs.py) the way subiquity 24.04 and
curtin install Ubuntu, as recorded in /work/research/subiquity-cloud.md (upstream sources:
canonical/subiquity ``ubuntu/noble`` 7639acf9, ``subiquity/models/subiquity.py``
``_cloud_init_files``/``_cloud_init_config``, ``subiquity/models/network.py``,
``subiquity/server/controllers/install.py``; canonical/curtin 737e305d
``curtin/commands/in_target.py``; checked 2026-11-30):

1. the installed root (here: the extracted stand-in root with the stand-in package
   repository, so provisioning runs offline);
2. the files subiquity writes for cloud-init (``subiquity_files``): ``99-installer.cfg``
   (``datasource_list: [None]`` with the autoinstall ``user-data`` merged into its embedded
   user-data, which also disables cloud-init after the first boot), ``ds-identify.cfg``
   (``policy: enabled``), ``20-disable-cc-dpkg-grub.cfg``, the installer's network as
   ``90-installer-network.cfg`` (the 24.04 branch: cloud-init's
   ``NETPLAN_CONFIG_ROOT_READ_ONLY`` is true) and the ``clean.d/99-installer`` hook that
   removes them all; ``/etc/hostname`` and ``/etc/hosts`` from ``identity.hostname``;
3. the autoinstall ``late-commands``, in order, each through ``sh -c`` (strings) and
   stopping the install on the first failure, in an "installer environment" (a private
   mount namespace whose root holds the target at ``/target`` and the ISO's files at
   ``/cdrom``, with ``TARGET_MOUNT_POINT=/target``) where ``curtin in-target`` chroots into
   the target with ``/dev``, ``/proc``, ``/sys``, ``/run`` bound and daemons kept from
   starting (``policy-rc.d`` exit 101), as curtin does.

Not reproduced: partitioning (the stand-in disk is one ext4 file system, see nodedisk.py),
the kernel and boot loader install (the disk boots by direct kernel boot), packages
(``packages:`` are in the stand-in root already), the installer's own cloud-init run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from builder.errors import BuilderError
from builder.run import run
from tests.support import rootfs
from tests.support.standin_installer import (  # noqa: F401 - the stand-in's API, re-exported
    CURTIN,
    cloud_init_config,
    late_commands_script,
    subiquity_files,
    write_subiquity_files,
)


def install(target: Path, tree: Path, workdir: Path, env_tarball: Path) -> None:
    """Install into ``target`` (a prepared root) what the site's ISO would: subiquity's
    files, then the late-commands (which run our provisioning) in an installer environment
    (``env_tarball`` extracted) holding ``target`` at /target and the ISO's additions
    (``tree/iso``) at /cdrom."""
    auto = yaml.safe_load((tree / "cloud-init/autoinstall.yaml").read_text())
    write_subiquity_files(auto, target)
    env_root = workdir / "installer-env"
    if env_root.exists():
        shutil.rmtree(env_root)
    rootfs.extract_rootfs(env_tarball, env_root, rootfs.CHROOT_EXCLUDES)
    for d in ("target", "cdrom"):
        (env_root / d).mkdir(exist_ok=True)
    curtin = env_root / "usr/local/bin/curtin"
    curtin.write_text(CURTIN)
    curtin.chmod(0o755)
    (env_root / "late-commands.sh").write_text(late_commands_script(auto))
    script = (
        'set -e; e="$1"; t="$2"; c="$3"; '
        'mount --bind "$t" "$e/target"; mount --bind "$c" "$e/cdrom"; '
        'mount -o remount,bind,ro "$e/cdrom"; '
        'for d in dev proc sys; do mount --bind "/$d" "$e/$d"; done; '
        'exec chroot "$e" /usr/bin/env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin '
        "HOME=/root LANG=C.UTF-8 sh /late-commands.sh"
    )
    try:
        run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             env_root, target, tree / "iso"], timeout=1200)  # fmt: skip
    except BuilderError as exc:
        raise BuilderError(
            f"the stand-in installer's late-commands failed: {exc.message}",
            hint="they are the rendered autoinstall late-commands (cloud-init/autoinstall.yaml)",
        ) from exc
    finally:
        shutil.rmtree(env_root, ignore_errors=True)
