"""The operator's desk in a real browser: actions with the login cookie and its CSRF token.

One server process (embedded broker, SQLite) and a registered fleet whose cars never answer,
so the campaign stays live: its first wave's cars are notified, the rest wait. An approver
approves the safety recall's launch from the campaigns page; an operator pauses and resumes
it from its page (a confirm dialog with a reason each time), records a dealer outcome and
filters the car table, whose CSV download is the API's rows; a viewer sees no action at all,
and the cookie alone (no CSRF token) cannot write.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from simulator.fleet import Fleet, make_fleet
from simulator.operator_client import OperatorClient
from simulator.scenario import (
    OWNER_NOTICE,
    ScenarioOptions,
    register_fleet,
    upload_fix,
    upload_installed,
)
from simulator.server_process import ServerProcess
from tests.browser.conftest import VIEWPORT, PageProblems, shot
from tests.e2e.conftest import _without_service_urls

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, ViewportSize

CARS, FIRST_WAVE = 12, 4
RECALL_NUMBER = "26V-778002"
PHONE: ViewportSize = {"width": 390, "height": 844}
ROLES = {"sam-colleague": "operator", "sam": "approver", "olga": "operator", "vera": "viewer"}


def _recall(number: str, release_id: int, fleet: Fleet, rollout: dict[str, Any]) -> dict[str, Any]:
    return {
        "campaign_number": number,
        "title": "Brake assist software may disengage at low speed",
        "defect": "The brake assist software may disengage below 10 km/h.",
        "safety_risk": "Longer stopping distance in slow traffic.",
        "remedy": "Over-the-air update of the brake software.",
        "release_id": release_id,
        "population": {"models": [fleet.model], "hardware_id": fleet.hardware_id},
        "owner_notice": OWNER_NOTICE,
        "rollout": {**rollout, "success_threshold_percent": 50},
    }


@dataclass
class Desk:
    base_url: str
    admin: OperatorClient
    fleet: Fleet
    release_id: int
    recall_id: int
    tokens: dict[str, str]  # name -> API token


@pytest.fixture(scope="module")
def desk(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    """A filed safety recall whose launch was requested and awaits a second person."""
    data_dir = tmp_path_factory.mktemp("desk") / "server"
    server = ServerProcess(data_dir, env=_without_service_urls())
    with server as endpoints, OperatorClient(endpoints.api_url, token=server.admin_token()) as admin:
        tokens = {name: admin.create_token(name, role) for name, role in ROLES.items()}
        fleet = make_fleet(CARS, seed=7)
        upload_installed(admin, fleet)
        release = upload_fix(admin, fleet, ScenarioOptions())
        register_fleet(admin, fleet)
        recall = admin.create_recall(
            _recall(RECALL_NUMBER, release["id"], fleet, {"waves": [{"cars": FIRST_WAVE}, {"percent": 100}]})
        )
        with OperatorClient(endpoints.api_url, token=tokens["sam-colleague"]) as requester:
            assert requester.launch(recall["id"])["state"] == "awaiting_approval"  # a safety recall: two people
        yield Desk(endpoints.api_url, admin, fleet, int(release["id"]), int(recall["id"]), tokens)


def _signed_in(browser: Browser, desk: Desk, name: str) -> BrowserContext:
    context = browser.new_context(viewport=VIEWPORT, base_url=desk.base_url, accept_downloads=True)
    page = context.new_page()
    page.goto("/ui/login")
    page.get_by_label("API token").fill(desk.tokens[name])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{desk.base_url}/ui/")
    page.close()
    return context


def _open(browser: Browser, desk: Desk, name: str, path: str) -> tuple[BrowserContext, Page, PageProblems]:
    """``name`` signed in, on the page at ``path``, its console and requests watched."""
    context = _signed_in(browser, desk, name)
    page = context.new_page()
    problems = PageProblems(page, desk.base_url)
    page.goto(path)
    return context, page, problems


def _text(page: Page, selector: str) -> str:
    return (page.text_content(selector) or "").strip()


def _real(errors: list[str]) -> list[str]:
    """Console errors but the browser's own note of a 4xx answer the test provokes on purpose."""
    return [e for e in errors if "Failed to load resource" not in e]


def _campaign_id(desk: Desk) -> int:
    """The live campaign: approved in the browser by the first test, or here when a test runs alone."""
    campaign_id = desk.admin.recall(desk.recall_id)["campaign_id"]
    if campaign_id is None:
        with OperatorClient(desk.base_url, token=desk.tokens["sam"]) as approver:
            campaign_id = approver.approve(desk.recall_id)["id"]
    return int(campaign_id)


def _audit(desk: Desk, actor: str) -> list[dict[str, Any]]:
    body = desk.admin.call("GET", "/api/v1/audit", params={"actor": actor})
    entries: list[dict[str, Any]] = body if isinstance(body, list) else body.get("items", body.get("entries", []))
    return sorted((e for e in entries if e["actor"] == actor), key=lambda e: int(e["seq"]))


def _no_sideways_scroll(page: Page) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width[0] <= width[1], f"the page scrolls sideways at {PHONE['width']} px: {width}"


def test_an_approver_approves_the_launch_from_the_campaigns_page(desk: Desk, browser: Browser) -> None:
    context, page, problems = _open(browser, desk, "sam", "/ui/")
    row = page.locator(f'#approval-table tr[data-recall="{desk.recall_id}"]')
    row.wait_for()
    assert RECALL_NUMBER in (row.text_content() or "") and "by sam-colleague at" in (row.text_content() or "")
    row.get_by_role("button", name="Approve launch").click()
    dialog = page.locator("dialog#confirm")
    dialog.wait_for()
    assert "second person" in _text(page, "#confirm-what") and "at once" in _text(page, "#confirm-what")
    dialog.get_by_role("button", name="Approve and launch").click()
    page.locator("#approval-result").filter(has_text="Approved by sam at").wait_for()
    campaign_id = desk.admin.recall(desk.recall_id)["campaign_id"]
    assert f"campaign #{campaign_id} launched." in _text(page, "#approval-result")
    assert desk.admin.recall(desk.recall_id)["launch_request"]["approved_by"] == "sam"
    assert [(e["route"], e["status"]) for e in _audit(desk, "sam")][-1] == ("/api/v1/recalls/{recall_id}/approve", 201)
    assert _real(problems.errors) == [] and problems.foreign == []
    context.close()


def test_an_operator_pauses_and_resumes_from_the_campaign_page(desk: Desk, browser: Browser) -> None:
    campaign_id = _campaign_id(desk)
    context, page, problems = _open(browser, desk, "olga", f"/ui/campaigns/{campaign_id}")
    actions = page.locator("#actions")
    actions.wait_for()
    assert actions.get_by_role("button", name="Resume").is_hidden()  # an active campaign: pause, not resume

    actions.get_by_role("button", name="Pause").click()
    dialog = page.locator("dialog#confirm")
    dialog.wait_for()
    assert _text(page, "#confirm-title") == f"Pause campaign {campaign_id}?"
    dialog.get_by_role("button", name="Pause").click()  # no reason yet: refused in the dialog
    assert dialog.is_visible() and page.eval_on_selector("#reason", "box => box.validity.valueMissing")
    assert desk.admin.campaign(campaign_id)["status"] == "active"
    dialog.get_by_label("Reason").fill("The brake supplier asked us to hold")
    shot(page, "11-confirm-dialog")
    dialog.get_by_role("button", name="Pause").click()
    page.locator("#action-result").filter(has_text="Paused by olga at").wait_for()
    # Outside test (issue 18): "Paused by olga at … · paused by olga: …" and "paused paused by olga" said it twice.
    result = _text(page, "#action-result")
    assert result.endswith(": The brake supplier asked us to hold") and "paused by" not in result, result
    assert desk.admin.campaign(campaign_id)["status"] == "paused"
    page.locator("#subtitle .badge", has_text="paused").wait_for()  # the live page follows
    page.locator("#subtitle", has_text="olga").wait_for()
    subtitle = " ".join(_text(page, "#subtitle").split())
    assert "paused by olga: The brake supplier asked us to hold" in subtitle and "paused paused" not in subtitle

    # The other actions' dialogs say what they act on once ("Cancel campaign campaign 5?" before).
    for button, title in (
        ("Cancel campaign", "Cancel campaign"),
        ("Retry failed cars", "Retry the failed cars of campaign"),
    ):
        actions.get_by_role("button", name=button).click()
        assert _text(page, "#confirm-title") == f"{title} {campaign_id}?"
        dialog.get_by_role("button", name="Back").click()
        assert dialog.is_hidden()

    # Resuming needs no reason (as in the CLI and the API): the field says it is optional.
    actions.get_by_role("button", name="Resume").click()
    assert "optional" in _text(page, "#reason-label")
    dialog.get_by_role("button", name="Resume").click()
    page.locator("#action-result").filter(has_text="Resumed by olga at").wait_for()
    assert desk.admin.campaign(campaign_id)["status_reason"] == "resumed by olga"
    assert desk.admin.campaign(campaign_id)["status"] == "active"
    entries = [(e["route"], e["status"], e["role"]) for e in _audit(desk, "olga")]
    assert entries[-2:] == [
        ("/api/v1/campaigns/{campaign_id}/pause", 200, "operator"),
        ("/api/v1/campaigns/{campaign_id}/resume", 200, "operator"),
    ]
    assert _real(problems.errors) == [] and problems.foreign == []
    context.close()


def test_the_car_table_filters_by_state_and_its_csv_is_the_apis_rows(desk: Desk, browser: Browser) -> None:
    campaign_id = _campaign_id(desk)
    context, page, problems = _open(browser, desk, "olga", f"/ui/campaigns/{campaign_id}")
    table = page.locator("#car-table")
    page.locator("#car-table[data-query='']").wait_for()
    assert table.locator("tbody tr").count() == CARS

    # A dealer outcome for one car, from its row (the cars never answer: every car waits).
    row = table.locator("tbody tr").first
    vin = row.get_attribute("data-vin")
    row.get_by_role("button", name="Outcome…").click()
    dialog = page.locator("dialog#confirm")
    # Outside test (issue 18): it said "The record is final for this car", but a dealer remedy may follow.
    said = _text(page, "#confirm-what")
    assert "final" not in said and "replacing an earlier outcome" in said and "audit log" in said
    dialog.get_by_label("Outcome").select_option("remedied_at_dealer")
    dialog.get_by_label("Evidence").fill("Brake software reflashed at dealer 0815")
    dialog.get_by_label("Reference").fill("RO-5521")
    dialog.get_by_role("button", name="Record").click()
    page.locator("#action-result").filter(has_text=f"Remedied at a dealer: {vin} recorded by olga at").wait_for()
    assert desk.admin.campaign_vehicles(campaign_id, {"vin": vin})[0]["state"] == "remedied_at_dealer"
    assert _audit(desk, "olga")[-1]["target"]["outcome"] == "remedied_at_dealer"

    for state, expected in (("remedied_at_dealer", 1), ("pending", None)):
        page.get_by_label("State", exact=True).select_option(state)
        page.get_by_role("button", name="Filter").click()
        page.locator(f"#car-table[data-query='state={state}']").wait_for()
        shown = table.locator("tbody tr").evaluate_all("rows => rows.map(r => [r.dataset.vin, r.dataset.state])")
        api_rows = desk.admin.campaign_vehicles(campaign_id, {"state": state})
        assert shown == [[r["vin"], state] for r in api_rows] and 0 < len(shown) < CARS
        assert expected is None or len(shown) == expected
    first = table.locator("tbody tr").first
    assert first.locator("a").get_attribute("href") == f"/ui/vehicles/{api_rows[0]['vin']}"
    # The filter is in the page's address: the link opens the same filtered table (outside test, issue 18).
    assert page.url.endswith(f"/ui/campaigns/{campaign_id}?state=pending"), page.url
    linked = context.new_page()
    linked.goto(page.url)
    linked.locator("#car-table[data-query='state=pending']").wait_for()
    assert linked.locator("#car-table tbody tr").count() == len(api_rows)
    linked.close()

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename == f"campaign-{campaign_id}-vehicles.csv"
    downloaded = Path(download.path()).read_bytes()
    assert downloaded == desk.admin.campaign_vehicles_csv(campaign_id, {"state": "pending"})
    rows = list(csv.DictReader(io.StringIO(downloaded.decode())))
    api_cells = [(r["vin"], r["state"], str(r["wave"])) for r in api_rows]
    assert [(r["vin"], r["state"], r["wave"]) for r in rows] == api_cells

    # the group word: failed, rolled back or timed out (the API's state=errors); no car has failed here
    page.get_by_label("State", exact=True).select_option(label="errors (failed, rolled back, timed out)")
    page.get_by_role("button", name="Filter").click()
    page.locator("#car-table[data-query='state=errors']").wait_for()
    shown = table.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.vin)")
    assert shown == [r["vin"] for r in desk.admin.campaign_vehicles(campaign_id, {"state": "errors"})] == []

    # A deferred car's estimated next look already past says so, not a stale time (outside test, issue 18).
    later, gone = (datetime.now(UTC) + timedelta(minutes=3)).isoformat(), "2020-01-01T00:00:00Z"
    said = page.evaluate(
        "(ats) => ats.map((at) => nextTry({next_try_at: at, next_try_basis: 'agent_recheck_estimate'}))",
        [later, gone],
    )
    assert said[0].startswith("about ") and said[1] == "at its next check", said

    page.get_by_label("State", exact=True).select_option("")
    page.get_by_role("button", name="Filter").click()
    page.locator("#car-table[data-query='']").wait_for()
    shot(page, "12-campaign-operator")
    assert _real(problems.errors) == [] and problems.foreign == []

    phone = context.new_page()
    phone.set_viewport_size(PHONE)
    phone.goto(f"/ui/campaigns/{campaign_id}")
    phone.locator("#car-table[data-query='']").wait_for()
    phone.locator("#actions").wait_for()
    _no_sideways_scroll(phone)
    shot(phone, "13-campaign-operator-phone")
    context.close()


def test_a_viewer_sees_no_action_and_the_cookie_alone_cannot_write(desk: Desk, browser: Browser) -> None:
    campaign_id = _campaign_id(desk)
    context, page, problems = _open(browser, desk, "vera", f"/ui/campaigns/{campaign_id}")
    page.locator("#car-table[data-query='']").wait_for()
    page.locator("#live.on").wait_for()
    assert page.locator("#actions").is_hidden()
    assert page.get_by_role("button", name="Pause").count() == 0  # hidden buttons are not in the tree
    assert page.get_by_role("button", name="Outcome…").count() == 0
    assert page.locator(".op-only:visible").count() == 0
    shot(page, "14-campaign-viewer")

    # The cookie without the CSRF token: refused, and nothing changed.
    forged = page.request.post(f"/api/v1/campaigns/{campaign_id}/pause", data={"reason": "forged"})
    assert forged.status == 403 and "X-CSRF-Token" in forged.json()["detail"]
    # The page's own CSRF token with a viewer's cookie: refused by role.
    by_role = page.evaluate(
        """async (id) => {
            const session = await (await fetch("/ui/session")).json();
            const r = await fetch(`/api/v1/campaigns/${id}/pause`, {method: "POST",
                headers: {"Content-Type": "application/json", "X-CSRF-Token": session.csrf_token},
                body: JSON.stringify({reason: "curious"})});
            return [r.status, (await r.json()).detail];
        }""",
        campaign_id,
    )
    assert by_role == [403, "vera has the viewer role; this needs admin or operator"]
    assert desk.admin.campaign(campaign_id)["status"] == "active"
    assert [e["status"] for e in _audit(desk, "vera")] == [403, 403]

    page.goto("/ui/")
    page.locator("#campaigns tbody tr").first.wait_for()
    assert page.get_by_role("button", name="Approve launch").count() == 0
    assert problems.foreign == []  # (its console has the 403s this test provokes)
    context.close()


def test_a_scheduled_campaign_says_when_it_starts_and_its_bars_are_empty(desk: Desk, browser: Browser) -> None:
    starts = (datetime.now(UTC) + timedelta(days=2)).replace(second=0, microsecond=0)
    recall = desk.admin.create_recall(
        _recall(
            "26V-778003", desk.release_id, desk.fleet, {"waves": [{"percent": 100}], "start_at": starts.isoformat()}
        )
    )
    with OperatorClient(desk.base_url, token=desk.tokens["sam-colleague"]) as requester:
        requester.launch(recall["id"])
    when = f"starts at {starts:%Y-%m-%d %H:%M} UTC"
    # Approved in the page: the dialog says when it starts (it said "launches the campaign at once" before).
    context, page, problems = _open(browser, desk, "sam", "/ui/")
    page.locator(f'#approval-table tr[data-recall="{recall["id"]}"]').get_by_role(
        "button", name="Approve launch"
    ).click()
    said = _text(page, "#confirm-what")
    assert when in said and "at once" not in said, said
    page.locator("dialog#confirm").get_by_role("button", name="Approve and launch").click()
    page.locator("#approval-result").filter(has_text=f"launched; it {when}.").wait_for()
    campaign_id = int(desk.admin.recall(recall["id"])["campaign_id"])
    context.close()
    context, page, problems = _open(browser, desk, "olga", "/ui/")
    row = page.locator(f'#campaigns tr[data-campaign="{campaign_id}"]')
    row.wait_for()
    assert when in (row.text_content() or "")
    assert row.locator(".bar span").count() == 0  # nothing in progress: the bar is empty, not full
    page.goto(f"/ui/campaigns/{campaign_id}")
    page.locator("#subtitle .badge", has_text=when).wait_for()
    assert page.locator("#statebar .bar span").count() == 0
    # A car's page says it too, not "active" (outside test, issue 18).
    page.goto(f"/ui/vehicles/{desk.fleet.cars[0].vin}")
    recall_row = page.locator(f'#v-campaigns tr[data-campaign="{campaign_id}"]')
    recall_row.wait_for()
    assert when in (recall_row.text_content() or "") and "active" not in (recall_row.text_content() or "")
    assert _real(problems.errors) == [] and problems.foreign == []
    context.close()
