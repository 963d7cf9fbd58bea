#!/usr/bin/env bash
# kubeadm, kubelet, kubectl from the profile's Kubernetes repository (pkgs.k8s.io, one minor
# per repository), exact patch pinned when given, held. kubelet is enabled but waits for
# `kubeadm join` (started by the enrollment agent). Idempotent.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
. "$(dirname "$(readlink -f "$0")")/common.sh"

need_var NF_K8S_VERSION NF_K8S_APT_URL NF_K8S_APT_KEY_URL

glob="$(version_glob "$NF_K8S_VERSION")"
apt_repo kubernetes "$NF_K8S_APT_URL" "$NF_K8S_APT_KEY_URL"
apt_pin kubernetes "$glob" kubeadm kubelet kubectl
apt_install_held kubeadm kubelet kubectl
for pkg in kubeadm kubelet kubectl; do check_version "$pkg" "$glob"; done

# The kubelet's drop-in (starts once `kubeadm join` wrote its config; ordered after the
# WireGuard interface and the enrollment) comes from the overlay (configure-node.sh).
daemon_reload
enable_unit kubelet.service
log "kubernetes $NF_K8S_VERSION ready"
