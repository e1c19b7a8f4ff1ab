#!/usr/bin/env bash
# Build the partition layout of docs/raspberry-pi.md into a disk image FILE: no root, no loop device.
#   packaging/raspberry-pi/make-image.sh OUT.img [--size 16G] [--boot-size 256M] [--root-size 4G] [--no-data-fs]
# p1 autoboot (FAT32, 32 MiB), p2/p3 boot A/B (FAT32), p4 extended, p5/p6 root A/B (ext4), p7 data (rest).
# With mkfs.ext4 (e2fsprogs) p7 is formatted ext4 (label "data", mounted at /data) and holds ota/ and
# ota/state/ (mode 0700) and the sample ota/agent.toml, which `vehicle-agent init` completes and keeps.
# The FAT partitions and the two root file systems are left for your OS build (pi-gen, rpi-image-gen)
# to fill; OUT.img.autoboot.txt is the autoboot.txt that goes on p1. Write the image with
# `dd if=OUT.img of=/dev/mmcblk0 bs=4M conv=fsync` (or rpi-imager, "use custom").
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SIZE=16G
BOOT_SIZE=256M
ROOT_SIZE=4G
DATA_FS=1
OUT=""

while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE="$2"; shift 2 ;;
        --boot-size) BOOT_SIZE="$2"; shift 2 ;;
        --root-size) ROOT_SIZE="$2"; shift 2 ;;
        --no-data-fs) DATA_FS=0; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        -*) echo "unknown option: $1" >&2; exit 2 ;;
        *) OUT="$1"; shift ;;
    esac
done
[ -n "$OUT" ] || { echo "usage: $0 OUT.img [--size 16G] [--boot-size 256M] [--root-size 4G] [--no-data-fs]" >&2; exit 2; }
command -v sfdisk >/dev/null || { echo "sfdisk (util-linux's fdisk package) is needed" >&2; exit 1; }

# sfdisk takes sizes with a MiB/GiB suffix; 16G -> 16GiB
iec() { case "$1" in *[KMGT]) echo "${1}iB" ;; *) echo "$1" ;; esac; }

rm -f "$OUT"
truncate -s "$SIZE" "$OUT"  # sparse: costs no disk until written
sfdisk --quiet "$OUT" <<LAYOUT
label: dos
unit: sectors

start=2048, size=32MiB, type=c, bootable
size=$(iec "$BOOT_SIZE"), type=c
size=$(iec "$BOOT_SIZE"), type=c
type=5
size=$(iec "$ROOT_SIZE"), type=83
size=$(iec "$ROOT_SIZE"), type=83
type=83
LAYOUT

cat > "$OUT.autoboot.txt" <<'AUTOBOOT'
[all]
tryboot_a_b=1
boot_partition=2
[tryboot]
boot_partition=3
AUTOBOOT

if [ "$DATA_FS" = 1 ]; then
    if ! command -v mkfs.ext4 >/dev/null; then
        echo "mkfs.ext4 not found: p7 left unformatted (--no-data-fs to silence)" >&2
    else
        read -r start sectors < <(sfdisk --dump "$OUT" | awk -F'[=,]' '$1 ~ /7 *: start/ { gsub(/ /, ""); print $2, $4 }')
        staging="$(mktemp -d)"
        trap 'rm -rf "$staging"' EXIT
        install -d -m 0700 "$staging/ota" "$staging/ota/state"
        install -m 0600 "$HERE/agent.toml" "$staging/ota/agent.toml"
        mkfs.ext4 -q -F -L data -E "offset=$((start * 512))" -d "$staging" "$OUT" "$((sectors / 2))k"
    fi
fi
echo "$OUT"
