#!/usr/bin/env bash
# GPU profiles only: the NVIDIA driver branch (server/open variants), the NVIDIA container
# toolkit, CRI-O runtime wiring, and a boot-time check that labels the node only when an
# NVIDIA GPU is really present. Skips cleanly when NF_GPU=0. Idempotent.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

if [ "${NF_GPU:-0}" != 1 ]; then
    log "NF_GPU=${NF_GPU:-0}: not a GPU profile, nothing to do"
    exit 0
fi
need_var NF_NVIDIA_DRIVER_BRANCH NF_NVIDIA_APT_URL NF_NVIDIA_APT_KEY_URL

case "${NF_NVIDIA_VARIANT:-server}" in
    server) default_pkg="nvidia-driver-$NF_NVIDIA_DRIVER_BRANCH-server" ;;
    open) default_pkg="nvidia-driver-$NF_NVIDIA_DRIVER_BRANCH-open" ;;
    server-open) default_pkg="nvidia-driver-$NF_NVIDIA_DRIVER_BRANCH-server-open" ;;
    *) die "NF_NVIDIA_VARIANT: '$NF_NVIDIA_VARIANT' is not server, open or server-open" ;;
esac
driver_pkg="${NF_NVIDIA_DRIVER_PACKAGE:-$default_pkg}"

# the toolkit repository (the driver comes from the distribution archive, or from this
# repository on an offline mirror)
apt_repo nvidia "$NF_NVIDIA_APT_URL" "$NF_NVIDIA_APT_KEY_URL"
toolkit_pkgs=(nvidia-container-toolkit)
if [ -n "${NF_NVIDIA_TOOLKIT_VERSION:-}" ]; then
    glob="$(version_glob "$NF_NVIDIA_TOOLKIT_VERSION")"
    apt_pin nvidia "$glob" nvidia-container-toolkit
else
    rm -f "/etc/apt/preferences.d/$NF_TOOL-nvidia"
fi
apt_install_held "$driver_pkg" "${toolkit_pkgs[@]}"
[ -n "$(installed_version "$driver_pkg")" ] || die "$driver_pkg not installed"
if [ -n "${NF_NVIDIA_TOOLKIT_VERSION:-}" ]; then
    check_version nvidia-container-toolkit "$(version_glob "$NF_NVIDIA_TOOLKIT_VERSION")"
fi
log "$driver_pkg $(installed_version "$driver_pkg") (held)"

# CRI-O: the "nvidia" runtime as a drop-in — what `nvidia-ctk runtime configure
# --runtime=crio` sets up, written here so the result is deterministic and reviewable.
# nvidia-container-runtime hands containers without NVIDIA_VISIBLE_DEVICES to runc.
write_file "/etc/crio/crio.conf.d/99-$NF_TOOL-nvidia.conf" <<'TOML'
# written by nodeforge provisioning (profile: gpu.nvidia)
[crio.runtime]
default_runtime = "nvidia"

[crio.runtime.runtimes.nvidia]
runtime_path = "/usr/bin/nvidia-container-runtime"
runtime_type = "oci"
monitor_path = "/usr/libexec/crio/conmon"
TOML

# Boot-time check: label the node only when an NVIDIA GPU is on the PCI bus and the driver
# answers; otherwise make sure no GPU label is set (an image may boot on a CPU-only host).
write_file "/usr/lib/$NF_TOOL/gpu-check" 0755 <<'SH'
#!/bin/sh
# written by nodeforge provisioning: label the node as a GPU node only when one is present.
# Adds/removes one --node-labels flag in KUBELET_EXTRA_ARGS (/etc/default/kubelet, read by
# kubeadm's kubelet drop-in); everything else in that file is kept.
set -u
file=/etc/default/kubelet
label=--node-labels=nvidia.com/gpu.present=true
gpu=0
for dev in /sys/bus/pci/devices/*; do
    [ -r "$dev/vendor" ] || continue
    if [ "$(cat "$dev/vendor")" = 0x10de ]; then
        case "$(cat "$dev/class")" in 0x03*) gpu=1 ;; esac
    fi
done
if [ "$gpu" = 1 ] && nvidia-smi -L >/dev/null 2>&1; then
    nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml || true
    want=1
    echo "gpu-check: NVIDIA GPU present: $label"
else
    want=0
    echo "gpu-check: no usable NVIDIA GPU, no GPU label"
fi
current="$(sed -n 's/^KUBELET_EXTRA_ARGS=//p' "$file" 2>/dev/null | tail -n 1 | tr -d '"')"
args="$(printf ' %s ' "$current" | sed "s| $label | |g; s/^ *//; s/ *$//")"
if [ "$want" = 1 ]; then args="${args:+$args }$label"; fi
[ "$args" = "$current" ] && exit 0
{ grep -v '^KUBELET_EXTRA_ARGS=' "$file" 2>/dev/null; echo "KUBELET_EXTRA_ARGS=\"$args\""; } >"$file.tmp"
mv -f "$file.tmp" "$file"
SH
write_file "/etc/systemd/system/$NF_TOOL-gpu-check.service" <<UNIT
# written by $NF_TOOL provisioning
[Unit]
Description=Label the node as a GPU node when an NVIDIA GPU is present
After=systemd-modules-load.service
Before=kubelet.service $NF_TOOL-enroll.service

[Service]
Type=oneshot
ExecStart=/usr/lib/$NF_TOOL/gpu-check

[Install]
WantedBy=multi-user.target
UNIT
daemon_reload
enable_unit "$NF_TOOL-gpu-check.service"
log "nvidia ready"
