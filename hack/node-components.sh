#!/usr/bin/env bash
# Everything a real node needs (`make node-components`): kubelet and kube-proxy built
# from the same Kubernetes module version as the control plane (hack/controlplane,
# cached the same way), and Debian's packages for the rest: nftables (kube-proxy's
# nftables mode execs `nft`), conntrack, containerd, runc and the CNI plugins
# (/usr/lib/cni). Idempotent: installs only what is missing (as root).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
packages=(nftables conntrack containerd runc containernetworking-plugins)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "node-components: missing Debian packages ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "node-components: installing ${missing[*]}"
  apt-get update -qq
  # containerd's package would start a daemon under systemd; the box starts its own.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
bash "$here/controlplane/build.sh" kubelet kube-proxy
