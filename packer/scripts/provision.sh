#!/usr/bin/env bash
# Run every provisioning step in order. Reads provision.env beside this script (or
# $NF_PROVISION_ENV) when present; variables already in the environment are overridden by it.
#   Packer:     file provisioner uploads scripts/ and files/, then `sudo bash provision.sh`
#   autoinstall: curtin in-target -- bash /nodeforge/scripts/provision.sh
#   tests:      chroot ROOT bash /nodeforge/scripts/provision.sh
set -euo pipefail
here="$(dirname "$(readlink -f "$0")")"
env_file="${NF_PROVISION_ENV:-$here/provision.env}"
if [ -f "$env_file" ]; then
    set -a
    # shellcheck disable=SC1090  # rendered per site
    . "$env_file"
    set +a
fi
# the overlay sits beside scripts/ in every layout we ship (build tree, ISO, Packer upload)
if [ -z "${NF_FILES_DIR:-}" ] && [ -d "$here/../files" ]; then
    NF_FILES_DIR="$(readlink -f "$here/../files")"
fi
export NF_FILES_DIR="${NF_FILES_DIR:-/tmp/nodeforge/files}"

# shellcheck source=SCRIPTDIR/common.sh
. "$here/common.sh"
[ "$(id -u)" = 0 ] || die "must run as root"

log "site ${NF_SITE:-?}, profile ${NF_PROFILE_HASH:-?}"
# a freshly booted cloud image may still be running cloud-init (and apt) when we get in
if ! in_chroot && command -v cloud-init >/dev/null 2>&1; then
    cloud-init status --wait >/dev/null 2>&1 || log "warning: cloud-init finished with errors"
fi
# what the scripts and the enrollment agent (wg, wg-quick) need, on every target: whether the
# Ubuntu cloud image/AMI carries them is not confirmed (UPSTREAM.md), and installing is a no-op
# where they are
base_packages=(wireguard-tools curl gnupg ca-certificates)
# NF_STEPS picks the steps (in this order; empty = all). The qcow2 layer cache
# (builder/targets/layers.py) runs the package steps once per package set into a cached
# layer, and the site steps on top of it for every build.
all_steps=(base-packages configure-node install-crio install-kubernetes install-nvidia cleanup)
read -r -a steps <<<"${NF_STEPS:-${all_steps[*]}}"
for step in "${steps[@]}"; do
    case " ${all_steps[*]} " in *" $step "*) ;; *) die "NF_STEPS: unknown step $step" ;; esac
done
for step in "${steps[@]}"; do
    log "--- $step"
    if [ "$step" = base-packages ]; then
        # a fresh cloud image has no package lists; a mirror-only site may have no main archive
        if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
            apt-get update -qq -o DPkg::Lock::Timeout=600 || die "apt-get update failed (no network? set the profile's mirrors)"
        fi
        apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${base_packages[@]}" \
            || die "apt-get install ${base_packages[*]} failed"
    else
        bash "$here/$step.sh"
    fi
done
log "done"
