#!/usr/bin/env bash
# Install (once) what the test bed needs from Debian's archive: for the real node containerd, runc, the CNI plugins
# (bridge, host-local, loopback), iptables and conntrack; for the tests openssl (test-bed certificates) and
# prometheus (the real server behind the autoscaler's Prometheus-source test). Idempotent: does nothing when
# everything is present. (make images installs buildah and mmdebstrap itself.)
# Starts nothing: the cluster's supervisor runs containerd itself, with a config under the cluster dir.
# Facts behind the choices: shared/reference/real-node.md (crun fails on this kernel's hybrid cgroups; runc works).
set -euo pipefail

PACKAGES=(containerd runc containernetworking-plugins iptables conntrack openssl prometheus)
CNI_DIR=/usr/lib/cni

present() {
  command -v containerd >/dev/null && command -v containerd-shim-runc-v2 >/dev/null && command -v ctr >/dev/null \
    && command -v runc >/dev/null && command -v iptables >/dev/null && command -v conntrack >/dev/null \
    && command -v openssl >/dev/null && command -v prometheus >/dev/null \
    && [ -x "$CNI_DIR/bridge" ] && [ -x "$CNI_DIR/host-local" ] && [ -x "$CNI_DIR/loopback" ]
}

if present; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "hack/node/install.sh: the real node needs root (apt-get, containerd, kubelet): run it as root" >&2
  exit 1
fi
t0=$SECONDS
export DEBIAN_FRONTEND=noninteractive
# no service may start by itself on install (no systemd here; policy-rc.d says no to the rest)
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
if ! apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
fi
present || { echo "hack/node/install.sh: installed ${PACKAGES[*]} but something is still missing" >&2; exit 1; }
echo "hack/node/install.sh: installed ${PACKAGES[*]} in $((SECONDS - t0)) s" >&2
