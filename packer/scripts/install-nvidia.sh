#!/usr/bin/env bash
# GPU profiles only: the NVIDIA driver as Canonical-signed precompiled modules (they load
# under Secure Boot; no DKMS), the NVIDIA container toolkit pointed at CRI-O's low-level
# runtimes, and a boot-time check that labels the node only when an NVIDIA GPU is present
# and its driver loaded. The "nvidia" CRI-O runtime handler (crun stays the default) comes
# from the overlay. Skips cleanly when NF_GPU=0. Idempotent. Facts: UPSTREAM.md, NVIDIA.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

if [ "${NF_GPU:-0}" != 1 ]; then
    log "NF_GPU=${NF_GPU:-0}: not a GPU profile, nothing to do"
    exit 0
fi
need_var NF_NVIDIA_DRIVER_BRANCH NF_NVIDIA_MODULES_PACKAGE NF_NVIDIA_DRIVER_PACKAGE \
    NF_NVIDIA_UTILS_PACKAGE NF_NVIDIA_KERNEL_FLAVOUR NF_NVIDIA_APT_URL NF_NVIDIA_APT_KEY_URL

# --- the driver: what `ubuntu-drivers install --gpgpu` picks, for the kernel the image boots ----
# linux-modules-nvidia-<branch>-server-<flavour> (signed by Canonical), the no-DKMS userspace
# and nvidia-smi; never nvidia-driver-*/nvidia-dkms-* (DKMS-built modules are unsigned).
if ! apt-cache show "$NF_NVIDIA_MODULES_PACKAGE" >/dev/null 2>&1; then
    die "$NF_NVIDIA_MODULES_PACKAGE is not in the archive: no signed NVIDIA $NF_NVIDIA_DRIVER_BRANCH modules for the '$NF_NVIDIA_KERNEL_FLAVOUR' kernel (pick another gpu.nvidia.driver_branch; see UPSTREAM.md)"
fi
driver_pkgs=("$NF_NVIDIA_MODULES_PACKAGE" "$NF_NVIDIA_DRIVER_PACKAGE" "$NF_NVIDIA_UTILS_PACKAGE")

# --- the toolkit repository; all four packages pinned together (they depend on equal versions)
apt_repo nvidia "$NF_NVIDIA_APT_URL" "$NF_NVIDIA_APT_KEY_URL"
toolkit_pkgs=(nvidia-container-toolkit nvidia-container-toolkit-base libnvidia-container-tools libnvidia-container1)
if [ -n "${NF_NVIDIA_TOOLKIT_VERSION:-}" ]; then
    apt_pin nvidia "$(version_glob "$NF_NVIDIA_TOOLKIT_VERSION")" "${toolkit_pkgs[@]}"
else
    rm -f "/etc/apt/preferences.d/$NF_TOOL-nvidia"
fi
apt_install_held "${driver_pkgs[@]}" "${toolkit_pkgs[@]}"
for pkg in "${driver_pkgs[@]}"; do
    [ -n "$(installed_version "$pkg")" ] || die "$pkg not installed"
done
dkms="$({ dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' 'nvidia-dkms-*' 2>/dev/null || true; } \
    | awk 'substr($1, 2, 1) == "i" {print $2}')"
[ -z "$dkms" ] || die "DKMS NVIDIA modules installed ($dkms): they do not load under Secure Boot"
if [ -n "${NF_NVIDIA_TOOLKIT_VERSION:-}" ]; then
    check_version nvidia-container-toolkit "$(version_glob "$NF_NVIDIA_TOOLKIT_VERSION")"
fi
log "$NF_NVIDIA_MODULES_PACKAGE $(installed_version "$NF_NVIDIA_MODULES_PACKAGE") (held)"

# --- nvidia-container-runtime: CRI-O's crun/runc live in /usr/libexec/crio, which is not on
# its search path; name them absolutely (re-applied on every run: the package's postinst
# rewrites config.toml on upgrades).
nvidia-ctk --quiet config --in-place \
    --set nvidia-container-runtime.runtimes=/usr/libexec/crio/crun:/usr/libexec/crio/runc \
    || die "nvidia-ctk config failed"

# --- boot-time check: label the node only when an NVIDIA GPU (VGA or 3D controller) is on the
# PCI bus and the driver answers; otherwise make sure no GPU label is set (the image may boot
# on a CPU-only host). RuntimeClass "nvidia" selects nodes by this label.
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
        case "$(cat "$dev/class")" in 0x0300*|0x0302*) gpu=1 ;; esac
    fi
done
if [ "$gpu" = 1 ] && nvidia-smi -L >/dev/null 2>&1; then
    nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml || true
    want=1 state=present
    echo "gpu-check: NVIDIA GPU present: $label"
elif [ "$gpu" = 1 ]; then
    want=0 state=no-driver
    echo "gpu-check: NVIDIA GPU present but its driver does not answer (Secure Boot? see README): no GPU label"
else
    want=0 state=absent
    echo "gpu-check: no usable NVIDIA GPU, no GPU label"
fi
# the verdict for this boot, read by the enrollment agent: it leaves the profile's GPU taints
# (nvidia.com/gpu*) out of the join when this machine has no usable GPU
mkdir -p /run/nodeforge && echo "$state" >/run/nodeforge/gpu
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
