"""bench/notify_path: a small launch timed stage by stage, every notice carrying its car's chain."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from bench import notify_path
from ota_server.config import SIGNING_PROCESSES
from ota_server.infra import gctime


@pytest.mark.services
def test_a_small_launch_is_timed_by_stage_and_every_notice_carries_its_chain(tmp_path: Path) -> None:
    out = tmp_path / "notify.json"
    assert notify_path.main(["--cars", "12", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["notices"] == result["carrying_chain"] == 12
    assert result["signing_processes"] == SIGNING_PROCESSES  # the server's default, not the tests' 0
    stages = result["stages"]
    assert stages["sign: chains"]["calls"] == 12  # one chain per car, signed in the notifying tick
    assert stages["notice bytes"]["calls"] == 12  # each notice encoded once, in the tick
    assert "publish encode" not in stages  # and not again to publish it
    assert {"tick", "release", "assign", "sign", "notices", "mark published"} <= set(stages)
    assert stages["release"]["calls"] >= 1
    assert 0 < result["launch_to_first_notice_s"] <= result["launch_to_last_notice_s"]
    assert result["gc_threshold"] == list(gctime.THRESHOLDS)  # timed under the collector `ota serve` sets


@pytest.mark.services
def test_the_collector_is_left_as_it_was(tmp_path: Path) -> None:
    before = gc.get_threshold()
    assert notify_path.main(["--cars", "3", "--json", str(tmp_path / "n.json")]) == 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_more_than_a_shared_machine_takes_is_refused() -> None:
    for wrong in (["--cars", str(notify_path.MAX_CARS + 1)], ["--signing-processes", "-1"]):
        with pytest.raises(SystemExit):
            notify_path.main(wrong)
