"""The car's wheels carry the contract and the agent and depend only on what those import.

`make agent-wheel` builds ota-firmware-bundles and ota-vehicle-agent from packaging/*/pyproject.toml
(their sources are the repository's package directories); ota-server is the Docker image's.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .wheels import ROOT, SERVER_ONLY, build, entry_points, files, metadata

OWN = {"firmware_bundles", "vehicle_agent", "ota_server", "simulator", "bench"}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("wheels"), "ota-firmware-bundles", "ota-vehicle-agent", "ota-server")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requires(wheel: Path) -> dict[str, Requirement]:
    return {_canonical(r.name): r for r in map(Requirement, metadata(wheel).get_all("Requires-Dist") or [])}


def _imported_distributions(package: str) -> set[str]:
    """The distributions whose modules ``package`` imports (anywhere, lazy imports included)."""
    modules: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"__future__"}
    owners = importlib.metadata.packages_distributions()
    found = {_canonical(owners[m][0]) for m in third_party - OWN}
    found |= {f"ota-{m.replace('_', '-')}" for m in third_party & OWN - {package}}
    return found


@pytest.mark.parametrize(
    ("project", "package"), [("ota-firmware-bundles", "firmware_bundles"), ("ota-vehicle-agent", "vehicle_agent")]
)
def test_each_car_wheel_requires_exactly_what_its_package_imports(
    wheels: dict[str, Path], project: str, package: str
) -> None:
    requires = set(_requires(wheels[project]))
    assert requires == _imported_distributions(package)


def test_the_agent_wheel_holds_none_of_the_server_s_packages(wheels: dict[str, Path]) -> None:
    for project in ("ota-firmware-bundles", "ota-vehicle-agent"):
        assert not set(_requires(wheels[project])) & set(SERVER_ONLY), project
        top = {name.split("/")[0] for name in files(wheels[project]) if ".dist-info/" not in name}
        assert top == {project.removeprefix("ota-").replace("-", "_")}, top
    assert "vehicle-agent = vehicle_agent.cli:main" in entry_points(wheels["ota-vehicle-agent"])
    assert str(_requires(wheels["ota-vehicle-agent"])["ota-firmware-bundles"].specifier) == "==0.1.0"


def test_the_server_wheel_holds_the_server_and_leans_on_the_contract(wheels: dict[str, Path]) -> None:
    top = {name.split("/")[0] for name in files(wheels["ota-server"]) if ".dist-info/" not in name}
    assert top == {"ota_server"}  # no agent, simulator or bench
    names = files(wheels["ota-server"])
    for data in (
        "ota_server/migrations/alembic.ini",
        "ota_server/web/pages/owner.html",
        "ota_server/web/static/app.js",
    ):
        assert data in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "ota-firmware-bundles" in _requires(wheels["ota-server"])
    assert "ota = ota_server.cli.main:main" in entry_points(wheels["ota-server"])


def test_the_development_install_pins_the_same_dependencies(wheels: dict[str, Path]) -> None:
    """The root pyproject (one editable install of everything) and the wheels agree on every specifier."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    development = {_canonical(r.name): r for r in map(Requirement, root)}
    for project, wheel in wheels.items():
        for name, requirement in _requires(wheel).items():
            if name.startswith("ota-"):
                continue
            assert name in development, f"{project} needs {name}, the root pyproject.toml does not list it"
            same = (development[name].specifier, development[name].marker, development[name].extras)
            assert same == (requirement.specifier, requirement.marker, requirement.extras), (project, name)


def test_the_versions_agree(wheels: dict[str, Path]) -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    from vehicle_agent.config import AGENT_VERSION

    assert {metadata(w)["Version"] for w in wheels.values()} == {root, AGENT_VERSION}


def test_the_docker_build_stage_has_all_it_needs(tmp_path: Path) -> None:
    """The image's first stage, without Docker: only what it COPYs, then its `pip wheel` command."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    stage = dockerfile.split("FROM ")[1]
    for source, target in re.findall(r"^COPY (\S+) \./(\S+)$", stage, re.M):
        shutil.copytree(ROOT / source, tmp_path / target, ignore=shutil.ignore_patterns("__pycache__"))
    command = re.search(r"^RUN (pip wheel .*)$", stage, re.M)
    assert command is not None
    argv = [sys.executable, "-m", *command.group(1).replace("/wheels", str(tmp_path / "wheels")).split()]
    subprocess.run(argv, cwd=tmp_path, check=True, capture_output=True, timeout=600)
    built = sorted(p.name for p in (tmp_path / "wheels").iterdir())
    assert built == ["ota_firmware_bundles-0.1.0-py3-none-any.whl", "ota_server-0.1.0-py3-none-any.whl"]
