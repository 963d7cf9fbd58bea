#!/usr/bin/env bash
# Node basics: the files/ overlay, kernel modules, sysctls, swap off, time sync, and the
# first-boot enrollment unit. Idempotent; reads the NF_* variables (builder/INTERFACES.md).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

need_var NF_MODULES

# --- the rendered root-fs overlay (agent, unit, config, hub CA) ------------------------------
if [ -d "$NF_FILES_DIR" ]; then
    # files and symlinks only, owned by root, each with its rendered mode (the token is
    # 0600); directories are created with umask 022 and existing ones are left alone
    # (copying directories would carry the build host's modes onto /etc, /usr, …)
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
else
    log "no overlay at $NF_FILES_DIR (nothing copied)"
fi
if [ -e "/usr/lib/$NF_TOOL/$NF_TOOL-enroll" ]; then
    chmod 0755 "/usr/lib/$NF_TOOL/$NF_TOOL-enroll"
fi

# --- kernel modules and sysctls: files for every boot, applied now when we can ---------------
{
    echo "# written by $NF_TOOL provisioning (profile: kernel.modules)"
    for m in $NF_MODULES; do echo "$m"; done
} | write_file "/etc/modules-load.d/90-$NF_TOOL.conf"

{
    echo "# written by $NF_TOOL provisioning (profile: kernel.sysctls)"
    for kv in ${NF_SYSCTLS:-}; do
        case "$kv" in
            *=*) echo "${kv%%=*} = ${kv#*=}" ;;
            *) die "NF_SYSCTLS: '$kv' is not key=value" ;;
        esac
    done
} | write_file "/etc/sysctl.d/90-$NF_TOOL.conf"

if in_chroot; then
    log "chroot: modules and sysctls take effect on boot (systemd-modules-load, systemd-sysctl)"
else
    for m in $NF_MODULES; do
        modprobe "$m" || log "warning: modprobe $m failed (loaded on next boot)"
    done
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

# --- time ------------------------------------------------------------------------------------
if [ -n "${NF_TIMEZONE:-}" ]; then
    [ -e "/usr/share/zoneinfo/$NF_TIMEZONE" ] || die "NF_TIMEZONE: unknown zone $NF_TIMEZONE"
    ln -sfn "/usr/share/zoneinfo/$NF_TIMEZONE" /etc/localtime
    echo "$NF_TIMEZONE" | write_file /etc/timezone
fi
if [ -n "${NF_NTP_SERVERS:-}" ]; then
    if [ -d /etc/chrony ]; then
        {
            echo "# written by $NF_TOOL provisioning (profile: time_sync.servers)"
            for s in $NF_NTP_SERVERS; do echo "server $s iburst"; done
        } | write_file "/etc/chrony/sources.d/$NF_TOOL.sources"
        enable_unit chrony.service
    else
        {
            echo "# written by $NF_TOOL provisioning (profile: time_sync.servers)"
            echo "[Time]"
            echo "NTP=$NF_NTP_SERVERS"
        } | write_file "/etc/systemd/timesyncd.conf.d/10-$NF_TOOL.conf"
        if [ -e /lib/systemd/system/systemd-timesyncd.service ] \
            || [ -e /usr/lib/systemd/system/systemd-timesyncd.service ]; then
            enable_unit systemd-timesyncd.service
        else
            log "warning: neither chrony nor systemd-timesyncd installed; time sync not enabled"
        fi
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
