#!/usr/bin/env bash
# Installs the Debian packages the test suite runs for real, without starting their services, the C compiler
# `make bench` builds its I/O floor (benchmarks/io_floor.c) with, and mmdebstrap, with which tools/prosody13-tree.sh
# builds the Debian 13 tree that holds Prosody 13.
set -euo pipefail

packages=(
    prosody prosody-modules lua5.4 lua-dbi-sqlite3 lua-dbi-postgresql lua-dbi-mysql
    prometheus prometheus-node-exporter
    graphite-carbon influxdb prometheus-pushgateway
    gcc libc6-dev wrk
    mmdebstrap
)
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

# The tests start their own push servers (carbon-cache, influxd, pushgateway) on free ports: a service one of the
# packages just installed must not hold the default ports or state. Stop any that still started, by its own unit.
declare -A programs=([graphite-carbon]=carbon-cache [influxdb]=influxd [prometheus-pushgateway]=prometheus-pushgateway)
declare -A services=([graphite-carbon]=carbon-cache [influxdb]=influxdb [prometheus-pushgateway]=prometheus-pushgateway)
running() { ps -eo args= | grep -E "^(/usr/bin/python3 )?(/usr/s?bin/)?$1( |$)" >/dev/null; }
for package in "${missing[@]}"; do
    program=${programs[$package]:-}
    [ -n "$program" ] && running "$program" || continue
    service=${services[$package]}
    if [ -d /run/systemd/system ]; then
        $sudo systemctl stop "$service" || true
    elif [ -x "/etc/init.d/$service" ]; then
        $sudo "/etc/init.d/$service" stop || true
    fi
    for _ in $(seq 50); do running "$program" && sleep 0.2 || break; done
    if running "$program"; then
        echo "the $service service of $package is still running after install: stop it (it holds its default port)" >&2
        exit 1
    fi
    echo "stopped the $service service that installing $package started"
done
