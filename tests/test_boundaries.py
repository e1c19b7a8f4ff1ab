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
                found.append(f"{target.lineno}: assigns .state")
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


# -- the server's packages: no cycles, and the forbidden edges absent ---------------------------

# (importer, imported, why): the campaign engine is called by the services and knows no route.
FORBIDDEN = [
    ("rollout", "services", "one way: the services call the engine (its Fleet port they implement)"),
    ("rollout", "api", "the engine knows no route"),
    ("rollout", "web", "the engine knows no page"),
    ("rollout", "http", "the engine knows no server"),
    ("rollout", "cli", "the engine knows no command"),
    ("rollout", "schemas", "the engine speaks domain, not the API's models"),
    ("db", "services", "persistence knows no use case"),
    ("db", "rollout", "persistence knows no engine"),
    ("schemas", "rollout", "the API's models speak domain, below the engine"),
    ("domain", "services", "the vocabulary is below everything"),
    ("domain", "rollout", "the vocabulary is below everything"),
    ("domain", "db", "the vocabulary is pure: no database"),
    ("domain", "schemas", "the vocabulary is below the API's models"),
]


def _unit(module: str) -> str:
    """``ota_server.rollout.coordinator`` -> ``rollout``; ``ota_server.schemas`` -> ``schemas``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def server_import_graph() -> dict[str, dict[str, set[str]]]:
    """Package -> imported package -> the modules importing it (every import, function-local too)."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in (ROOT / "ota_server").rglob("*.py"):
        relative = path.relative_to(ROOT)
        if len(relative.parts) == 2 and relative.name in ("__init__.py", "__main__.py"):
            continue  # the package's own entry points
        source = _unit(".".join(relative.with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                if name.startswith("ota_server.") and (target := _unit(name)) != source:
                    graph.setdefault(source, {}).setdefault(target, set()).add(str(relative))
    return graph


def cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Each cycle once, as the path that closes it (depth-first; a graph of a few dozen nodes)."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, {})):
            if nxt in path:
                loop = [*path[path.index(nxt) :], nxt]
                if (key := frozenset(loop)) not in seen:
                    seen.add(key)
                    found.append(loop)
            elif len(path) < 12:
                walk(nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def test_the_servers_packages_import_each_other_without_cycles() -> None:
    graph = server_import_graph()
    assert {"rollout", "services", "schemas", "db", "api", "http", "mqtt"} <= set(graph)  # the scan sees them
    assert cycles(graph) == [], {" -> ".join(loop): sorted(graph[loop[0]][loop[1]])[:3] for loop in cycles(graph)}


def test_the_forbidden_imports_are_absent() -> None:
    graph = server_import_graph()
    present = [
        f"{src} -> {dst} ({why}): {sorted(graph[src][dst])}" for src, dst, why in FORBIDDEN if dst in graph.get(src, {})
    ]
    assert present == []


def test_the_cycle_and_edge_checks_see_a_cycle() -> None:
    """Today's code has none, so the checks are shown one on a made-up graph."""
    graph = {"rollout": {"services": {"x"}}, "services": {"rollout": {"y"}, "db": {"z"}}}
    assert cycles(graph) == [["rollout", "services", "rollout"]]
    assert cycles({"a": {"b": {"x"}}, "b": {"c": {"y"}}, "c": {"a": {"z"}}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b": {"x"}}, "b": {"c": {"y"}}}) == []
