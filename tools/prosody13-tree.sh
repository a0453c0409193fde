#!/usr/bin/env bash
# Builds, once, a Debian 13 "trixie" root filesystem with Prosody 13 in it, next to this machine's own Prosody 0.12:
# the fixture generator and the integration tests run its Prosody through fixtures/prosody_runtime.py (a chroot in a
# private mount namespace). It also holds python3 and a venv at /opt/prosody-lastlog with our runtime dependencies,
# for tests that run our tool inside the tree.
#
# Where: $PROSODY13_ROOT, else /var/cache/prosody-lastlog/trixie (outside any checkout, so runs on one machine share
# it). A stamp file in the tree records what it was built from; the tree is rebuilt only when it is missing or the
# stamp differs, into a temporary directory next to it that is then renamed into place, so a half-built tree is never
# seen at that path. No service starts inside it: a policy-rc.d that exits 101 is there from the setup hook on.
# Needs root (mmdebstrap's root mode), mmdebstrap (tools/install-debian-packages.sh) and access to Debian's archive
# and PyPI. Any failure is an error: nothing that needs the tree is skipped.
set -euo pipefail

# Bump when the recipe below changes in a way the package and requirement lists do not show.
RECIPE=1
SUITE=trixie
MIRROR=${PROSODY13_MIRROR:-http://deb.debian.org/debian}
ROOT=${PROSODY13_ROOT:-/var/cache/prosody-lastlog/trixie}
VENV=/opt/prosody-lastlog
STAMP=.prosody-lastlog-tree
# lua5.4-unbound is a Recommends of prosody that a real install gets (without it Prosody warns on every start);
# ca-certificates lets pip in the tree reach PyPI.
packages=(
    prosody prosody-modules lua-dbi-sqlite3 lua-dbi-postgresql lua-dbi-mysql lua5.4-unbound
    python3 python3-venv ca-certificates
)
requirements=("lupa>=2.0" "prometheus-client>=0.20" "watchdog>=7.1")

if [ "$(id -u)" -ne 0 ]; then
    exec sudo --preserve-env=PROSODY13_ROOT,PROSODY13_MIRROR "$0" "$@"
fi

wanted=$(printf 'recipe %s\nsuite %s\npackages %s\nvenv %s %s\n' \
    "$RECIPE" "$SUITE" "${packages[*]}" "$VENV" "${requirements[*]}")

versions() {
    local tree=$1 package
    for package in prosody prosody-modules; do
        printf '%s %s\n' "$package" \
            "$(dpkg-query --admindir="$tree/var/lib/dpkg" -W -f='${Version}' "$package")"
    done
}

if [ -f "$ROOT/$STAMP" ] && [ "$(cat "$ROOT/$STAMP")" = "$wanted" ]; then
    echo "Prosody 13 tree at $ROOT is up to date:"
    versions "$ROOT"
    exit 0
fi

command -v mmdebstrap >/dev/null || {
    echo "mmdebstrap is missing: run tools/install-debian-packages.sh" >&2
    exit 1
}
parent=$(dirname "$ROOT")
mkdir -p "$parent"
# One build at a time; a second caller waits, then finds the tree up to date.
exec 9>"$ROOT.lock"
flock 9
if [ -f "$ROOT/$STAMP" ] && [ "$(cat "$ROOT/$STAMP")" = "$wanted" ]; then
    echo "Prosody 13 tree at $ROOT is up to date (built meanwhile):"
    versions "$ROOT"
    exit 0
fi

if [ -e "$ROOT" ] && [ ! -f "$ROOT/$STAMP" ] && [ -n "$(ls -A "$ROOT" 2>/dev/null)" ]; then
    echo "$ROOT exists but is no tree of this script (no $STAMP in it): move it away or set PROSODY13_ROOT" >&2
    exit 1
fi
# Left behind by a build that was killed (we hold the lock, so no build is running).
rm -rf --one-file-system "$parent/.$(basename "$ROOT").build."* "$parent/.$(basename "$ROOT").old."*
build=$(mktemp -d "$parent/.$(basename "$ROOT").build.XXXXXX")
chmod 755 "$build" # mktemp makes it 0700: it becomes the tree's /
old=""
cleanup() {
    # --one-file-system: never follow a mount that a killed build may have left in the tree.
    [ -n "$build" ] && rm -rf --one-file-system "$build"
    [ -n "$old" ] && rm -rf --one-file-system "$old"
    return 0
}
trap cleanup EXIT

echo "building the Prosody 13 tree ($SUITE: ${packages[*]}) at $ROOT"
started=$SECONDS
policy='mkdir -p "$1/usr/sbin" && printf "#!/bin/sh\nexit 101\n" >"$1/usr/sbin/policy-rc.d" &&
    chmod 755 "$1/usr/sbin/policy-rc.d"'
# Local CAs the host trusts (Debian's /usr/local/share/ca-certificates, e.g. a proxy's) are trusted in the tree too,
# so pip reaches PyPI from inside it the way the host does.
local_cas='if [ -d /usr/local/share/ca-certificates ]; then
    cp -R /usr/local/share/ca-certificates/. "$1/usr/local/share/ca-certificates/"
fi && chroot "$1" update-ca-certificates >/dev/null'
pip_install=("$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check --quiet "${requirements[@]}")
# The build runs in a private mount namespace: whatever mmdebstrap mounts in the tree goes when it ends.
unshare --mount --propagation private -- mmdebstrap \
    --variant=minbase \
    --skip=chroot/policy-rc.d \
    --setup-hook="$policy" \
    --include="$(IFS=,; echo "${packages[*]}")" \
    --customize-hook="$local_cas" \
    --customize-hook="chroot \"\$1\" python3 -m venv $VENV" \
    --customize-hook="chroot \"\$1\" ${pip_install[*]@Q}" \
    --customize-hook="chroot \"\$1\" $VENV/bin/python -c 'import lupa, prometheus_client, watchdog'" \
    "$SUITE" "$build" "$MIRROR"

[ -x "$build/usr/bin/prosody" ] || {
    echo "the tree has no /usr/bin/prosody" >&2
    exit 1
}
printf '%s\n' "$wanted" >"$build/$STAMP"
if [ -e "$ROOT" ]; then
    old=$(mktemp -d "$parent/.$(basename "$ROOT").old.XXXXXX")
    mv -T "$ROOT" "$old/tree"
fi
mv -T "$build" "$ROOT"
build=""
echo "built the Prosody 13 tree at $ROOT in $((SECONDS - started)) s:"
versions "$ROOT"
