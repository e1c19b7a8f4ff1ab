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


# -- one writer of a campaign car's state ------------------------------------------------------

TRANSITIONS = "ota_server/rollout/transitions.py"
_CAR_TABLES = {"CampaignVehicle", "CampaignEvent"}


def _names_in(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        found: list[ast.expr] = []
        for target in node.targets:
            found += target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
        return found
    if isinstance(node, ast.AugAssign | ast.AnnAssign):
        return [node.target]
    return []


def car_state_writes(source: str) -> list[str]:
    """Where ``source`` writes a campaign car's state or event rows itself (line: what).

    An assignment to an attribute ``state``; ``insert``/``update`` of the car or event table
    (``insert(CampaignEvent)``, ``update(CampaignVehicle)``, ``session.query(CampaignVehicle)...update``);
    a ``CampaignVehicle(...)`` or ``CampaignEvent(...)`` row built by hand.
    """
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        for target in _targets(node):
            if isinstance(target, ast.Attribute) and target.attr == "state":
                found.append(f"{node.lineno}: assigns .state")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in ("insert", "update") and any(_names_in(arg) & _CAR_TABLES for arg in node.args):
            found.append(f"{node.lineno}: {name}() of a car table")
        elif name == "update" and isinstance(func, ast.Attribute):
            # ``session.query(CampaignVehicle).filter(...).update(...)``: the chain names the table
            chain = func.value
            while isinstance(chain, ast.Call | ast.Attribute):
                if isinstance(chain, ast.Call):
                    queried = isinstance(chain.func, ast.Attribute) and chain.func.attr == "query"
                    if queried and any(_names_in(arg) & _CAR_TABLES for arg in chain.args):
                        found.append(f"{node.lineno}: query().update() of a car table")
                    chain = chain.func
                else:
                    chain = chain.value
        elif name in _CAR_TABLES:
            found.append(f"{node.lineno}: builds a {name} row")
    return found


def test_transitions_is_the_only_writer_of_a_campaign_cars_state() -> None:
    writers = {
        str(path.relative_to(ROOT)): writes
        for path in (ROOT / "ota_server").rglob("*.py")
        if "migrations" not in path.parts and (writes := car_state_writes(path.read_text()))
    }
    assert set(writers) == {TRANSITIONS}, {m: w for m, w in writers.items() if m != TRANSITIONS}


def test_the_writer_scan_sees_each_kind_of_write() -> None:
    """The scan above is only as good as what it recognises: each form a module could use."""
    forms = [
        "cv.state = 'failed'",
        "cv.state, cv.reason = dst, None",
        "session.execute(insert(CampaignEvent), rows)",
        "session.execute(update(CampaignVehicle).where(x).values(notified_at=now))",
        "session.query(CampaignVehicle).filter(x).update({CampaignVehicle.state: 'failed'})",
        "session.add(CampaignEvent(vin=v))",
        "session.add(CampaignVehicle(vin=v))",
    ]
    for form in forms:
        assert car_state_writes(form), form
    assert not car_state_writes("campaign.status = 'paused'\nselect(CampaignVehicle.state)\nx = cv.state")


def test_routes_act_on_campaigns_only_through_rollout_control() -> None:
    """No route takes the scheduler's lock, asks for a tick or dispatches notices itself."""
    for package in ("ota_server/api", "ota_server/web"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and node.attr in ("scheduler", "dispatch", "exclusive"):
                    raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} uses .{node.attr}")
