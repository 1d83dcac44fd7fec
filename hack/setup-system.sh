#!/usr/bin/env bash
# Installs the Debian packages Aviator needs on a development or CI machine (as root),
# makes Debian's BCC importable from the project venv, and gives BCC kernel headers.
# Idempotent: every step checks before it acts.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$root/.venv}

# nghttp2-client: h2load, the HTTP/2 load tool the benchmarks and tests drive h2c with.
# wrk: a keep-alive HTTP/1.1 load tool nobody here wrote (the handoff-wrk bench row).
packages=(python3-bpfcc bpfcc-tools linux-headers-amd64 iproute2 nghttp2-client wrk)
bash "$root/hack/debian-packages.sh" setup "${packages[@]}"

# BCC is a Debian package (the PyPI project called "bcc" is unrelated): expose only the
# bcc module to the venv through a folder that holds nothing but a link to it.
if [ -d "$venv" ]; then
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  shim="$root/.venv/bcc-shim"
  mkdir -p "$shim"
  ln -sfn /usr/lib/python3/dist-packages/bcc "$shim/bcc"
  echo "$shim" > "$site/aviator-bcc.pth"
fi

# BCC compiles against /lib/modules/$(uname -r)/build. When the running kernel has no
# matching headers package, link the newest installed headers: tracepoint arguments and
# the first sock_common fields stay correct; the BPF program reads nothing else.
# Debian splits headers into an arch package (build) and a -common one (source); BCC
# needs both links.
modules="/lib/modules/$(uname -r)"
if [ "$(id -u)" -eq 0 ]; then
  headers=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  if [ ! -e "$modules/build" ] && [ -n "$headers" ]; then
    mkdir -p "$modules"
    ln -sfn "$headers" "$modules/build"
    echo "setup: linked $modules/build -> $headers"
  fi
  common=${headers%-amd64}-common
  if [ ! -e "$modules/source" ] && [ -n "$headers" ] && [ -d "$common" ]; then
    ln -sfn "$common" "$modules/source"
    echo "setup: linked $modules/source -> $common"
  fi
fi
