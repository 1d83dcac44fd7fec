#!/usr/bin/env bash
# Everything a real node needs (`make node-components`): kubelet and kube-proxy built
# from the same Kubernetes module version as the control plane (hack/controlplane,
# cached the same way), and Debian's packages for the rest: nftables (kube-proxy's
# nftables mode execs `nft`), conntrack, containerd, runc and the CNI plugins
# (/usr/lib/cni). Idempotent: installs only what is missing (as root).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
packages=(nftables conntrack containerd runc containernetworking-plugins)
bash "$here/debian-packages.sh" node-components "${packages[@]}"
bash "$here/controlplane/build.sh" kubelet kube-proxy
