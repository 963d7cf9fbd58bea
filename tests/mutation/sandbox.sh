#!/bin/sh
# Run a command with a private /dev (issue 18, `make mutation`): a mutant that skips the flash
# refusals once wrote the test image to the host's /dev/nvme0n1p3, because the flash tests name
# real-looking device paths. Here the command sees a fresh tmpfs on /dev in its own mount
# namespace, holding only null, zero, full, random, urandom, tty (bind-mounted), a private
# devpts, /dev/shm and the fd links: no block device can be opened, and whatever a mutant
# creates under /dev vanishes with the namespace. Non-root: a user namespace maps us to root.
# Usage: tests/mutation/sandbox.sh COMMAND [ARG...]
set -eu
if [ "${NF_PRIVATE_DEV:-}" != 1 ]; then
  userns=
  [ "$(id -u)" = 0 ] || userns=--map-root-user
  NF_PRIVATE_DEV=1 exec unshare --mount --propagation private $userns -- "$0" "$@"
fi
real=$(mktemp -d)
mount --rbind /dev "$real"
mount -t tmpfs -o mode=0755,nosuid,size=64m nf-private-dev /dev
for n in null zero full random urandom tty; do
  : >"/dev/$n"
  mount --bind "$real/$n" "/dev/$n"
done
mkdir /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
umount -l "$real"
rmdir "$real"
# refuse to go on if any block device is still reachable under /dev
if [ -n "$(find /dev -type b 2>/dev/null)" ]; then
  echo "sandbox.sh: a block device is visible under /dev" >&2
  exit 1
fi
exec "$@"
