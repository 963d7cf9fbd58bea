#!/usr/bin/env bash
# Last step before an image is captured: no caches, no identity shared between clones
# (machine-id, ssh host keys, cloud-init state), no history; writes /etc/<tool>-release.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

# --- release file: which profile, which builder, which versions, when ---------------------------
ver() { installed_version "$1"; }
build_time="${NF_BUILD_TIME:-$(date +%s)}"
write_file "/etc/$NF_TOOL-release" <<REL
NAME="$NF_TOOL"
SITE="${NF_SITE:-}"
PROFILE_HASH="${NF_PROFILE_HASH:-}"
BUILDER_VERSION="${NF_BUILDER_VERSION:-}"
BUILDER_COMMIT="${NF_BUILDER_COMMIT:-}"
BUILD_TIME="$build_time"
BUILD_DATE="$(date -u -d "@$build_time" +%Y-%m-%dT%H:%M:%SZ)"
KUBERNETES_VERSION="$(ver kubeadm)"
KUBELET_VERSION="$(ver kubelet)"
CRIO_VERSION="$(ver cri-o)"
NVIDIA_DRIVER_PACKAGE="$( [ "${NF_GPU:-0}" = 1 ] && echo "${NF_NVIDIA_DRIVER_PACKAGE:-}")"
NVIDIA_DRIVER_VERSION="$( [ "${NF_GPU:-0}" = 1 ] && [ -n "${NF_NVIDIA_DRIVER_PACKAGE:-}" ] && ver "$NF_NVIDIA_DRIVER_PACKAGE")"
NVIDIA_CONTAINER_TOOLKIT_VERSION="$(ver nvidia-container-toolkit)"
REL
log "/etc/$NF_TOOL-release written"

# --- apt -------------------------------------------------------------------------------------
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# --- cloud-init: the next boot is a first boot ----------------------------------------------
# Not on a system subiquity just installed (ISO late-commands): it never booted, and
# `cloud-init clean` would run subiquity's /etc/cloud/clean.d/99-installer hook, deleting the
# installer's first-boot config (users, ssh keys, network) written before late-commands
# (UPSTREAM.md, subiquity first boot).
if [ -e /etc/cloud/clean.d/99-installer ]; then
    log "installed by subiquity: its first-boot cloud-init config is kept"
elif command -v cloud-init >/dev/null 2>&1; then
    cloud-init clean --logs --seed || log "warning: cloud-init clean failed"
fi

# --- identity --------------------------------------------------------------------------------
# empty (not missing, not "uninitialized") machine-id: systemd generates a new id at boot and
# commits it, without treating the boot as a first boot (no ConditionFirstBoot units, no
# preset of the units we enabled): machine-id(5), UPSTREAM.md
: >/etc/machine-id
chmod 0444 /etc/machine-id
if [ -d /var/lib/dbus ]; then ln -sfn /etc/machine-id /var/lib/dbus/machine-id; fi
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
# no host name of the build machine: the placeholder the enrollment agent replaces with
# <site>-<machine-id> when no seed names the node (node.json hostname_default)
if [ -n "${NF_HOSTNAME_DEFAULT:-}" ]; then
    printf '%s\n' "$NF_HOSTNAME_DEFAULT" >/etc/hostname
    chmod 0644 /etc/hostname
fi
rm -f "/var/lib/$NF_TOOL/joined" "/var/lib/$NF_TOOL/wg.key" "/var/lib/$NF_TOOL/node_id"
rm -f /var/lib/systemd/random-seed /var/lib/systemd/credential.secret

# --- history and logs ------------------------------------------------------------------------
rm -f /root/.bash_history /home/*/.bash_history /root/.lesshst /root/.viminfo
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete 2>/dev/null || true
find /var/log -type f -name '*.log' -exec truncate -s 0 {} + 2>/dev/null || true
rm -rf /var/log/journal/* /tmp/* /var/tmp/* 2>/dev/null || true
log "clean"
