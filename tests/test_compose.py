"""docker-compose.yml, the Dockerfile and deploy/: the multi-node topology, checked by structure.

No Docker engine runs on the development machines or in CI, so this validates what can be
validated without one; tests/replicas/ runs the same topology natively.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from ota_server.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
NGINX = ROOT / "deploy" / "nginx.conf"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services(compose).items() if re.fullmatch(r"ota-\d+", name)}


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def test_the_topology_is_all_there(compose: dict[str, Any]) -> None:
    names = set(services(compose))
    assert {"postgres", "migrate", "proxy", "emqx1", "emqx2", "minio", "minio-init", "bundle-sync"} <= names
    assert len(replicas(compose)) >= 2


def test_every_replica_runs_the_same_image_waits_for_the_schema_and_checks_readiness(compose: dict[str, Any]) -> None:
    migrate = services(compose)["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    images = {migrate["image"]}
    client_ids = set()
    for name, replica in replicas(compose).items():
        images.add(replica["image"])
        assert replica["command"][0] == "serve", name
        assert replica["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy", name
        assert "/readyz" in " ".join(replica["healthcheck"]["test"]), name
        settings = env(replica)
        assert settings["OTA_AUTO_MIGRATE"] in ("0", "false"), name  # the migrate job owns the schema
        assert settings["OTA_MQTT_SHARE_GROUP"] == "ota-ingest" and settings["OTA_MQTT_VERSION"] == "5", name
        assert (
            settings["OTA_DATABASE_URL"].startswith("postgresql+psycopg://")
            and "@postgres:" in settings["OTA_DATABASE_URL"]
        ), name
        assert settings["OTA_MQTT_URL"].split("//")[1].split(":")[0] in services(compose), name
        client_ids.add(settings["OTA_MQTT_CLIENT_ID"])
        assert "ota-data:/var/lib/ota" in replica["volumes"], name  # keys, CA and bundles shared
    assert len(images) == 1  # one image for every replica and the migrate job
    assert len(client_ids) == len(replicas(compose))  # each replica its own MQTT session


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if service.get("restart") == "no":  # one-shot jobs: migrate, minio-init
            continue
        assert "healthcheck" in service, name
        assert service["healthcheck"]["test"], name


def test_dependencies_name_services_and_conditions_that_exist(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    for name, service in all_services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in all_services, (name, dependency)
            condition = rule["condition"]
            assert condition in ("service_healthy", "service_completed_successfully", "service_started"), name
            if condition == "service_healthy":
                assert "healthcheck" in all_services[dependency], (name, dependency)
            if condition == "service_completed_successfully":
                assert all_services[dependency].get("restart") == "no", (name, dependency)


def test_every_ota_variable_is_a_setting(compose: dict[str, Any]) -> None:
    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    used = {key for service in services(compose).values() for key in env(service) if key.startswith(ENV_PREFIX)}
    assert used and used <= known, sorted(used - known)
    # and every one of them parses
    for service in services(compose).values():
        values = {k: v for k, v in env(service).items() if k.startswith(ENV_PREFIX)}
        if values:
            Settings.from_env(values)


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, service in services(compose).items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, (name, source)
    assert {"pgdata", "ota-data", "minio-data"} <= declared


def test_the_proxy_names_every_replica_and_every_broker_node(compose: dict[str, Any]) -> None:
    proxy = services(compose)["proxy"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    config = NGINX.read_text()
    upstream = re.search(r"upstream ota_servers \{(.*?)\}", config, re.S)
    assert upstream is not None
    assert set(re.findall(r"server (ota-\d+):8000", upstream.group(1))) == set(replicas(compose))
    brokers = re.search(r"upstream emqx_cluster \{(.*?)\}", config, re.S)
    assert brokers is not None
    assert set(re.findall(r"server (emqx\d+):1883", brokers.group(1))) == {"emqx1", "emqx2"}
    for name in replicas(compose):
        assert proxy["depends_on"][name]["condition"] == "service_healthy"


def test_the_emqx_nodes_form_one_cluster(compose: dict[str, Any]) -> None:
    nodes = {name: env(s) for name, s in services(compose).items() if name.startswith("emqx")}
    assert len(nodes) >= 2
    names = {settings["EMQX_NODE__NAME"] for settings in nodes.values()}
    assert len(names) == len(nodes)
    for settings in nodes.values():
        assert settings["EMQX_CLUSTER__DISCOVERY_STRATEGY"] == "static"
        seeds = set(settings["EMQX_CLUSTER__STATIC__SEEDS"].strip("[]").split(","))
        assert seeds == names
    assert len({settings["EMQX_NODE__COOKIE"] for settings in nodes.values()}) == 1
    for name, service in services(compose).items():  # node names resolve: each node's alias
        if name in nodes:
            host = env(service)["EMQX_NODE__NAME"].split("@", 1)[1]
            assert host in service["networks"]["default"]["aliases"], name


def test_bundles_go_to_the_bucket_the_replicas_point_cars_at(compose: dict[str, Any]) -> None:
    prefixes = {env(r)["OTA_BUNDLE_URL_PREFIX"] for r in replicas(compose).values()}
    assert len(prefixes) == 1
    bucket = prefixes.pop().rstrip("/").rsplit("/", 1)[1]
    init = " ".join(services(compose)["minio-init"]["entrypoint"])
    assert f"mc mb --ignore-existing store/{bucket}" in init and f"anonymous set download store/{bucket}" in init
    sync = services(compose)["bundle-sync"]
    assert f"mc mirror --watch --overwrite /var/lib/ota/bundles store/{bucket}" in " ".join(sync["entrypoint"])
    assert "ota-data:/var/lib/ota:ro" in sync["volumes"]


def test_the_dockerfile_builds_the_server_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", dockerfile, re.M)
    assert 'ENTRYPOINT ["ota"]' in dockerfile
    assert "/readyz" in dockerfile
    # the server and the contract, each its own wheel (tests/packaging/test_wheels.py builds the same
    # projects); never the agent, the simulator or the bench
    copied = re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, re.M)
    assert sorted(copied) == ["firmware_bundles", "ota_server", "packaging/firmware-bundles", "packaging/ota-server"]
    assert "pip wheel --no-cache-dir --no-deps -w /wheels packaging/firmware-bundles packaging/ota-server" in dockerfile
    assert "pip install /tmp/wheels/ota_firmware_bundles-*.whl /tmp/wheels/ota_server-*.whl" in dockerfile
    instructions = "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
    for absent in ("vehicle_agent", "vehicle-agent", "simulator", "bench", "pip install ."):
        assert absent not in instructions, absent
