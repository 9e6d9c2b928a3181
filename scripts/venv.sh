# shellcheck shell=bash
# Sourced by the other scripts: make ./venv if it is missing and install the pinned
# requirements into it when they changed since the last install. Needs only python3 (3.10+).
# Each install stamps the file it installed and every file that one includes with -r
# (requirements-dev.txt includes the others), so a superset's install satisfies a subset:
# ./scripts/start after ./scripts/test installs nothing.
set -euo pipefail
REQUIREMENTS="${REQUIREMENTS:-requirements-dev.txt}"
if [ ! -x venv/bin/python ]; then
    echo "==> creating virtual environment in ./venv"
    python3 -m venv venv
fi

# $1, then every requirements file it pulls in with -r, recursively.
requirements_closure() {
    local line
    echo "$1"
    while read -r line; do
        case "$line" in
            "-r "*) requirements_closure "$(dirname "$1")/${line#-r }" ;;
        esac
    done < "$1"
}

stamp="venv/.installed-$(basename "$REQUIREMENTS")"
wanted="$(cat requirements*.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "==> installing $REQUIREMENTS into ./venv"
    venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    while read -r included; do
        echo "$wanted" > "venv/.installed-$(basename "$included")"
    done < <(requirements_closure "$REQUIREMENTS")
fi
# shellcheck disable=SC1091
source venv/bin/activate
