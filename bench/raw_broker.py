"""The brokers' raw capacity: Mosquitto's own clients push the fleet's message count through them.

``mosquitto_pub -l`` processes (QoS 1, one message per line of a prepared file, so no
Python runs while it is measured) publish into the leaves, as many messages of the same
size as the cars sent reports, spread over the leaves as the cars were; one
``mosquitto_sub -C <count>`` on the hub, subscribed to ``ota-bench/raw/#`` (bridged like
the status topics), exits when the last one arrives. Messages per second = count /
(first publisher started -> subscriber done): the path the reports took
(leaf -> bridge -> hub -> subscriber) with nothing else competing for the machine.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulator.brokers import RAW_PREFIX, Broker, mosquitto_tool

SUBSCRIBE_SETTLE_S = 1.0


@dataclass(frozen=True)
class RawResult:
    messages: int
    payload_bytes: int
    publishers: int
    seconds: float | None
    msgs_per_second: float | None
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "payload_bytes": self.payload_bytes,
            "publishers": self.publishers,
            "seconds": self.seconds,
            "msgs_per_second": self.msgs_per_second,
            "note": self.note,
        }


def split(count: int, parts: int) -> list[int]:
    size, extra = divmod(count, parts)
    return [size + (1 if i < extra else 0) for i in range(parts)]


def raw_capacity(
    hub: Broker,
    leaves: list[Broker],
    messages: int,
    payload_bytes: int,
    workdir: Path,
    *,
    publishers_per_leaf: int = 2,
    timeout: float = 600.0,
) -> RawResult:
    """Publish ``messages`` of ``payload_bytes`` into ``leaves`` and time their arrival on ``hub``."""
    pub, sub = mosquitto_tool("mosquitto_pub"), mosquitto_tool("mosquitto_sub")
    publishers = len(leaves) * publishers_per_leaf
    if pub is None or sub is None:
        return RawResult(messages, payload_bytes, 0, None, None, "mosquitto_pub/mosquitto_sub not installed")
    if messages < 1 or not leaves:
        return RawResult(messages, payload_bytes, 0, None, None, "nothing to send")
    workdir.mkdir(parents=True, exist_ok=True)
    line = b"x" * max(1, payload_bytes) + b"\n"
    shares = split(messages, publishers)
    files = []
    for i, share in enumerate(shares):
        path = workdir / f"raw-{i}.txt"
        with path.open("wb") as out:
            for _ in range(share):
                out.write(line)
        files.append(path)
    subscriber = subprocess.Popen(
        [sub, "-h", hub.host, "-p", str(hub.port), "-t", f"{RAW_PREFIX}/#", "-q", "1", "-C", str(messages)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    running: list[subprocess.Popen[bytes]] = []
    try:
        time.sleep(SUBSCRIBE_SETTLE_S)
        started = time.monotonic()
        for i, path in enumerate(files):
            leaf = leaves[i % len(leaves)]
            with path.open("rb") as lines:
                command = [pub, "-h", leaf.host, "-p", str(leaf.port), "-q", "1", "-l"]
                running.append(
                    subprocess.Popen(
                        [*command, "-t", f"{RAW_PREFIX}/{leaf.name}/{i}"],
                        stdin=lines,
                        stderr=subprocess.DEVNULL,
                    )
                )
        try:
            subscriber.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return RawResult(messages, payload_bytes, publishers, None, None, f"not all arrived in {timeout:.0f}s")
        seconds = time.monotonic() - started
        if subscriber.returncode != 0:
            error = (subscriber.stderr.read() if subscriber.stderr else b"").decode(errors="replace").strip()
            return RawResult(messages, payload_bytes, publishers, None, None, f"mosquitto_sub failed: {error}")
        return RawResult(messages, payload_bytes, publishers, round(seconds, 3), round(messages / seconds, 1))
    finally:
        for process in [*running, subscriber]:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        for path in files:
            path.unlink(missing_ok=True)
