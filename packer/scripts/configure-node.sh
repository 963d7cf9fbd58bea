#!/usr/bin/env bash
# Node basics: the files/ overlay (every profile-derived node file), swap off, time sync,
# and the first-boot enrollment unit. Idempotent; reads the NF_* variables (INTERFACES.md).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

# --- the rendered root-fs overlay: every node file that comes from the profile ---------------
# (modules, sysctls, CRI-O and registries drop-ins, time sources, kubelet drop-in and
# defaults, agent, unit, config, hub CA). Rendered once by the builder; nothing below
# writes those files again, so the ISO and Packer paths put the same bytes on the node.
[ -d "$NF_FILES_DIR" ] || die "no overlay at $NF_FILES_DIR (the rendered files/ beside scripts/)"
# files and symlinks only, owned by root, each with its rendered mode (the token is 0600);
# directories are created with umask 022 and existing ones are left alone (copying
# directories would carry the build host's modes onto /etc, /usr, …)
count=0
while IFS= read -r -d '' rel; do
    rel="${rel#./}"
    src="$NF_FILES_DIR/$rel"
    mkdir -p "$(dirname "/$rel")"
    if [ -L "$src" ]; then
        ln -sfn "$(readlink "$src")" "/$rel"
    else
        install -o root -g root -m "$(stat -c %a "$src")" "$src" "/$rel"
    fi
    count=$((count + 1))
done < <(cd "$NF_FILES_DIR" && find . \( -type f -o -type l \) -print0 | sort -z)
log "overlay: $count files copied from $NF_FILES_DIR"

# --- kernel modules and sysctls: the overlay's files act on every boot; apply them now too -----
if in_chroot; then
    log "chroot: modules and sysctls take effect on boot (systemd-modules-load, systemd-sysctl)"
else
    if systemd_running; then systemctl restart systemd-modules-load.service || log "warning: modules load on next boot"; fi
    sysctl --system >/dev/null || log "warning: sysctl --system reported errors"
fi

# --- swap -------------------------------------------------------------------------------------
if [ "${NF_SWAP:-off}" = off ]; then
    if [ -f /etc/fstab ]; then
        # comment out active swap entries (kubelet refuses to run with swap by default)
        sed -i -E "s|^([^#[:space:]][^[:space:]]*[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]].*)$|# $NF_TOOL: swap off: \\1|" /etc/fstab
    fi
    systemctl mask swap.target >/dev/null 2>&1 || ln -sfn /dev/null /etc/systemd/system/swap.target
    if ! in_chroot; then swapoff -a || true; fi
    log "swap off"
else
    systemctl unmask swap.target >/dev/null 2>&1 || rm -f /etc/systemd/system/swap.target
fi

# --- time: the overlay carries the sources for chrony and timesyncd; enable the one present ---
if [ -n "${NF_TIMEZONE:-}" ]; then
    [ -e "/usr/share/zoneinfo/$NF_TIMEZONE" ] || die "NF_TIMEZONE: unknown zone $NF_TIMEZONE"
    ln -sfn "/usr/share/zoneinfo/$NF_TIMEZONE" /etc/localtime
    echo "$NF_TIMEZONE" | write_file /etc/timezone
fi
if [ -n "${NF_NTP_SERVERS:-}" ]; then
    if [ -e /lib/systemd/system/chrony.service ] || [ -e /usr/lib/systemd/system/chrony.service ]; then
        enable_unit chrony.service
    elif [ -e /lib/systemd/system/systemd-timesyncd.service ] \
        || [ -e /usr/lib/systemd/system/systemd-timesyncd.service ]; then
        enable_unit systemd-timesyncd.service
    else
        log "warning: neither chrony nor systemd-timesyncd installed; time sync not enabled"
    fi
fi

# --- first-boot enrollment ----------------------------------------------------------------------
install -d -m 0700 "/var/lib/$NF_TOOL"
daemon_reload
if [ -f "/etc/systemd/system/$NF_TOOL-enroll.service" ]; then
    enable_unit "$NF_TOOL-enroll.service"
    log "$NF_TOOL-enroll.service enabled"
else
    log "warning: $NF_TOOL-enroll.service not in the overlay; enrollment not enabled"
fi
# hub failover: runs only once the node has joined (ConditionPathExists in the unit)
if [ -f "/etc/systemd/system/$NF_TOOL-failover.service" ]; then
    enable_unit "$NF_TOOL-failover.service"
    log "$NF_TOOL-failover.service enabled"
fi
