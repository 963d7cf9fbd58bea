#!/usr/bin/env bash
# CRI-O from the profile's repository (pkgs.k8s.io / openSUSE / an offline mirror), pinned to
# the Kubernetes minor, held, configured from the profile and enabled. Idempotent.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

need_var NF_CRIO_VERSION NF_CRIO_APT_URL NF_CRIO_APT_KEY_URL

glob="$(version_glob "$NF_CRIO_VERSION")"
apt_repo crio "$NF_CRIO_APT_URL" "$NF_CRIO_APT_KEY_URL"
apt_pin crio "$glob" cri-o
apt_install_held cri-o
check_version cri-o "$glob"

# profile settings as a drop-in (never edit the packaged crio.conf)
toml_list() {
    local out="" item
    for item in "$@"; do out="$out${out:+, }\"$item\""; done
    printf '[%s]' "$out"
}
# shellcheck disable=SC2086  # word splitting of the space-separated lists is intended
{
    echo "# written by $NF_TOOL provisioning (profile: crio.*)"
    echo "[crio.runtime]"
    echo "cgroup_manager = \"${NF_CRIO_CGROUP_MANAGER:-systemd}\""
    if [ "${NF_CRIO_CGROUP_MANAGER:-systemd}" = systemd ]; then
        echo 'conmon_cgroup = "pod"'
    fi
    echo
    echo "[crio.image]"
    if [ -n "${NF_CRIO_PAUSE_IMAGE:-}" ]; then
        echo "pause_image = \"$NF_CRIO_PAUSE_IMAGE\""
    fi
    echo "insecure_registries = $(toml_list ${NF_CRIO_INSECURE_REGISTRIES:-})"
} | write_file "/etc/crio/crio.conf.d/10-$NF_TOOL.conf"

# registry mirrors: "registry=mirror[,mirror…]" entries, space separated; an entry without
# "registry=" mirrors docker.io
conf="/etc/containers/registries.conf.d/90-$NF_TOOL.conf"
if [ -n "${NF_CRIO_REGISTRY_MIRRORS:-}" ]; then
    {
        echo "# written by $NF_TOOL provisioning (profile: crio.registry_mirrors)"
        for entry in $NF_CRIO_REGISTRY_MIRRORS; do
            case "$entry" in *=*) ;; *) entry="docker.io=$entry" ;; esac
            echo
            echo "[[registry]]"
            echo "prefix = \"${entry%%=*}\""
            echo "location = \"${entry%%=*}\""
            IFS=, read -r -a mirrors <<<"${entry#*=}"
            for m in "${mirrors[@]}"; do
                echo
                echo "[[registry.mirror]]"
                echo "location = \"$m\""
            done
        done
    } | write_file "$conf"
else
    rm -f "$conf"
fi

daemon_reload
enable_unit crio.service
if systemd_running; then systemctl restart crio.service || log "warning: crio did not start"; fi
log "cri-o ready"
