#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real, without starting their services.
set -euo pipefail

packages=(prosody prosody-modules lua5.4 lua-dbi-sqlite3 lua-dbi-postgresql lua-dbi-mysql prometheus prometheus-node-exporter)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# A policy-rc.d that exits 101 stops the packages' services from starting on install.
policy=/usr/sbin/policy-rc.d
ours=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    ours=1
fi
trap '[ "$ours" -eq 1 ] && $sudo rm -f "$policy"' EXIT
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
