"""The HTML readiness report in a real browser: Debian's Chromium, headless, driven by Playwright.

The page is rendered and screenshotted; every figure on it (per organisation: the counts, the
share ready on the progress bar, the campaign's progress, one point of the SVG trend per day)
must equal the report's JSON, the organisations must come in the JSON's order (those without an
administrator who can act first), and the page must not fetch anything.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from relay_setup import MEMBER_A, MEMBER_B, RELAY, build_relay, run

CHROMIUM = os.environ.get("AUTHSVC_TEST_CHROMIUM", "/usr/bin/chromium")
FIGURES = (
    "accounts_total",
    "ready",
    "without_phone",
    "pending_activation",
    "administrators",
    "ready_administrators",
)
OTHER_FACTORS = ("with_authenticator_app", "with_passkey")
NAMES = {"totp": "application d'authentification", "passkey": "clé d'accès"}


@pytest.fixture
def chromium() -> str:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        reason = f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium package)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: it must be there)")
        pytest.skip(reason)
    return CHROMIUM


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_html_report_shows_the_figures_of_the_json_in_chromium(
    chromium: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from playwright.sync_api import sync_playwright

    build_relay(tmp_path, monkeypatch)
    assert run(["campaign", "start", "--relay", RELAY]) == 0
    assert run(["campaign", "run"]) == 0
    capsys.readouterr()
    assert run(["readiness", "--relay", RELAY, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    page_file = tmp_path / "report.html"
    assert run(["readiness", "--relay", RELAY, "--format", "html", "-o", str(page_file)]) == 0

    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1024, "height": 768})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_file.as_uri())
            shot = page.screenshot(full_page=True, path=str(tmp_path / "report.png"))
            sections = page.locator("section.org")
            assert (
                sections.evaluate_all("s => s.map(e => e.dataset.siret)")
                == [entry["siret"] for entry in report["organizations"]]
                == [MEMBER_A, MEMBER_B]
            )
            assert page.locator('[data-figure="organizations"]').inner_text() == "2"
            for entry in report["organizations"]:
                section = page.locator(f'section[data-siret="{entry["siret"]}"]')
                shown = {
                    key: section.locator(f'[data-figure="{key}"]').inner_text() for key in FIGURES
                }
                assert shown == {key: str(entry[key]) for key in FIGURES}
                share = round(100.0 * entry["ready"] / entry["accounts_total"], 1)
                assert section.locator('[data-figure="ready_percent"]').inner_text() == str(share)
                bar = section.locator('[role="progressbar"]')
                assert bar.get_attribute("aria-valuenow") == str(share)
                # The bar is drawn as wide as the share says (the browser laid it out).
                outer = bar.bounding_box()
                inner = bar.locator("span").bounding_box()
                assert outer is not None and inner is not None
                assert abs(inner["width"] - outer["width"] * share / 100) <= 1.5
                campaign = entry["campaign"]
                for key in ("recipients", "became_ready", "emails_sent"):
                    figure = section.locator(f'[data-figure="campaign_{key}"]').inner_text()
                    assert figure == str(campaign[key])
                points = section.locator("svg.trend circle")
                assert points.count() == len(entry["trend"]) >= 1
                for index, day in enumerate(entry["trend"]):
                    point = points.nth(index)
                    assert point.get_attribute("data-day") == day["day"]
                    assert point.get_attribute("data-ready") == str(day["ready"])
                    assert point.get_attribute("data-total") == str(day["accounts_total"])
                # The other factors, shown apart from the readiness figures.
                others = section.locator("dl.information")
                assert {
                    key: others.locator(f'[data-figure="{key}"]').inner_text()
                    for key in OTHER_FACTORS
                } == {key: str(entry["other_factors"][key]) for key in OTHER_FACTORS}
                assert section.locator("dl:not(.information) [data-figure^='with_']").count() == 0
                rows = section.locator("tbody tr")
                assert rows.count() == len(entry["not_ready"])
                shown_factors = sorted(
                    rows.nth(i).locator("td[data-other-factors]").inner_text()
                    for i in range(rows.count())
                )
                assert shown_factors == sorted(
                    ", ".join(NAMES[kind] for kind in item["other_factors"]) or "—"
                    for item in entry["not_ready"]
                )
                alert = section.locator('[data-figure="without_ready_administrator"]').count()
                assert alert == (1 if entry["without_ready_administrator"] else 0)
            resources = page.evaluate("performance.getEntriesByType('resource').length")
        finally:
            browser.close()
    assert requests == [page_file.as_uri()] and resources == 0  # nothing fetched but the page
    width, height = png_size(shot)
    assert width == 1024 and height > 768  # a full page: two organisations, their tables
    assert len(shot) > 20_000  # drawn, not blank
