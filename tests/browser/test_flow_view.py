"""The flow graph as a person reads it, in headless Chromium at desktop (1400 px) and phone
(390 px) widths: no two node markers overlap, the legend is there, the most influential nodes
carry labels, a click lights the node's edges and fills the card beside (or below) the graph,
inside the viewport. Screenshots in `test-artifacts/`."""

from __future__ import annotations

import time

import pytest

from tests.browser.test_page import CHROMIUM, TIMEOUT_MS, run_first_example
from tests.helpers import ARTIFACTS, Served
from token_trace.flow_view import PIN_COLOUR

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]

#: Every rendered node marker's box, in page pixels (plotly draws each point as a path).
MARKER_BOXES = """() => {
  const layers = document.querySelectorAll('#tt-graph .scatterlayer .trace');
  const nodes = layers[layers.length - 1];
  return [...nodes.querySelectorAll('.point')].map(p => {
    const b = p.getBoundingClientRect();
    return [b.left, b.top, b.right, b.bottom];
  });
}"""


#: The graph's scrolling frame: its content width, its own width and where it is scrolled to.
SCROLL = """() => {
  const frame = document.querySelector('#tt-graph');
  return {width: frame.scrollWidth, box: frame.clientWidth, left: frame.scrollLeft};
}"""
#: The marker box of node `id`, in page pixels.
PIN_BOX = """(id) => {
  const layers = document.querySelectorAll('#tt-graph .scatterlayer .trace');
  const data = document.querySelector('#tt-graph .js-plotly-plot').data.at(-1);
  const point = layers[layers.length - 1].querySelectorAll('.point')[data.customdata.indexOf(id)];
  const b = point.getBoundingClientRect();
  return [b.left, b.top, b.right, b.bottom];
}"""
#: Whether the node `id` is drawn with the pin's gold ring.
RINGED = f"""(id) => {{
  const data = document.querySelector('#tt-graph .js-plotly-plot').data.at(-1);
  const at = data.customdata.indexOf(id);
  return at >= 0 && data.marker.line.color[at] === '{PIN_COLOUR}';
}}"""


def overlapping(boxes: list[list[float]], slack: float = 1.0) -> int:
    """How many pairs of marker boxes overlap by more than `slack` pixels each way."""
    count = 0
    for i, (l1, t1, r1, b1) in enumerate(boxes):
        for l2, t2, r2, b2 in boxes[i + 1 :]:
            if min(r1, r2) - max(l1, l2) > slack and min(b1, b2) - max(t1, t2) > slack:
                count += 1
    return count


@pytest.mark.parametrize("width, height", [(1400, 900), (390, 844)])
def test_the_flow_graph_is_readable_and_a_click_shows_the_nodes_card(
    served: Served, width: int, height: int
) -> None:
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_context(viewport={"width": width, "height": height}).new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(served.url)
        page.wait_for_selector("#tt-run")
        run_first_example(page)
        start = time.perf_counter()
        page.click("#tt-graph-run")
        page.wait_for_selector("#tt-graph .js-plotly-plot .scatterlayer .point")
        print(f"{width} px: graph drawn {time.perf_counter() - start:.1f} s after the click")
        boxes = page.evaluate(MARKER_BOXES)
        assert len(boxes) > 20
        assert overlapping(boxes) == 0
        legend = page.locator("#tt-graph .legend").text_content() or ""
        assert "SAE feature" in legend and "raises the metric" in legend
        labels = page.locator("#tt-graph .scatterlayer .trace").last.locator(".textpoint")
        assert labels.count() >= 10
        # The summary and the figure count the same nodes.
        summary = page.inner_text("#tt-graph-summary")
        title = page.locator("#tt-graph .gtitle").text_content() or ""
        assert summary.split(" SAE nodes")[0].split()[-1] == title.split(" SAE nodes")[0]
        # A graph wider than its box opens scrolled to its right end (prediction, title, legend).
        frame = page.evaluate(SCROLL)
        assert frame["width"] <= frame["box"] or frame["left"] + frame["box"] >= frame["width"] - 2
        print(f"{width} px: figure {frame['width']} px wide in a {frame['box']} px box")
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#tt-graph").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / f"flow-{width}.png"))
        # Click the most influential feature: its card fills, inside the viewport.
        index = page.evaluate(
            """() => {
              const data = document.querySelector('#tt-graph .js-plotly-plot').data;
              const ids = data[data.length - 1].customdata;
              const texts = data[data.length - 1].text;
              return ids.findIndex((id, i) => texts[i] && !id.startsWith('E_')
                                   && Number(id.split('_')[1]) >= 0);
            }"""
        )
        assert index >= 0
        point = page.locator("#tt-graph .scatterlayer .trace").last.locator(".point").nth(index)
        point.scroll_into_view_if_needed()
        point.click(force=True)
        page.wait_for_selector("#tt-graph-card .tt-node-head")
        card = page.locator("#tt-graph-card").bounding_box()
        assert card is not None and card["y"] < height and card["y"] + 40 > 0
        assert "Inputs" in page.inner_text("#tt-graph-card")
        page.screenshot(path=str(ARTIFACTS / f"flow-{width}-clicked.png"))
        # Pin the clicked node: it is ringed and listed; alone, the pinned subgraph shows it.
        node_id = page.evaluate(
            f"""() => document.querySelector('#tt-graph .js-plotly-plot').data.at(-1)
                 .customdata[{index}]"""
        )
        page.click("#tt-pin")
        page.wait_for_function(
            f"() => document.querySelector('#tt-pinned textarea, #tt-pinned input').value"
            f" === '{node_id}'"
        )
        page.wait_for_function(RINGED, arg=node_id)
        page.check("#tt-pinned-only input")
        page.wait_for_function(
            "() => document.querySelector('#tt-graph .gtitle')?.textContent"
            ".startsWith('pinned subgraph: 1 SAE nodes')"
        )
        # the pinned node, the tokens and the metric; the frame scrolled to show the pin
        page.wait_for_timeout(300)
        frame = page.locator("#tt-graph").bounding_box()
        pin = page.evaluate(PIN_BOX, node_id)
        assert frame["x"] <= pin[0] and pin[2] <= frame["x"] + frame["width"]
        page.locator("#tt-graph").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / f"flow-{width}-pinned.png"))
        browser.close()
