# shellcheck shell=bash
# Shared helpers for the nodeforge provisioning scripts. Sourced, never executed.
#
# The same scripts run over SSH from Packer (AMI, qcow2), from autoinstall late-commands via
# `curtin in-target` (ISO) and in a chroot (tests), so everything here is idempotent and
# copes with a system whose init is not running.

NF_TOOL="${NF_TOOL:-nodeforge}"
NF_FILES_DIR="${NF_FILES_DIR:-/tmp/nodeforge/files}"
export DEBIAN_FRONTEND=noninteractive
umask 022
# wait for another apt/dpkg (unattended-upgrades on a fresh cloud image) instead of failing
APT_LOCK_WAIT=(-o DPkg::Lock::Timeout=600)
APT_KEYRINGS=/etc/apt/keyrings

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# True when running in a chroot (or a container build) where the kernel and PID 1 are not
# ours: there, nothing is applied to the running kernel and no service is started.
in_chroot() {
    if [ "${NF_CHROOT:-}" = 1 ]; then return 0; fi
    if [ "${NF_CHROOT:-}" = 0 ]; then return 1; fi
    if command -v systemd-detect-virt >/dev/null 2>&1; then
        systemd-detect-virt --quiet --chroot 2>/dev/null && return 0
    fi
    # no PID 1 we can see, or its root differs from ours
    [ -d /proc/1 ] || return 0
    [ "$(stat -Lc '%d:%i' / 2>/dev/null)" != "$(stat -Lc '%d:%i' /proc/1/root/. 2>/dev/null)" ]
}

systemd_running() { [ -d /run/systemd/system ] && ! in_chroot; }

# write_file PATH MODE: stdin -> PATH, atomically (temp file + rename)
write_file() {
    local path="$1" mode="${2:-0644}" tmp
    mkdir -p "$(dirname "$path")"
    tmp="$(mktemp "${path}.XXXXXX")"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
}

need_var() {
    local name
    for name in "$@"; do
        [ -n "${!name:-}" ] || die "$name is not set (see provision.env)"
    done
}

# fetch URL DEST: http(s):// or file:// (offline mirrors) or a plain path
fetch() {
    local url="$1" dest="$2"
    case "$url" in
        /*) cp "$url" "$dest" ;;
        *) curl -fsSL --retry 3 --connect-timeout 20 -o "$dest" "$url" \
            || die "cannot download $url" ;;
    esac
}

# apt_repo NAME URL KEY_URL: flat repository `deb [signed-by=…] URL /` with its keyring
apt_repo() {
    local name="$1" url="$2" key_url="$3" keyring list tmp other
    keyring="$APT_KEYRINGS/$NF_TOOL-$name.gpg"
    list="/etc/apt/sources.list.d/$NF_TOOL-$name.list"
    case "$url" in */) ;; *) url="$url/" ;; esac
    # One offline mirror may serve several of our repositories from one URL: apt refuses the
    # same URL with two signed-by keyrings, so the first list for a URL serves them all.
    for other in /etc/apt/sources.list.d/"$NF_TOOL"-*.list; do
        if [ ! -e "$other" ] || [ "$other" = "$list" ]; then continue; fi
        if grep -qF " $url /" "$other"; then
            log "$url is already configured in $other (shared mirror)"
            rm -f "$list" "$keyring"
            apt_update_list "$other"
            return 0
        fi
    done
    install -d -m 0755 "$APT_KEYRINGS"
    tmp="$(mktemp)"
    fetch "$key_url" "$tmp"
    if grep -q -- '-----BEGIN PGP PUBLIC KEY BLOCK-----' "$tmp"; then
        gpg --batch --yes --dearmor -o "$tmp.gpg" "$tmp" || die "bad key at $key_url"
        mv -f "$tmp.gpg" "$tmp"
    fi
    chmod 0644 "$tmp"
    mv -f "$tmp" "$keyring"
    printf 'deb [signed-by=%s] %s /\n' "$keyring" "$url" | write_file "$list"
    apt_update_list "$list"
}

# apt_update_list LIST: refresh only this source (fast; works without the main archive)
apt_update_list() {
    apt-get update -qq "${APT_LOCK_WAIT[@]}" \
        -o Dir::Etc::sourcelist="$1" \
        -o Dir::Etc::sourceparts=- \
        -o APT::Get::List-Cleanup=0 \
        || die "apt-get update failed for $1"
}

# apt_pin NAME VERSION_GLOB PACKAGE...: prefer exactly this version (even over newer ones)
apt_pin() {
    local name="$1" version="$2"
    shift 2
    write_file "/etc/apt/preferences.d/$NF_TOOL-$name" <<PIN
# written by $NF_TOOL provisioning: keep these packages at the profile's version
Package: $*
Pin: version $version
Pin-Priority: 1001
PIN
}

# version_glob VERSION: "1.35.0" -> "1.35.0-*" (exact patch), "1.35" -> "1.35.*" (minor)
version_glob() {
    local v="$1"
    case "$v" in
        *-*) printf '%s' "$v" ;;
        *.*.*) printf '%s-*' "$v" ;;
        *) printf '%s.*' "$v" ;;
    esac
}

# apt_install_held PACKAGE...: install (pins decide the version), then hold
apt_install_held() {
    apt-get install -y -qq --no-install-recommends "${APT_LOCK_WAIT[@]}" \
        --allow-change-held-packages \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "$@" || die "apt-get install $* failed"
    apt-mark hold "$@" >/dev/null
}

# installed_version PACKAGE: the dpkg version, or empty
installed_version() {
    dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null \
        | awk 'substr($1, 2, 1) == "i" {print $2}'  # ii, or hi when held
}

# check_version PACKAGE GLOB: fail unless the installed version matches the pin
check_version() {
    local pkg="$1" glob="$2" have
    have="$(installed_version "$pkg")"
    # shellcheck disable=SC2053  # glob match is intended
    [[ "$have" == $glob ]] || die "$pkg: installed '${have:-none}', profile wants $glob"
    log "$pkg $have (held)"
}

# enable_unit UNIT...: enable (works offline in a chroot), start only on a live system
enable_unit() {
    systemctl enable "$@" >/dev/null 2>&1 || systemctl --root=/ enable "$@" \
        || die "systemctl enable $* failed"
}

daemon_reload() {
    if systemd_running; then systemctl daemon-reload; fi
}
