#!/usr/bin/env bash
# Install the vehicle agent on a Raspberry Pi OS (Bookworm or later) prepared with the
# A/B partition layout of docs/raspberry-pi.md. Run as root from a checkout:
#   sudo packaging/raspberry-pi/install.sh [--source DIR] [--prefix /opt/vehicle-agent]
set -euo pipefail

SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PREFIX=/opt/vehicle-agent
PYTHON=${PYTHON:-python3}

while [ $# -gt 0 ]; do
    case "$1" in
        --source) SOURCE="$2"; shift 2 ;;
        --prefix) PREFIX="$2"; shift 2 ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root (it installs a systemd unit and writes /etc and /var/lib)" >&2
    exit 1
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "Python 3.11 or later is needed" >&2
    exit 1
}

echo "== virtual environment in $PREFIX/venv"
install -d -m 0755 "$PREFIX" "$PREFIX/docs"
"$PYTHON" -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install --quiet --upgrade pip
"$PREFIX/venv/bin/pip" install --quiet "$SOURCE"
install -m 0644 "$SOURCE/docs/raspberry-pi.md" "$PREFIX/docs/raspberry-pi.md"

echo "== configuration and state directories"
install -d -m 0700 /etc/vehicle-agent /var/lib/vehicle-agent
if [ ! -e /etc/vehicle-agent/agent.toml ]; then
    install -m 0600 "$SOURCE/packaging/raspberry-pi/agent.toml" /etc/vehicle-agent/agent.toml
    echo "   wrote /etc/vehicle-agent/agent.toml: set vin, URLs and ECUs, add the roots and keys"
else
    echo "   kept the existing /etc/vehicle-agent/agent.toml"
fi

echo "== systemd unit"
install -m 0644 "$SOURCE/packaging/raspberry-pi/vehicle-agent.service" /etc/systemd/system/vehicle-agent.service
systemctl daemon-reload
systemctl enable vehicle-agent.service
echo "done: 'systemctl start vehicle-agent' once /etc/vehicle-agent/agent.toml is complete"
