#!/usr/bin/env bash
# Install the vehicle agent on a Raspberry Pi OS (Bookworm or later) prepared with the A/B partition
# layout of docs/raspberry-pi.md (make-image.sh builds it), the data partition mounted at /data.
# It installs only the agent's wheels (ota-vehicle-agent and ota-firmware-bundles, from `make agent-wheel`,
# built here from the checkout when --wheels holds none) and their dependencies: none of the server's.
#   sudo packaging/raspberry-pi/install.sh [--wheels DIR] [--prefix /opt/vehicle-agent] [--root DIR]
# --root DIR installs into DIR as if it were / (an image being built, a test): no systemctl, no root needed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOURCE="$(cd "$HERE/../.." && pwd)"
WHEELS="$SOURCE/dist"
PREFIX=/opt/vehicle-agent
ROOT=""
PYTHON=${PYTHON:-python3}

while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --prefix) PREFIX="$2"; shift 2 ;;
        --root) ROOT="$(cd "$2" && pwd)"; shift 2 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done

if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    echo "run as root (it installs a systemd unit and writes /data/ota and /usr/local/bin)" >&2
    exit 1
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "Python 3.11 or later is needed" >&2
    exit 1
}
if [ -z "$ROOT" ] && ! mountpoint -q /data; then
    echo "warning: /data is not a mount point; the car's identity and journal belong on the data partition" >&2
fi

echo "== the agent's wheels in $WHEELS"
if ! ls "$WHEELS"/ota_vehicle_agent-*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip wheel --quiet --no-deps -w "$WHEELS" \
        "$SOURCE/packaging/firmware-bundles" "$SOURCE/packaging/vehicle-agent"
fi

echo "== virtual environment in $PREFIX/venv"
install -d -m 0755 "$ROOT$PREFIX" "$ROOT$PREFIX/docs"
"$PYTHON" -m venv "$ROOT$PREFIX/venv"
# by file, never by name: a package of the same name on an index cannot stand in for them
"$ROOT$PREFIX/venv/bin/python" -m pip install --quiet \
    "$WHEELS"/ota_firmware_bundles-*.whl "$WHEELS"/ota_vehicle_agent-*.whl
install -m 0644 "$SOURCE/docs/raspberry-pi.md" "$ROOT$PREFIX/docs/raspberry-pi.md"

echo "== the car's directory on the data partition: /data/ota (config, keys, roots, state/ journal)"
install -d -m 0700 "$ROOT/data/ota" "$ROOT/data/ota/state"
if [ ! -e "$ROOT/data/ota/agent.toml" ]; then
    install -m 0600 "$HERE/agent.toml" "$ROOT/data/ota/agent.toml"
    echo "   wrote /data/ota/agent.toml: adjust [installer] and [health]; 'vehicle-agent init' adds the identity"
else
    echo "   kept the existing /data/ota/agent.toml"
fi
install -d -m 0755 "$ROOT/usr/local/bin"
install -m 0755 "$HERE/ota-health-check" "$ROOT/usr/local/bin/ota-health-check"

echo "== systemd unit"
install -d -m 0755 "$ROOT/etc/systemd/system"
install -m 0644 "$HERE/vehicle-agent.service" "$ROOT/etc/systemd/system/vehicle-agent.service"
if [ -z "$ROOT" ]; then
    systemctl daemon-reload
    systemctl enable vehicle-agent.service
else
    echo "   --root: enable it with 'systemctl --root $ROOT enable vehicle-agent.service' or on first boot"
fi
echo "done: 'vehicle-agent init --server URL --vin VIN --token TOKEN', then 'systemctl start vehicle-agent'"
