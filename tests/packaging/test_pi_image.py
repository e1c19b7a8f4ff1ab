"""packaging/raspberry-pi/make-image.sh and the sample health check ota-health-check.

The image is a plain file (no root, no loop device); its table is read back with `sfdisk --dump` and
must be the layout docs/raspberry-pi.md describes, and the data partition holds the agent's directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.services import required

PI = Path(__file__).resolve().parents[2] / "packaging" / "raspberry-pi"
DOC = Path(__file__).resolve().parents[2] / "docs" / "raspberry-pi.md"
MiB = 1024 * 1024 // 512  # sectors


@pytest.fixture
def sfdisk() -> None:
    """sfdisk (Debian's fdisk, `make test` installs it): skip without it, fail in CI."""
    if shutil.which("sfdisk") is None:
        if required():
            pytest.fail("sfdisk missing (Debian package fdisk) and OTA_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip("sfdisk missing (Debian package fdisk)")


needs_sfdisk = pytest.mark.usefixtures("sfdisk")


def _partitions(image: Path) -> dict[int, dict[str, str]]:
    dump = subprocess.run(["sfdisk", "--dump", str(image)], capture_output=True, text=True, check=True).stdout
    assert "label: dos" in dump
    found = {}
    for line in dump.splitlines():
        match = re.match(rf"{re.escape(str(image))}(\d+) : (.*)", line)
        if match:
            fields = dict(part.strip().split("=", 1) for part in match.group(2).split(",") if "=" in part)
            found[int(match.group(1))] = fields | {"bootable": str("bootable" in match.group(2))}
    return found


@needs_sfdisk
def test_the_image_has_the_documented_layout(tmp_path: Path) -> None:
    image = tmp_path / "pi.img"
    made = subprocess.run(
        [str(PI / "make-image.sh"), str(image), "--size", "2G", "--boot-size", "64M", "--root-size", "512M"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    parts = _partitions(image)
    assert sorted(parts) == [1, 2, 3, 4, 5, 6, 7]
    kinds = {n: p["type"] for n, p in parts.items()}
    assert kinds == {1: "c", 2: "c", 3: "c", 4: "5", 5: "83", 6: "83", 7: "83"}  # FAT32 x3, extended, Linux x3
    sizes = {n: int(p["size"]) for n, p in parts.items()}
    assert (sizes[1], sizes[2], sizes[3], sizes[5], sizes[6]) == (32 * MiB, 64 * MiB, 64 * MiB, 512 * MiB, 512 * MiB)
    assert parts[1]["bootable"] == "True"
    end = {n: int(p["start"]) + int(p["size"]) for n, p in parts.items()}
    assert end[7] == end[4] == image.stat().st_size // 512  # the data partition takes the rest, inside p4
    assert int(parts[7]["start"]) >= end[6] and int(parts[5]["start"]) > int(parts[4]["start"])
    # autoboot.txt for p1 names boot A as the default and boot B as the one-shot try, as the docs say
    autoboot = (tmp_path / "pi.img.autoboot.txt").read_text()
    assert autoboot in DOC.read_text()
    # each partition of the docs' table is in the image, with its number
    table = re.findall(r"^\| p(\d) \| ([^|]+) \|", DOC.read_text(), re.M)
    assert [int(n) for n, _ in table] == sorted(parts)

    if shutil.which("debugfs") and shutil.which("mkfs.ext4"):
        data = f"{image}?offset={int(parts[7]['start']) * 512}"
        listing = subprocess.run(["debugfs", "-R", "ls -l /ota", data], capture_output=True, text=True, check=True)
        assert re.search(r"40700 .* state\n", listing.stdout), listing.stdout  # the journal's directory, 0700
        assert re.search(r"100600 .* agent\.toml\n", listing.stdout), listing.stdout
        label = subprocess.run(["dumpe2fs", "-h", data], capture_output=True, text=True, check=True).stdout
        assert re.search(r"Filesystem volume name:\s+data\n", label)


def _health(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PI / "ota-health-check"), *args], capture_output=True, text=True, check=False, env=env, timeout=30
    )


def test_the_health_check_passes_on_a_healthy_system(tmp_path: Path) -> None:
    done = _health("--data", str(tmp_path), "--mount", "/")
    assert (done.returncode, done.stderr) == (0, "")
    assert list(tmp_path.iterdir()) == []  # its probe file is gone


def test_the_health_check_fails_naming_each_reason(tmp_path: Path) -> None:
    done = _health("--data", str(tmp_path / "missing"), "--mount", str(tmp_path / "not-a-mount"))
    assert done.returncode == 1
    assert f"data directory {tmp_path / 'missing'} is missing" in done.stderr
    assert f"{tmp_path / 'not-a-mount'} is not mounted" in done.stderr


def test_the_health_check_fails_on_a_data_dir_it_cannot_write() -> None:
    done = _health("--data", "/proc")  # a directory nobody, root included, can create a file in
    assert done.returncode == 1 and "data directory /proc is not writable" in done.stderr


@pytest.mark.parametrize(("answer", "code"), [(0, 0), (3, 1)])
def test_the_health_check_asks_systemd_for_each_unit(tmp_path: Path, answer: int, code: int) -> None:
    asked = tmp_path / "asked"
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$@" >> {asked}\nexit {answer}\n')
    systemctl.chmod(0o755)
    done = _health("--unit", "can-bridge.service", env={**os.environ, "SYSTEMCTL": str(systemctl)})
    assert done.returncode == code, done.stderr
    assert asked.read_text() == "is-active --quiet can-bridge.service\n"
    assert ("unit can-bridge.service is not active" in done.stderr) == (code == 1)


def test_the_health_check_refuses_an_unknown_option() -> None:
    done = _health("--bogus")
    assert done.returncode == 2 and "unknown option --bogus" in done.stderr
