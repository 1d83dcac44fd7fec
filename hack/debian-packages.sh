#!/usr/bin/env bash
# usage: debian-packages.sh WHO PACKAGE...
# Installs the Debian packages of the list that are missing (as root); says which are
# missing and exits 1 when not root. WHO prefixes its messages (the calling step).
set -euo pipefail
who=$1
shift
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "$who: missing Debian packages ${missing[*]}; run as root or install them yourself" >&2
    exit 1
  fi
  echo "$who: installing ${missing[*]}"
  apt-get update -qq
  # Packages that would start daemons under systemd (containerd) are only installed:
  # nothing here starts them.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
