"""`bench.agent_cost`: the real agent's own CPU per car, and where the fleet bench keeps the cars' state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import agent_cost
from bench.fleet import RAM_DIR, Options, car_state_parent


def test_every_car_is_remedied_through_the_whole_pipeline(tmp_path: Path) -> None:
    result = agent_cost.run(3, 8 * 1024, tmp_path, None)
    assert result["remedied"] == 3
    # both repositories' root probe, timestamp, snapshot and targets, then the bundle
    assert result["requests"] == 9 * 3
    # notified .. remedied, each one signed
    assert result["reports"] == 6 * 3
    assert result["cpu_ms_per_car"] > 0
    assert result["state_bytes_per_car"] > 8 * 1024  # at least the installed image in its slot


def test_with_carried_metadata_each_car_asks_only_for_its_roots_and_its_bundle(tmp_path: Path) -> None:
    """As ota-bench's cars: the notice carries both repositories' timestamp, snapshot and targets."""
    result = agent_cost.run(3, 8 * 1024, tmp_path, None, carry=True)
    assert result["remedied"] == 3 and result["carried_metadata"] is True
    assert result["requests"] == 3 * 3  # the two root probes and the bundle
    assert result["reports"] == 6 * 3


def test_the_floor_follows_from_the_measured_cpu_unrounded(tmp_path: Path) -> None:
    """The figures come from one measurement (a fake process clock here); only the table rounds them.

    Rounding the CPU per car and the floor separately made the two disagree by up to 0.125 s.
    """
    readings = iter([10.0, 10.0343])
    result = agent_cost.run(3, 4096, tmp_path, None, cpu_clock=lambda: next(readings))
    assert result["cpu_ms_per_car"] == pytest.approx(1000 * 0.0343 / 3)
    assert result["floor_seconds_for_30000_cars"] == pytest.approx(
        30_000 * result["cpu_ms_per_car"] / 1000 / result["cores"]
    )


def test_main_writes_json_and_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cost.json"
    assert (
        agent_cost.main(["--cars", "2", "--image-bytes", "4096", "--state-dir", str(tmp_path), "--json", str(out)]) == 0
    )
    assert json.loads(out.read_text())["remedied"] == 2
    assert "agent CPU per car" in capsys.readouterr().out


def test_a_given_car_state_dir_is_used(tmp_path: Path) -> None:
    assert car_state_parent(Options(cars=10, car_state_dir=tmp_path), tmp_path / "work") == (tmp_path, "as given")


def test_cars_state_goes_to_ram_only_when_it_fits(tmp_path: Path) -> None:
    work = tmp_path / "work"
    if not RAM_DIR.is_dir():
        assert car_state_parent(Options(cars=10), work)[0] == work
        return
    assert car_state_parent(Options(cars=10), work)[0] == RAM_DIR
    too_many = Options(cars=10**9)  # 300 TiB: no tmpfs has room
    parent, why = car_state_parent(too_many, work)
    assert parent == work and "needed" in why
