#!/usr/bin/env bash
# CRI-O from the profile's repository (CRI-O's openSUSE build service project, or an offline
# mirror), pinned to the Kubernetes minor, held and enabled. Idempotent. Its settings come
# from the overlay (crio.conf.d/20-nodeforge.conf, registries.conf.d/90-nodeforge.conf,
# installed by configure-node.sh): the package's own 10-crio.conf keeps crun as the default
# runtime with its /usr/libexec/crio paths (UPSTREAM.md, CRI-O).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

need_var NF_CRIO_VERSION NF_CRIO_APT_URL NF_CRIO_APT_KEY_URL

glob="$(version_glob "$NF_CRIO_VERSION")"
apt_repo crio "$NF_CRIO_APT_URL" "$NF_CRIO_APT_KEY_URL"
apt_pin crio "$glob" cri-o
apt_install_held cri-o
check_version cri-o "$glob"

daemon_reload
enable_unit crio.service
if systemd_running; then systemctl restart crio.service || log "warning: crio did not start"; fi
log "cri-o ready"
