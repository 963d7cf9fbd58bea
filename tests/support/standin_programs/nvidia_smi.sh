#!/bin/sh
# STAND-IN for nvidia-smi (@PACKAGE@ @VERSION@), nodeforge test fixture. Like the real one:
# no driver loaded -> it cannot talk to the driver (fails, whatever the PCI bus holds);
# a driver but no NVIDIA GPU on the bus -> "No devices were found"; else one line per GPU.
# (A booted test guest cannot load a stand-in nvidia.ko: the file
# /run/nodeforge-standin/nvidia-driver-loaded stands for a loaded driver.)
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) nvidia-smi $*" >>"${NODEFORGE_STANDIN_LOG:-/var/log/nodeforge-standins.log}" 2>/dev/null || true
if [ ! -e /proc/driver/nvidia/version ] && [ ! -d /sys/module/nvidia ] \
    && [ ! -e /run/nodeforge-standin/nvidia-driver-loaded ]; then
    echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running."
    exit 9
fi
n=0
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor" 2>/dev/null)" = 0x10de ] || continue
    case "$(cat "$d/class" 2>/dev/null)" in
        0x0300*|0x0302*) echo "GPU $n: NVIDIA stand-in GPU (${d##*/})"; n=$((n + 1)) ;;
    esac
done
if [ "$n" = 0 ]; then echo "No devices were found"; exit 6; fi
exit 0
