#!/bin/sh
# nodeforge TEST-ONLY STAND-IN (tests/support/guest/), never part of a product image:
# makes an NVIDIA GPU visible on the PCI bus of a booted test guest, the way a real one
# looks in sysfs (/sys/bus/pci/devices/0000:01:00.0 -> its device directory, holding
# vendor 0x10de and class 0x030200, a 3D controller), and, unless the kernel command line
# says nodeforge.standin.gpu=nodriver, its driver "loaded".
#
# QEMU cannot emulate a PCI device with NVIDIA's vendor id and sysfs cannot be written, so:
# a copy of /sys/bus/pci/devices (the kernel's own relative symlinks, which resolve the same
# way from there) plus one more entry, bind-mounted over it. The driver state is a separate
# mechanism on purpose (a test guest cannot load a stand-in nvidia.ko): the flag file
# /run/nodeforge-standin/nvidia-driver-loaded, read by the stand-in nvidia-smi,
# nvidia-ctk and nvidia-container-runtime (tests/support/standin_programs/), never by the
# image's GPU check, which scans the bus only. So "GPU present, driver not loaded" is a
# state of its own.
set -eu
mode="$(tr ' ' '\n' </proc/cmdline | sed -n 's/^nodeforge\.standin\.gpu=//p' | tail -n 1)"
case "$mode" in
    1|nodriver) ;;
    *) echo "nodeforge-standin-gpu: nodeforge.standin.gpu=$mode: nothing to do"; exit 0 ;;
esac
state=/run/nodeforge-standin
bus=/sys/bus/pci/devices
slot=0000:01:00.0
mkdir -p "$state/pci-devices" "$state/devices/pci0000:00/$slot"
dev="$state/devices/pci0000:00/$slot"
# the attributes the GPU check and the stand-in programs read (values as on an NVIDIA
# datacenter GPU: vendor 0x10de, class 0x030200 "3D controller")
printf '0x10de\n' >"$dev/vendor"
printf '0x20b5\n' >"$dev/device"
printf '0x030200\n' >"$dev/class"
printf '0x10de\n' >"$dev/subsystem_vendor"
printf 'nodeforge STAND-IN NVIDIA GPU\n' >"$dev/label"
for d in "$bus"/*; do
    [ -L "$d" ] || continue
    ln -sfn "$(readlink "$d")" "$state/pci-devices/${d##*/}"
done
ln -sfn "$dev" "$state/pci-devices/$slot"
mount --bind "$state/pci-devices" "$bus"
if [ "$mode" = 1 ]; then
    : >"$state/nvidia-driver-loaded"
    echo "nodeforge-standin-gpu: NVIDIA GPU $slot on the bus, driver loaded (stand-in)"
else
    rm -f "$state/nvidia-driver-loaded"
    echo "nodeforge-standin-gpu: NVIDIA GPU $slot on the bus, driver NOT loaded (stand-in)"
fi
