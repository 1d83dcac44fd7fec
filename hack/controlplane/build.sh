#!/usr/bin/env bash
# Builds the real control plane (kube-apiserver, kube-controller-manager, kubectl, etcd)
# from the Go module proxy into bin/, keyed by version. Only missing binaries are built.
# With arguments, builds those Kubernetes commands instead (`make node-components`:
# kubelet kube-proxy), from the same module version, cached the same way.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
bin="$root/bin"
# Built binaries are also kept in a per-user cache, so a fresh clone links them in
# seconds instead of compiling for many minutes.
cache="${AVIATOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aviator}/bin"
mkdir -p "$bin" "$cache"

minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

# build NAME VERSION MODULE_DIR PACKAGE LDFLAGS
build() {
  local name=$1 version=$2 dir=$3 pkg=$4 ldflags=$5
  local out="$bin/$name-$version"
  if [ -x "$out" ]; then
    echo "controlplane: $name $version already built"
  elif [ -x "$cache/$name-$version" ]; then
    cp "$cache/$name-$version" "$out.partial" && mv "$out.partial" "$out"
    echo "controlplane: $name $version taken from $cache"
  else
    echo "controlplane: building $name $version (first build downloads modules and takes a while)"
    local start=$SECONDS
    (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$out.partial" "$pkg")
    mv "$out.partial" "$out"
    cp "$out" "$cache/$name-$version.partial" && mv "$cache/$name-$version.partial" "$cache/$name-$version"
    echo "controlplane: built $name in $((SECONDS - start)) s"
  fi
  ln -sfn "$name-$version" "$bin/$name"
}

if [ $# -gt 0 ]; then
  cmds=("$@")
else
  build etcd "$ETCD_VERSION" "$here/etcd" . "-s -w"
  cmds=(kube-apiserver kube-controller-manager kubectl)
fi
for cmd in "${cmds[@]}"; do
  build "$cmd" "$KUBE_VERSION" "$here/kubernetes" "k8s.io/kubernetes/cmd/$cmd" "$kube_ldflags"
done
