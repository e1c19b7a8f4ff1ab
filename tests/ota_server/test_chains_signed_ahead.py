"""A safety recall's chains are signed while its launch waits for the second person (issue 19).

The approval's tick then sends chains signed at the request, but only those that are exactly what
it would sign now: a car whose chain moved, a rotated key, an approval too late for the chains'
expiry, or a plan that does not notify every car at once, and the chain is signed at the approval,
as before. Every car verifies what it is sent either way.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Timestamp

from firmware_bundles import topics
from firmware_bundles.messages import parse_notice
from firmware_bundles.uptane import Expiry, RepoVersions, RoleSigners, image_target
from ota_server.signing.chains import ChainOrder, sign_chain
from ota_server.signing.prepared import PreparedChains, fresh
from ota_server.signing.signing_pool import keyids_of
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import provision, recall_body, upload, vehicle, vin
from tests.ota_server.test_director_reads import ReaderTransport, _car
from vehicle_agent.verifier import Verifier

CARS = [vin(n) for n in range(1, 5)]
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
IMAGE = image_target("bundles/ecu/1.1.0.otab", 4096, "ab" * 32, "ecu", "1.1.0", 3)


class Request(NamedTuple):
    approve: str  # the approve URL
    approver: dict[str, str]  # an approver's headers
    at: datetime  # when it was requested


async def _requested(env: Env, **plan: Any) -> Request:
    """A safety recall of :data:`CARS` whose launch an operator requested and whose signing ahead has
    finished."""
    at = env.clock()
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(v) for v in CARS]})
    assert resp.status_code == 201, resp.text
    await provision(env.client, CARS)
    release = (await upload(env.client)).json()
    body = recall_body(release["id"]) | {"safety_recall": True} | ({"rollout": plan} if plan else {})
    recall = (await env.client.post("/api/v1/recalls", json=body)).json()
    operator = await env.headers_for("olga", "operator")
    approver = await env.headers_for("sam", "approver")
    resp = await env.client.post(f"/api/v1/recalls/{recall['id']}/launch", headers=operator)
    assert resp.status_code == 202, resp.text
    await _preparations_done(env)
    return Request(f"/api/v1/recalls/{recall['id']}/approve", approver, at)


async def _preparations_done(env: Env) -> None:
    await env.runtime.rollout.preparations.wait()


async def _approve(env: Env, request: Request) -> None:
    resp = await env.client.post(request.approve, headers=request.approver)
    assert resp.status_code == 201, resp.text
    await env.runtime.dispatcher.idle()


def _timestamp(env: Env, car: str) -> Timestamp:
    (published,) = env.publisher.on(topics.campaign_topic(car))
    carried = parse_notice(published.payload).director_metadata
    assert carried is not None
    return Metadata[Timestamp].from_bytes(carried.timestamp.encode()).signed


def _verified(env: Env, car: str, tmp_path: Path) -> list[str]:
    (published,) = env.publisher.on(topics.campaign_topic(car))
    carried = parse_notice(published.payload).director_metadata
    assert carried is not None
    verified = Verifier(_car(env, car, tmp_path / car), ReaderTransport(env.runtime.repo_reader)).verify(carried)
    return [a.ecu_serial for a in verified.assignments]


@pytest.fixture
async def carrying(tmp_path: Path) -> Any:
    async with running(make_settings(tmp_path / "server", notice_carries_metadata=True)) as env:
        env.clock.now = datetime.now(UTC).replace(microsecond=0)  # the agent checks expiry against the real time
        yield env


async def test_the_approval_sends_the_chains_signed_at_the_request_and_the_cars_verify_them(
    carrying: Env, tmp_path: Path
) -> None:
    env = carrying
    request = await _requested(env)
    assert len(env.runtime.director.prepared) == len(CARS)
    assert env.runtime.rollout.preparations.chains == len(CARS)
    env.clock.advance(3600)  # the second person approves an hour later
    await _approve(env, request)
    for car in CARS:
        timestamp = _timestamp(env, car)
        assert timestamp.expires == request.at + Expiry().timestamp  # signed at the request, not now
        assert timestamp.version == 1
        assert _verified(env, car, tmp_path) == [f"S-{car[-6:]}"]
    assert len(env.runtime.director.prepared) == 0  # each taken once
    metrics = (await env.client.get("/metrics")).text
    assert "ota_launch_preparations_total 1.0" in metrics
    assert "ota_director_chains_ahead 0.0" in metrics


async def test_a_car_whose_chain_moved_after_the_request_is_signed_at_the_approval(
    carrying: Env, tmp_path: Path
) -> None:
    env = carrying
    request = await _requested(env)
    moved = CARS[0]
    env.clock.advance(60)
    with env.runtime.sessions() as session:  # its chain moves on (as a consent or a refresh would move it)
        env.runtime.director.signed_now(session, {moved: {}}, env.clock()).write(session)
        session.commit()
    env.clock.advance(60)
    await _approve(env, request)
    timestamp = _timestamp(env, moved)
    assert timestamp.expires == env.clock() + Expiry().timestamp  # signed anew, after the chain it moved to
    assert timestamp.version == 2
    assert _verified(env, moved, tmp_path) == [f"S-{moved[-6:]}"]
    for car in CARS[1:]:
        assert _timestamp(env, car).expires == request.at + Expiry().timestamp


async def test_an_approval_after_half_the_timestamps_lifetime_signs_everything_anew(carrying: Env) -> None:
    env = carrying
    request = await _requested(env)
    env.clock.advance(Expiry().timestamp.total_seconds() * 0.6)  # the chains would be re-signed on the first fetch
    await _approve(env, request)
    for car in CARS:
        assert _timestamp(env, car).expires == env.clock() + Expiry().timestamp


async def test_asking_again_while_the_request_waits_signs_nothing_again(carrying: Env) -> None:
    env = carrying
    request = await _requested(env)
    again = await env.client.post(
        request.approve.replace("/approve", "/launch"), headers=await env.headers_for("olga2", "operator")
    )
    assert again.status_code == 202, again.text
    await _preparations_done(env)
    assert env.runtime.rollout.preparations.finished == 1
    assert env.runtime.rollout.preparations.chains == len(CARS)


async def test_a_plan_with_a_canary_wave_signs_nothing_ahead(carrying: Env) -> None:
    env = carrying
    await _requested(env, waves=[{"percent": 25}, {"percent": 100}])
    assert env.runtime.rollout.preparations.finished == 1
    assert env.runtime.rollout.preparations.chains == 0
    assert len(env.runtime.director.prepared) == 0


async def test_without_carried_chains_nothing_is_signed_ahead(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path)) as env:
        await _requested(env)
        assert env.runtime.rollout.preparations.finished == 1
        assert len(env.runtime.director.prepared) == 0


# -- the store's rules, alone --------------------------------------------------------------


@pytest.fixture
def signers() -> RoleSigners:
    key = CryptoSigner.generate_ed25519()
    return RoleSigners(root=[key], targets=[key], snapshot=[key], timestamp=[key])


def _order(serial: int, previous: int = 0, policy: str | None = None) -> ChainOrder:
    return ChainOrder(vin(serial), {"S-1": IMAGE}, RepoVersions(previous, previous, previous), {"S-1": 3}, policy)


def _kept(signers: RoleSigners, orders: list[ChainOrder], limit: int = 100) -> PreparedChains:
    store = PreparedChains(Expiry(), limit=limit)
    store.put(orders, [sign_chain(signers, Expiry(), NOW, order) for order in orders], keyids_of(signers), NOW)
    return store


def test_only_an_equal_order_signed_by_the_current_keys_and_still_fresh_is_taken(signers: RoleSigners) -> None:
    orders = [_order(n) for n in range(1, 6)]
    store = _kept(signers, orders)
    other_key = CryptoSigner.generate_ed25519()
    rotated = RoleSigners(root=[other_key], targets=[other_key], snapshot=[other_key], timestamp=[other_key])
    now = NOW + timedelta(minutes=5)
    taken = store.take([orders[0]], keyids_of(signers), now)
    assert taken == {orders[0].vin: sign_chain(signers, Expiry(), NOW, orders[0])}
    assert store.take([orders[0]], keyids_of(signers), now) == {}  # taken once
    assert store.take([_order(2, previous=1)], keyids_of(signers), now) == {}  # the chain moved
    assert store.take([_order(3, policy="abort_all")], keyids_of(signers), now) == {}  # another plan
    assert store.take([orders[3]], keyids_of(rotated), now) == {}  # a rotated key
    assert store.take([orders[4]], keyids_of(signers), NOW + timedelta(hours=13)) == {}  # due
    assert len(store) == 0  # every one judged was dropped, used or not


def test_two_ecus_of_one_bundle_listed_the_other_way_round_are_another_order(signers: RoleSigners) -> None:
    """The first serial listed gets the bundle in the signed targets: equal mappings, different chains."""
    first = ChainOrder(vin(1), {"A": IMAGE, "B": IMAGE}, RepoVersions(), {"A": 3, "B": 3})
    swapped = ChainOrder(vin(1), {"B": IMAGE, "A": IMAGE}, RepoVersions(), {"A": 3, "B": 3})
    assert first == swapped  # as mappings
    assert sign_chain(signers, Expiry(), NOW, first) != sign_chain(signers, Expiry(), NOW, swapped)
    assert _kept(signers, [first]).take([swapped], keyids_of(signers), NOW) == {}


def test_fresh_means_no_file_due_and_never_signed_in_the_future() -> None:
    assert fresh(NOW, Expiry(), NOW + timedelta(hours=11))
    assert not fresh(NOW, Expiry(), NOW + timedelta(hours=12, seconds=1))
    assert not fresh(NOW, Expiry(), NOW - timedelta(seconds=1))


def test_the_oldest_go_beyond_the_limit_and_the_stale_at_the_next_put(signers: RoleSigners) -> None:
    orders = [_order(n) for n in range(1, 6)]
    store = _kept(signers, orders, limit=3)
    assert len(store) == 3
    later = NOW + timedelta(hours=13)  # the three kept are no longer fresh: a new preparation drops them
    store.put([_order(9)], [sign_chain(signers, Expiry(), later, _order(9))], keyids_of(signers), later)
    assert len(store) == 1
    assert set(store.take(orders, keyids_of(signers), NOW)) == set()


def _preparation(store: PreparedChains, order: ChainOrder, chain: Any, keyids: Any) -> tuple[threading.Thread, Any]:
    """A preparation signing ``order`` in another thread: it puts ``chain`` once ``release`` is set."""
    started, release = threading.Event(), threading.Event()

    def prepare() -> None:
        with store.preparing([order]):
            started.set()
            release.wait(30)
            store.put([order], [chain], keyids, NOW)

    thread = threading.Thread(target=prepare)
    thread.start()
    started.wait(30)
    return thread, release


def test_a_tick_waits_for_the_preparation_signing_its_order(signers: RoleSigners) -> None:
    store = PreparedChains(Expiry())
    order = _order(1)
    chain = sign_chain(signers, Expiry(), NOW, order)
    thread, release = _preparation(store, order, chain, keyids_of(signers))
    threading.Timer(0.1, release.set).start()
    assert store.take([order], keyids_of(signers), NOW) == {order.vin: chain}  # waited, then took it
    thread.join()


def test_others_wanting_the_car_do_not_wait_for_its_preparation(signers: RoleSigners) -> None:
    """Another car, or this car with another order (a consent, another campaign), is not held up."""
    store = PreparedChains(Expiry())
    order = _order(1)
    thread, release = _preparation(store, order, sign_chain(signers, Expiry(), NOW, order), keyids_of(signers))
    answers: list[dict[str, Any]] = []
    asker = threading.Thread(
        target=lambda: answers.append(store.take([_order(2), _order(1, policy="abort_all")], keyids_of(signers), NOW))
    )
    asker.start()
    asker.join(20)  # would wait as long as the preparation (released only below) if it waited
    alive = asker.is_alive()
    release.set()
    thread.join()
    asker.join()
    assert not alive and answers == [{}]


def test_a_preparation_that_never_ends_is_waited_for_once(signers: RoleSigners) -> None:
    store = PreparedChains(Expiry())
    order = _order(1)
    thread, release = _preparation(store, order, sign_chain(signers, Expiry(), NOW, order), keyids_of(signers))
    assert store.take([order], keyids_of(signers), NOW, wait_s=0.05) == {}  # gave up on it
    asker = threading.Thread(target=store.take, args=([order], keyids_of(signers), NOW))  # the default wait
    asker.start()
    asker.join(20)
    alive = asker.is_alive()
    release.set()
    thread.join()
    asker.join()
    assert not alive
