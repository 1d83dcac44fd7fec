#!/usr/bin/env bash
# `make images`: the images a real node runs, built without a Docker daemon or a
# registry: a Debian rootfs (mmdebstrap, cached per user), a local base image on it,
# the pod sandbox (pause, a static binary built here) and the project's images from
# their own Dockerfiles with the local base (the Dockerfiles' base ARGs). Each image
# is saved as an OCI archive in bin/images/ for the box's real node to import.
# Builds trust what this machine trusts (its CA bundle is mounted into each build).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache="${AVIATOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aviator}/images"
out="$root/bin/images"
mkdir -p "$cache" "$out"
for tool in buildah mmdebstrap gcc; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ -n "${missing[*]:-}" ]; then
  echo "images: installing buildah mmdebstrap gcc"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah mmdebstrap gcc libc6-dev >/dev/null
fi
ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
bud=(buildah bud --quiet --layers --isolation chroot -v "$ca:/etc/ssl/certs/ca-certificates.crt:ro")

rootfs="$cache/debian-bookworm-python.tar"
if [ ! -s "$rootfs" ]; then
  echo "images: making the Debian rootfs (mmdebstrap, once)"
  mmdebstrap --variant=minbase --format=tar \
    --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$rootfs.partial.tar"
  mv "$rootfs.partial.tar" "$rootfs"
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$here/base/Containerfile" "$ctx/" && ln "$rootfs" "$ctx/rootfs.tar" 2>/dev/null || cp "$rootfs" "$ctx/rootfs.tar"
"${bud[@]}" -t localhost/aviator-base:bookworm "$ctx" >/dev/null

mkdir -p "$ctx/pause"
gcc -Os -static -o "$ctx/pause/pause" "$here/pause/pause.c"
cp "$here/pause/Containerfile" "$ctx/pause/"
"${bud[@]}" -t localhost/pause:box "$ctx/pause" >/dev/null

base=(--build-arg PYTHON_IMAGE=localhost/aviator-base:bookworm)
"${bud[@]}" "${base[@]}" -t aviator-testapp:latest "$root/test/functional" >/dev/null
"${bud[@]}" "${base[@]}" -t aviator-controller:latest -f "$root/Dockerfile" "$root" >/dev/null
"${bud[@]}" --build-arg DEBIAN_IMAGE=localhost/aviator-base:bookworm -t aviator-agent:latest \
  -f "$root/Dockerfile.agent" "$root" >/dev/null

save() {  # save NAME FILE
  rm -f "$out/$2.tar"
  buildah push --quiet "$1" "oci-archive:$out/$2.tar:$1"
  echo "images: $1 -> bin/images/$2.tar"
}
save localhost/pause:box pause
save aviator-testapp:latest testapp
save aviator-controller:latest controller
save aviator-agent:latest agent
