#!/usr/bin/env bash
# Usage: hack/overlay.sh OUT_DIR BASE_DIR...
# Writes OUT_DIR/kustomization.yaml over the given config/ bases, setting the images
# from $IMG and $AGENT_IMG (the Makefile variables), and prints OUT_DIR.
set -euo pipefail
out=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)

# split IMAGE into name and tag; a ':' before the last '/' is a registry port, not a tag
split() {
  local image=$1 name tag
  if [[ "${image##*/}" == *:* ]]; then name=${image%:*}; tag=${image##*:}; else name=$image; tag=latest; fi
  printf '    newName: %s\n    newTag: "%s"\n' "$name" "$tag"
}

{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  for base in "$@"; do echo "  - $(realpath --relative-to="$out" "$root/$base")"; done
  echo "images:"
  echo "  - name: aviator-controller"; split "${IMG:-aviator-controller:latest}"
  echo "  - name: aviator-agent"; split "${AGENT_IMG:-aviator-agent:latest}"
} > "$out/kustomization.yaml"
echo "$out"
