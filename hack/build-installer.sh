#!/usr/bin/env bash
# Usage: hack/build-installer.sh OUT_FILE
# Writes the one-file install (CRD, namespace, RBAC, controller, agent) for
# `kubectl apply -f`: config/default rendered by kustomize, with the images from $IMG
# and $AGENT_IMG (the Makefile variables). Same source as `kubectl apply -k
# config/default` and the Helm chart's defaults.
set -euo pipefail
out=$1
root=$(cd "$(dirname "$0")/.." && pwd)
kubectl=${KUBECTL:-$root/bin/kubectl}
[ -x "$kubectl" ] || kubectl=$(command -v kubectl) || { echo "build-installer: needs kubectl (make controlplane)" >&2; exit 1; }
overlay=$(mktemp -d)
trap 'rm -rf "$overlay"' EXIT
bash "$root/hack/overlay.sh" "$overlay" config/default >/dev/null
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$root/aviator/__init__.py")
mkdir -p "$(dirname "$out")"
{
  echo "# Aviator $version: kubectl apply --server-side -f install.yaml"
  echo "# Generated from config/default by \`make build-installer\`; do not edit."
  "$kubectl" kustomize "$overlay"
} > "$out.partial"
mv "$out.partial" "$out"
echo "$out"
