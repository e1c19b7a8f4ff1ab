"""Launching: frozen population, per-VIN Director metadata that verifies, one retained notice per car."""

from __future__ import annotations

from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from firmware_bundles import topics
from firmware_bundles.messages import parse_notice
from firmware_bundles.uptane import assignments_for, check_image_agrees
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import HW, launched, recall_body, remedied, upload, vehicle, verify, vin


async def _director(
    env: Env, v: str
) -> tuple[Metadata[Root], Metadata[Targets], Metadata[Snapshot], Metadata[Timestamp]]:
    base = f"/repo/director/{v}/metadata/"
    root = Metadata[Root].from_bytes((await env.client.get(base + "1.root.json")).content)
    targets = Metadata[Targets].from_bytes((await env.client.get(base + "targets.json")).content)
    snapshot = Metadata[Snapshot].from_bytes((await env.client.get(base + "snapshot.json")).content)
    timestamp = Metadata[Timestamp].from_bytes((await env.client.get(base + "timestamp.json")).content)
    return root, targets, snapshot, timestamp


async def test_launch_signs_director_metadata_per_vin(env: Env) -> None:
    vins = [vin(n) for n in range(1, 6)]
    campaign = await launched(env.client, vins)
    assert campaign["population"] == 5
    image_targets = Metadata[Targets].from_bytes((await env.client.get("/repo/image/metadata/targets.json")).content)
    for v in vins:
        root, targets, snapshot, timestamp = await _director(env, v)
        verify(root, "targets", targets)
        verify(root, "snapshot", snapshot)
        verify(root, "timestamp", timestamp)
        assert targets.signed.unrecognized_fields["vin"] == v
        [assignment] = assignments_for(targets.signed, v, {f"S-{v[-6:]}": HW})
        assert assignment.version == "1.1.0"
        check_image_agrees(assignment, image_targets.signed.targets[assignment.path])
    # another car's metadata is refused by this car
    _, other, _, _ = await _director(env, vins[1])
    assert other.signed.unrecognized_fields["vin"] != vins[0]


async def test_director_root_is_the_one_in_agent_config(env: Env) -> None:
    v = vin(1)
    await launched(env.client, [v])
    cfg = (await env.client.get(f"/api/v1/vehicles/{v}/agent-config")).json()
    served = await env.client.get(f"/repo/director/{v}/metadata/1.root.json")
    assert served.content == cfg["director_root"].encode()
    assert (await env.client.get(f"/repo/director/{v}/metadata/root.json")).content == served.content


async def test_director_is_404_for_a_vin_without_assignment(env: Env) -> None:
    await env.client.post("/api/v1/vehicles", json=vehicle(vin(7)))
    for name in ("1.root.json", "targets.json"):
        assert (await env.client.get(f"/repo/director/{vin(7)}/metadata/{name}")).status_code == 404


async def test_one_retained_qos1_notice_per_vin(env: Env) -> None:
    vins = [vin(n) for n in range(1, 4)]
    campaign = await launched(env.client, vins)
    await env.runtime.dispatcher.idle()
    assert sorted(m.topic for m in env.publisher.messages) == sorted(topics.campaign_topic(v) for v in vins)
    for message in env.publisher.messages:
        assert message.qos == 1 and message.retain
        notice = parse_notice(message.payload)
        assert notice.campaign_id == campaign["id"]
        assert notice.recall_number == "24V-123"
        assert notice.repo_url == "http://ota.test/repo"
        assert notice.safety_recall is False  # the notice says what the recall says (recall_body)
    nonces = await env.nonces()
    assert len(set(nonces.values())) == 3
    progress = (await env.client.get(f"/api/v1/campaigns/{campaign['id']}/progress")).json()
    assert progress["notices_published"] == 3
    assert progress["counts"]["pending"] == 3


async def test_population_is_frozen_at_launch(env: Env) -> None:
    campaign = await launched(env.client, [vin(1), vin(2)])
    await env.client.post("/api/v1/vehicles", json=vehicle(vin(3)))
    progress = (await env.client.get(f"/api/v1/campaigns/{campaign['id']}/progress")).json()
    assert progress["population"] == 2
    assert sum(progress["counts"].values()) == 2
    got = (await env.client.get(f"/api/v1/campaigns/{campaign['id']}")).json()
    assert got == campaign
    recall = (await env.client.get(f"/api/v1/recalls/{campaign['recall_id']}")).json()
    assert recall["campaign_id"] == campaign["id"]


async def test_relaunch_is_409_and_empty_population_is_422(env: Env) -> None:
    campaign = await launched(env.client, [vin(1)])
    again = await env.client.post(f"/api/v1/recalls/{campaign['recall_id']}/launch")
    assert again.status_code == 409
    empty = await env.client.post(
        "/api/v1/recalls", json=recall_body(campaign["release_id"], "24V-999", models=["Nobody"])
    )
    resp = await env.client.post(f"/api/v1/recalls/{empty.json()['id']}/launch")
    assert resp.status_code == 422
    assert "matches no vehicle" in resp.json()["detail"]
    assert (await env.client.post("/api/v1/recalls/12345/launch")).status_code == 404
    assert (await env.client.get("/api/v1/campaigns/12345/progress")).status_code == 404


async def test_director_versions_only_grow_per_vin(env: Env) -> None:
    v = vin(1)
    first = await launched(env.client, [v])
    _, before, _, ts_before = await _director(env, v)
    # one active update per car: the second campaign reaches the car once the first is done
    await env.inject(remedied(first["id"], v, (await env.nonces())[v]))
    release = await upload(env.client, version="1.2.0", counter=3)
    recall = await env.client.post("/api/v1/recalls", json=recall_body(release.json()["id"], "24V-124"))
    second = await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")
    assert second.status_code == 201 and second.json()["id"] != first["id"]
    _, after, _, ts_after = await _director(env, v)
    assert after.signed.version == before.signed.version + 1
    assert ts_after.signed.version > ts_before.signed.version
    assert next(iter(after.signed.targets.values())).custom["version"] == "1.2.0"
