"""The app in a real headless Chromium: an example runs and every result panel appears.

Saves `test-artifacts/app.png` (a full-page screenshot) for a person to look at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_app import DEMO_PROMPTS, DEMO_WEIGHTS, Served, demo_examples, start_app

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
    pytest.mark.skipif(
        not (DEMO_WEIGHTS.exists() and DEMO_PROMPTS.exists()),
        reason="the bundled ioi-demo model is not trained yet",
    ),
]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    running = start_app()
    yield running
    running.demo.close()


@pytest.fixture(scope="module")
def page(served: Served):
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(served.url)
        tab.wait_for_selector("#tt-run")
        yield tab
        browser.close()


def test_an_example_runs_and_every_panel_appears(page) -> None:
    example = demo_examples()[0]
    page.locator("#tt-examples").get_by_text(f"{example['name']} · ioi-demo").click()

    # Highlighted tokens: one box per prompt token plus the target, the target marked.
    page.wait_for_selector("#tt-tokens .tt-target")
    assert page.input_value("#tt-prompt textarea") == example["text"]
    tokens = page.locator("#tt-tokens .tt-tok:not(.tt-target)")
    assert tokens.count() >= len(example["text"].split(" "))
    target = page.locator("#tt-tokens .tt-target .tt-text").inner_text()
    assert target.strip() == example["answer"].strip()
    assert "logit(" in page.inner_text("#tt-summary")

    # The table and the charts.
    page.locator("#tt-table [role=gridcell]").first.wait_for()
    page.wait_for_selector("#tt-heatmap .js-plotly-plot")
    page.wait_for_selector("#tt-layers .js-plotly-plot")
    page.wait_for_selector("#tt-scatter .js-plotly-plot")

    # A feature row opens the bundled model's offline feature card.
    page.get_by_label("Features only").check()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#tt-table [role=gridcell]')]"
        ".every(cell => cell.innerText.trim() !== 'error')"
    )
    cells = page.locator("#tt-table [role=gridcell]")
    cells.filter(has_text=re.compile(r"^\s*feature\s*$")).first.click()
    page.wait_for_selector("#tt-panel .tt-card")
    assert "Top-activating contexts" in page.inner_text("#tt-panel")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)


def test_a_bad_prompt_shows_an_error_in_the_page(page) -> None:
    page.fill("#tt-prompt textarea", "   ")
    page.click("#tt-run")
    toast = page.get_by_text("The prompt is empty")
    toast.first.wait_for()
    assert toast.first.is_visible()
