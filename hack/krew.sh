#!/usr/bin/env bash
# Usage: hack/krew.sh OUT_DIR [BASE_URI]
# Builds the krew release archive of `kubectl aviator` (OUT_DIR/kubectl-aviator.tar.gz:
# the launcher) and its manifest (OUT_DIR/aviator.yaml) from
# plugins/krew/, with the version, the archive's URI (BASE_URI/kubectl-aviator.tar.gz;
# default: the local file) and its sha256 filled in.
set -euo pipefail
out=$1
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$root/aviator/__init__.py")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$root/plugins/krew/kubectl-aviator" "$stage/"
# Reproducible: fixed owner, order and times, so the sha256 depends on the content only.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -cf - kubectl-aviator \
  | gzip -n > "$out/kubectl-aviator.tar.gz"
sha=$(sha256sum "$out/kubectl-aviator.tar.gz" | cut -d' ' -f1)
uri="${2:-file://$out}/kubectl-aviator.tar.gz"
sed -e "s|@VERSION@|$version|" -e "s|@URI@|$uri|" -e "s|@SHA256@|$sha|" \
  "$root/plugins/krew/aviator.yaml" > "$out/aviator.yaml"
echo "$out/aviator.yaml"
