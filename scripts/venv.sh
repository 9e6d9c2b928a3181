# Sourced by the other scripts: make ./venv if it is missing and install the pinned
# requirements into it when they changed since the last install. Needs only python3 (3.10+).
set -euo pipefail
REQUIREMENTS="${REQUIREMENTS:-requirements-dev.txt}"
if [ ! -x venv/bin/python ]; then
    echo "==> creating virtual environment in ./venv"
    python3 -m venv venv
fi
stamp="venv/.installed-$(basename "$REQUIREMENTS")"
wanted="$(cat requirements*.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "==> installing $REQUIREMENTS into ./venv"
    venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    echo "$wanted" > "$stamp"
fi
# shellcheck disable=SC1091
source venv/bin/activate
