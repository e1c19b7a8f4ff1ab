"""What downloads cost a car: bytes saved by deltas, and memory with a 1 GiB bundle.

(a) Delta savings: for the sample image sizes, the next version is the old image with
a few KiB changed plus its new version header (as a real fix is); the delta is built
with bsdiff4 exactly as the server does (``ota_server.services.deltas``) and compared
with the full bundle a car would download otherwise. An unrelated image shows the
case where the server keeps no delta.

(b) Memory: a bundle of ``--bundle-mib`` (default 1 GiB) is written streaming to a
temporary directory (never held in memory), signed into an Image repository and a
Director with the contract helpers, and served by a local HTTP server with Range
support. A child process runs the real agent (``Agent.handle``: verify, download,
verify, install into a file-backed A/B slot, boot, health check, commit) and reports
its peak resident memory (VmHWM); the target is under 100 MiB.

    .venv/bin/python -m bench.downloads --json bench/out/downloads.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bsdiff4

from firmware_bundles import repo_paths
from firmware_bundles.bundle import (
    IMAGE_MAGIC,
    IMAGE_NAME,
    MANIFEST_NAME,
    Manifest,
    build_bundle,
    revised_image,
    sample_image,
)
from firmware_bundles.uptane import (
    bundle_target_path,
)
from firmware_bundles.vin import make_vin
from simulator.procstat import memory_kib
from simulator.signed_repo import SignedRepositories

TARGET_RSS_MIB = 100.0
DELTA_SIZES = (64 * 1024, 1024 * 1024, 16 * 1024 * 1024)
CHANGED_BYTES = 4096
KEEP_RATIO = 0.5  # the server's default DeltaPolicy.max_ratio
HW = "bench-hw"
SERIAL = "ECU-0001"
OLD, NEW = "1.0.0", "2.0.0"
BLOCK = 1024 * 1024

# -- (a) delta savings ------------------------------------------------------------------


def delta_row(size: int) -> dict[str, Any]:
    old = sample_image(HW, OLD, size=size)
    new = revised_image(old, HW, NEW, changed_bytes=CHANGED_BYTES)
    bundle = build_bundle(new, HW, NEW, 2)
    started = time.perf_counter()
    delta = bsdiff4.diff(old, new)
    diff_s = time.perf_counter() - started
    started = time.perf_counter()
    assert bsdiff4.patch(old, delta) == new
    patch_s = time.perf_counter() - started
    return {
        "image_bytes": size,
        "changed_bytes": CHANGED_BYTES,
        "full_bundle_bytes": bundle.length,
        "delta_bytes": len(delta),
        "ratio": round(len(delta) / bundle.length, 4),
        "saved_percent": round(100 * (1 - len(delta) / bundle.length), 2),
        "kept_by_server": len(delta) < KEEP_RATIO * bundle.length,
        "diff_seconds": round(diff_s, 3),
        "patch_seconds": round(patch_s, 3),
    }


def unrelated_row(size: int = 64 * 1024) -> dict[str, Any]:
    old, new = sample_image(HW, OLD, size=size), sample_image(HW, NEW, size=size)
    bundle = build_bundle(new, HW, NEW, 2)
    delta = bsdiff4.diff(old, new)
    return {
        "image_bytes": size,
        "full_bundle_bytes": bundle.length,
        "delta_bytes": len(delta),
        "ratio": round(len(delta) / bundle.length, 4),
        "kept_by_server": len(delta) < KEEP_RATIO * bundle.length,
    }


# -- (b) memory with a big bundle -------------------------------------------------------


def _write_image(path: Path, size: int) -> str:
    """Header naming HW/NEW (the health check reads it), then random blocks; returns the sha256."""
    header = IMAGE_MAGIC + json.dumps({"hardware_id": HW, "version": NEW}).encode() + b"\n"
    rng = random.Random(5)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        written = 0
        piece = header
        while written < size:
            piece = (piece or rng.randbytes(BLOCK))[: size - written]
            out.write(piece)
            digest.update(piece)
            written += len(piece)
            piece = b""
    return digest.hexdigest()


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


def write_big_bundle(directory: Path, size: int) -> Path:
    """The bundle format (manifest then image) built by streaming the image file into the tar."""
    image = directory / "image.bin"
    manifest = Manifest(HW, NEW, 2, size, _write_image(image, size))
    bundle = directory / "bundle.otab"
    raw = manifest.to_json()
    with tarfile.open(bundle, mode="w", format=tarfile.PAX_FORMAT) as tar, image.open("rb") as fh:
        tar.addfile(_member(MANIFEST_NAME, len(raw)), io.BytesIO(raw))
        tar.addfile(_member(IMAGE_NAME, size), fh)
    image.unlink()
    return bundle


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def publish(root: Path, bundle: Path, vin: str) -> dict[str, str]:
    """Lay out both repositories under ``root`` as ``firmware_bundles.repo_paths`` says."""
    repositories = SignedRepositories("http://bench.invalid/repo", [vin], valid_for=timedelta(days=1))
    path = bundle_target_path(HW, NEW)
    target = repositories.list_image(path, bundle.stat().st_size, _file_sha256(bundle), HW, NEW, 2)
    repositories.assign({SERIAL: target}, vin=vin)
    repo = root / "repo"
    repositories.write_under(repo)
    served = repo / repo_paths.TARGETS / path
    served.parent.mkdir(parents=True, exist_ok=True)
    os.replace(bundle, served)
    return {"image_root": repositories.image_root.decode(), "director_root": repositories.director_root.decode()}


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with single ``bytes=N-`` ranges, as the server's FileResponse answers them."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_head(self) -> Any:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if match is None or not path.is_file():
            return super().send_head()
        start, size = int(match.group(1)), path.stat().st_size
        if start >= size:
            self.send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            return None
        fh = path.open("rb")
        fh.seek(start)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return fh


def serve(root: Path) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: RangeHandler(*a, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_agent(spec: dict[str, Any]) -> dict[str, Any]:
    """In the child: one car taking the update end to end; returns its memory figures."""
    from firmware_bundles.messages import CampaignNotice
    from vehicle_agent.agent import Agent
    from vehicle_agent.config import AgentConfig, EcuConfig
    from vehicle_agent.link import FakeLink
    from vehicle_agent.transport import HttpxTransport, make_http_client

    config = AgentConfig(
        vin=spec["vin"],
        ecus=(EcuConfig(SERIAL, HW, OLD),),
        mqtt_url="mqtt://127.0.0.1:9",
        repo_url=spec["repo_url"],
        state_dir=Path(spec["state_dir"]),
        image_root=spec["image_root"].encode(),
        director_root=spec["director_root"].encode(),
    )
    notice = CampaignNotice(
        campaign_id=1,
        vin=spec["vin"],
        nonce=secrets.token_urlsafe(16),
        recall_number="26V-000001",
        title="bench",
        repo_url=spec["repo_url"],
        issued_at=datetime.now(UTC),
    )
    with make_http_client(config.download, max_connections=4) as client:
        link = FakeLink(spec["vin"])
        agent = Agent(config, link=link, transport=HttpxTransport(client, chunk_size=config.download.chunk_size))
        before = memory_kib(os.getpid())
        started = time.perf_counter()
        state = asyncio.run(agent.handle(notice))
        seconds = time.perf_counter() - started
    after = memory_kib(os.getpid())
    last = link.reports[-1]
    return {
        "state": state.value,
        "detail": last.detail,
        "installed_version": last.installed_version,
        "seconds": round(seconds, 1),
        "rss_before_mib": round(before["VmRSS"] / 1024, 1),
        "peak_rss_mib": round(after["VmHWM"] / 1024, 1),
    }


def measure_memory(size: int, workdir: Path) -> dict[str, Any]:
    vin = make_vin("1HG", "CM826", "R", "A", secrets.randbelow(10**6))
    started = time.perf_counter()
    bundle = write_big_bundle(workdir, size)
    bundle_bytes = bundle.stat().st_size
    roots = publish(workdir / "www", bundle, vin)
    prepare_s = time.perf_counter() - started
    server = serve(workdir / "www")
    try:
        spec = {
            "vin": vin,
            "repo_url": f"http://127.0.0.1:{server.server_address[1]}/repo",
            "state_dir": str(workdir / "car"),
            **roots,
        }
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        child = subprocess.run(
            [sys.executable, "-m", "bench.downloads", "--child", str(spec_path)],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        server.shutdown()
    if child.returncode != 0:
        raise RuntimeError(f"agent child failed:\n{child.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(
        {"bundle_bytes": bundle_bytes, "prepare_seconds": round(prepare_s, 1), "target_rss_mib": TARGET_RSS_MIB}
    )
    return result


# -- output -----------------------------------------------------------------------------


def print_tables(result: dict[str, Any]) -> None:
    print("Delta savings (bsdiff4; new image = old image with a few KiB changed + new version header)")
    print(f"{'image':>10} {'full bundle':>12} {'delta':>9} {'ratio':>7} {'saved':>7} {'diff s':>7} {'patch s':>8}")
    for row in result["deltas"]:
        print(
            f"{_size(row['image_bytes']):>10} {row['full_bundle_bytes']:>12,} {row['delta_bytes']:>9,} "
            f"{row['ratio']:>7.3f} {row['saved_percent']:>6.1f}% "
            f"{row['diff_seconds']:>7.2f} {row['patch_seconds']:>8.3f}"
        )
    un = result["unrelated"]
    print(
        f"unrelated {_size(un['image_bytes'])} image: delta {un['delta_bytes']:,} of {un['full_bundle_bytes']:,} "
        f"bytes (ratio {un['ratio']:.2f}) -> kept by the server: {un['kept_by_server']}"
    )
    memory = result.get("memory")
    if memory:
        print()
        print(f"Agent memory, download + install of a {_size(memory['bundle_bytes'])} bundle over local HTTP")
        rows = [
            ("outcome", f"{memory['state']} (installed {memory['installed_version']}) {memory['detail']}".rstrip()),
            ("time in the agent", f"{memory['seconds']:.1f} s"),
            ("resident before the update", f"{memory['rss_before_mib']:.1f} MiB"),
            ("peak resident (VmHWM)", f"{memory['peak_rss_mib']:.1f} MiB (target < {memory['target_rss_mib']:.0f})"),
        ]
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            print(f"{name:<{width}}  {value}")


def _size(n: int) -> str:
    return f"{n // (1 << 30)} GiB" if n >= 1 << 30 else f"{n // (1 << 20)} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle-mib", type=int, default=1024, help="size of the big bundle (0: skip)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_agent(json.loads(args.child.read_text()))))
        return 0
    result: dict[str, Any] = {"deltas": [delta_row(size) for size in DELTA_SIZES], "unrelated": unrelated_row()}
    if args.bundle_mib > 0:
        with tempfile.TemporaryDirectory(prefix="bench-downloads-") as tmp:
            needed = 3 * args.bundle_mib * BLOCK
            if shutil.disk_usage(tmp).free < needed:
                raise SystemExit(f"need {needed >> 20} MiB free in {tmp}")
            result["memory"] = measure_memory(args.bundle_mib * BLOCK, Path(tmp))
    print_tables(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
