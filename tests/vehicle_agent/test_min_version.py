"""A recall's minimum release counter: the car refuses images below it, now and in later campaigns."""

from __future__ import annotations

from tuf.api.metadata import TargetFile

from firmware_bundles import repo_paths
from firmware_bundles.messages import FailureReason, ReportState
from firmware_bundles.uptane import Expiry, RepoVersions, director_target, publish_targets

from .conftest import Car
from .fakes import OLD, REPO, SERIAL, VIN, FakeServer

S = ReportState
R = FailureReason


def assign_with_floor(server: FakeServer, target: TargetFile, floor: int) -> None:
    """What the server's Director signs for a recall with ``min_release_counter``."""
    director = {target.path: director_target(target, VIN, SERIAL, min_release_counter=floor)}
    previous = server.director_versions.get(VIN, RepoVersions())
    versions, files = publish_targets(
        director, server.director_signers, Expiry(), server.now, previous, extra={"vin": VIN}
    )
    server.director_versions[VIN] = versions
    server.serve_director(files)


async def test_an_image_below_its_recalls_minimum_is_refused(car: Car, server: FakeServer) -> None:
    assign_with_floor(server, server.release("2.0", 2), floor=4)  # a Director that contradicts itself
    assert await car.agent.handle(server.notice(1)) is S.FAILED
    assert car.link.reports[-1].reason is R.BELOW_MINIMUM_VERSION
    assert "below the recall's minimum 4" in car.link.reports[-1].detail
    car.assert_untouched()


async def test_the_floor_is_kept_and_a_later_campaign_below_it_is_refused(car: Car, server: FakeServer) -> None:
    fix = server.release("5.0", 5)
    url = repo_paths.targets_url(REPO) + fix.path
    genuine = server.transport.files.pop(url)  # the first attempt fails (a 404), the floor stays
    assign_with_floor(server, fix, floor=5)
    assert await car.agent.handle(server.notice(1)) is S.FAILED
    assert car.agent.journal.data.installed[SERIAL][0] == OLD

    car.build()  # a restart: the floor was journaled with the failure
    assert car.agent.journal.data.floors == {SERIAL: 5}
    server.assign({SERIAL: server.release("3.0", 3)})  # above what runs, below the recall's minimum
    assert await car.agent.handle(server.notice(2)) is S.FAILED
    last = car.link.reports[-1]
    assert last.reason is R.BELOW_MINIMUM_VERSION
    assert "below the minimum 5 an earlier recall set" in last.detail
    car.assert_untouched()

    server.transport.files[url] = genuine
    assign_with_floor(server, fix, floor=5)
    assert await car.agent.handle(server.notice(3)) is S.REMEDIED
    assert car.running_version() == "5.0"
