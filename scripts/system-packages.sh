#!/usr/bin/env bash
# Install the Debian packages some tests need (docker-compose, whose `config` command
# validates compose.yaml without a Docker engine; shellcheck; prometheus for promtool and the
# real-Prometheus test; wrk). Idempotent: installs only what is missing.
# Never fails the run: without root or apt the tests that need a package skip and say why.
#   usage: scripts/system-packages.sh PACKAGE...
set -uo pipefail
missing=()
for package in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "==> not installing ${missing[*]}: needs root and apt-get (the tests that use them will skip)" >&2
    exit 0
fi
echo "==> installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A fresh machine has no package lists yet; try the install first, refresh the lists only if it fails.
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        # One package the archive lacks must not keep the others out: install them one by one.
        for package in "${missing[@]}"; do
            apt-get install -y -qq --no-install-recommends "$package" >/dev/null 2>&1 \
                || echo "==> could not install $package (the tests that use it will skip)" >&2
        done
    fi
fi
exit 0
