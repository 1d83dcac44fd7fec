#!/usr/bin/env bash
# Builds the release tools the tests use (helm, promtool, prometheus, kstatus) from the Go module proxy into bin/,
# keyed by version, with the same per-user cache as hack/controlplane/build.sh: a fresh
# clone links them in seconds instead of compiling for minutes.
# Usage: hack/tools/build.sh [TOOL...]   (default: every tool in versions.env)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=0
bin="$root/bin"
cache="${AVIATOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aviator}/bin"
mkdir -p "$bin" "$cache"

# build NAME VERSION PACKAGE
build() {
  local name=$1 version=$2 pkg=$3
  local out="$bin/$name-$version"
  if [ -x "$out" ]; then
    echo "tools: $name $version already built"
  elif [ -x "$cache/$name-$version" ]; then
    cp "$cache/$name-$version" "$out.partial" && mv "$out.partial" "$out"
    echo "tools: $name $version taken from $cache"
  else
    echo "tools: building $name $version (first build downloads modules and takes a while)"
    local start=$SECONDS gobin
    gobin=$(mktemp -d)
    GOBIN="$gobin" go install -trimpath -ldflags "-s -w" "$pkg@$version"
    mv "$gobin/$(basename "$pkg")" "$out"
    rm -rf "$gobin"
    cp "$out" "$cache/$name-$version.partial" && mv "$cache/$name-$version.partial" "$cache/$name-$version"
    echo "tools: built $name in $((SECONDS - start)) s"
  fi
  ln -sfn "$name-$version" "$bin/$name"
}

# build_module NAME VERSION DIR: a program of this repository's own Go module in DIR
# (its go.mod pins what it builds on; VERSION keys the cache).
build_module() {
  local name=$1 version=$2 dir=$3
  local out="$bin/$name-$version"
  if [ -x "$out" ]; then
    echo "tools: $name $version already built"
  elif [ -x "$cache/$name-$version" ]; then
    cp "$cache/$name-$version" "$out.partial" && mv "$out.partial" "$out"
    echo "tools: $name $version taken from $cache"
  else
    echo "tools: building $name $version"
    (cd "$dir" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$out.partial" .)
    mv "$out.partial" "$out"
    cp "$out" "$cache/$name-$version.partial" && mv "$cache/$name-$version.partial" "$cache/$name-$version"
  fi
  ln -sfn "$name-$version" "$bin/$name"
}

tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(helm promtool prometheus kstatus)
for tool in "${tools[@]}"; do
  case $tool in
    helm) build helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm ;;
    # The Prometheus server (no web UI assets: the API is what the tests use) and
    # promtool (`promtool test rules`, `check rules`).
    prometheus) build prometheus "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/prometheus ;;
    promtool) build promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool ;;
    # kstatus' Compute (sigs.k8s.io/cli-utils) over JSON objects: hack/tools/kstatus.
    kstatus) build_module kstatus "$CLI_UTILS_VERSION" "$here/kstatus" ;;
    *) echo "tools: unknown tool $tool" >&2; exit 2 ;;
  esac
done
