# Sourced by scripts/demo and .ci/run: makes a virtual environment in $VENV with conveyor
# installed, on a clean Debian machine too (installing python3-venv when it is missing).
# Usage: bootstrap_venv [EXTRAS]   e.g. bootstrap_venv test,redis

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
apt_install() {
    [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

bootstrap_venv() {
    local extras=${1:-}
    PYTHON=${PYTHON:-python3}
    VENV=${VENV:-.venv}
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV" 2>/dev/null || {
            rm -rf "$VENV"
            apt_install python3-venv
            "$PYTHON" -m venv "$VENV"
        }
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".${extras:+[$extras]}"
}
