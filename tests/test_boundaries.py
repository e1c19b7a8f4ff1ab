"""The package boundaries of docs/architecture.md, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(package: str, *, top_level_only: bool = False) -> dict[str, set[str]]:
    """Map each module file of ``package`` to the top-level packages it imports."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        names: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_contract_imports_neither_side() -> None:
    for module, names in imported_packages("firmware_bundles").items():
        assert not names & {"ota_server", "vehicle_agent", "simulator", "sqlalchemy", "fastapi", "aiomqtt", "httpx"}, (
            module
        )


def test_agent_never_imports_the_server() -> None:
    for module, names in imported_packages("vehicle_agent").items():
        assert not names & {"ota_server", "simulator", "sqlalchemy", "fastapi"}, module


def test_server_never_imports_the_agent() -> None:
    for module, names in imported_packages("ota_server").items():
        assert "vehicle_agent" not in names, module
        if module != "ota_server/cli/main.py":
            assert "simulator" not in names, module
    # and the one exception, `ota demo`, imports the simulator lazily, inside the command
    assert "simulator" not in imported_packages("ota_server", top_level_only=True)["ota_server/cli/main.py"]
