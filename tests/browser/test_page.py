"""The app in a real headless Chromium: an example runs, every panel appears, and the page behaves
as a new user expects (search on paste, errors clear stale results, headers before a run).

Saves full-page screenshots in `test-artifacts/` for a person to look at.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import ARTIFACTS, Served, demo_examples

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]


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
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = context.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(served.url)
        tab.wait_for_selector("#tt-run")
        yield tab
        browser.close()


def table_rows(page) -> list[str]:
    return page.locator("#tt-table [role=row]").all_inner_texts()[1:]  # the first: headers


def test_before_a_run_the_page_says_what_to_do(page) -> None:
    headers = page.locator("#tt-table [role=columnheader]").all_inner_texts()
    assert "attribution" in " ".join(headers) and "1" not in [h.strip() for h in headers]
    assert "press Trace" in page.inner_text("#tt-summary")
    assert not page.locator("#tt-predictions").is_visible()  # no empty panel floating


def test_an_example_runs_and_every_panel_appears(page) -> None:
    example = demo_examples()[0]
    page.locator("#tt-examples").get_by_text(f"{example['name']} · ioi-demo").click()

    # Highlighted tokens: one box per prompt token plus the target, the target marked.
    page.wait_for_selector("#tt-tokens .tt-target")
    assert page.locator("#tt-predictions").is_visible()
    assert page.input_value("#tt-prompt textarea") == example["text"]
    tokens = page.locator("#tt-tokens .tt-tok:not(.tt-target)")
    assert tokens.count() >= len(example["text"].split(" "))
    target = page.locator("#tt-tokens .tt-target .tt-text").inner_text()
    assert target.strip() == example["answer"].strip()
    summary = page.inner_text("#tt-summary")
    assert "logit(" in summary and f"scores '{example['answer']}'" in summary

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


def test_a_pasted_search_filters_without_a_key_press(page) -> None:
    page.locator("#tt-table [role=gridcell]").first.wait_for()
    assert not all("Sara" in row for row in table_rows(page))
    page.fill("#tt-search textarea, #tt-search input", "Sara")  # no key press: a paste
    page.wait_for_function(
        "() => { const rows = [...document.querySelectorAll('#tt-table [role=row]')].slice(1);"
        " return rows.length > 0 && rows.every(row => row.innerText.includes('Sara')); }"
    )
    page.fill("#tt-search textarea, #tt-search input", "")


def test_a_bad_prompt_shows_an_error_and_clears_the_old_results(page) -> None:
    page.locator("#tt-table [role=gridcell]").first.wait_for()
    page.fill("#tt-prompt textarea", "   ")
    page.click("#tt-run")
    toast = page.get_by_text("The prompt is empty")
    toast.first.wait_for()
    assert toast.first.is_visible()
    page.wait_for_selector("#tt-summary .tt-stale")
    assert page.locator("#tt-tokens .tt-tok").count() == 0
    assert page.locator("#tt-table [role=gridcell]").count() == 0
    assert not page.locator("#tt-predictions").is_visible()
    page.screenshot(path=str(ARTIFACTS / "app-after-error.png"), full_page=True)


def test_unknown_words_show_a_warning_in_the_page(page) -> None:
    example = demo_examples()[0]
    page.fill("#tt-prompt textarea", example["text"].replace(" museum", " Zorblax"))
    page.fill("#tt-answer textarea, #tt-answer input", example["answer"])
    page.click("#tt-run")
    page.wait_for_selector("#tt-summary .tt-warning")
    assert "'Zorblax'" in page.inner_text("#tt-summary .tt-warning")


def run_first_example(page) -> None:
    example = demo_examples()[0]
    page.locator("#tt-examples").get_by_text(f"{example['name']} · ioi-demo").click()
    page.wait_for_function(
        "text => document.querySelector('#tt-prompt textarea').value === text", arg=example["text"]
    )
    page.wait_for_selector("#tt-tokens .tt-target")


def test_the_flow_graph_renders_and_a_node_click_opens_the_feature_panel(page) -> None:
    run_first_example(page)
    page.click("#tt-graph-run")
    page.wait_for_selector("#tt-graph .js-plotly-plot .scatterlayer .point")
    counts = page.evaluate(
        """() => {
          const data = document.querySelector('#tt-graph .js-plotly-plot').data;
          const lines = data.filter(t => t.mode === 'lines');
          return {nodes: data[data.length - 1].customdata.length, lines: lines.length};
        }"""
    )
    assert counts["nodes"] > 10 and counts["lines"] > 0
    assert "edges kept" in page.inner_text("#tt-graph-summary")
    # A real mouse click on a feature's mark opens its card, as a table row does.
    index = page.evaluate(
        """() => {
          const data = document.querySelector('#tt-graph .js-plotly-plot').data;
          const ids = data[data.length - 1].customdata;
          return ids.findIndex(id => { const [layer, feature] = id.split('_');
            return layer !== 'E' && Number(feature) >= 0 && Number(layer) < 3; });
        }"""
    )
    assert index >= 0
    page.locator("#tt-graph .scatterlayer .trace").last.locator(".point").nth(index).click(
        force=True
    )
    page.wait_for_selector("#tt-panel .tt-card")
    page.screenshot(path=str(ARTIFACTS / "app-graph.png"), full_page=True)


def test_checking_with_real_ablations_shows_its_plot_and_numbers(page) -> None:
    run_first_example(page)
    page.click("#tt-verify")
    page.wait_for_selector("#tt-verify-scatter .js-plotly-plot")
    page.wait_for_selector("#tt-verify-layers .js-plotly-plot")
    summary = page.inner_text("#tt-verify-summary")
    assert "sign agreement" in summary and "Spearman" in summary
    page.locator("#tt-verify-summary").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "app-verify.png"), full_page=True)


def test_a_copied_link_reproduces_the_run_in_a_fresh_page(page) -> None:
    run_first_example(page)
    page.get_by_label("Features only").check()
    page.locator("#tt-table [role=gridcell]").filter(
        has_text=re.compile(r"^\s*feature\s*$")
    ).first.click()
    page.wait_for_selector("#tt-panel .tt-card")
    head = page.inner_text("#tt-panel .tt-node-head")
    summary = page.inner_text("#tt-summary")
    page.click("#tt-copy-link")
    page.wait_for_function(
        "() => document.querySelector('#tt-share textarea, #tt-share input').value"
        ".startsWith('http')"
    )
    link = page.input_value("#tt-share textarea, #tt-share input")
    assert "text=" in link and "node=" in link
    fresh = page.context.new_page()
    fresh.set_default_timeout(TIMEOUT_MS)
    fresh.goto(link)
    fresh.wait_for_selector("#tt-tokens .tt-target")
    fresh.wait_for_selector("#tt-panel .tt-card")
    assert fresh.input_value("#tt-prompt textarea") == demo_examples()[0]["text"]
    assert fresh.inner_text("#tt-summary").split(" · ")[0] == summary.split(" · ")[0]
    assert fresh.inner_text("#tt-panel .tt-node-head") == head
    fresh.screenshot(path=str(ARTIFACTS / "app-from-link.png"), full_page=True)
    fresh.close()


def test_a_bad_link_gives_the_forms_message(page, served) -> None:
    fresh = page.context.new_page()
    fresh.set_default_timeout(TIMEOUT_MS)
    fresh.goto(f"{served.url}?text=When+Mary+went&release=gpt2-xl-res")
    toast = fresh.get_by_text("This app offers the SAE releases")
    toast.first.wait_for()
    fresh.goto(f"{served.url}?text=When+Mary+went&colour=red")
    fresh.get_by_text("settings this app does not know").first.wait_for()
    fresh.close()
