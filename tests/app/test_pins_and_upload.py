"""Pinned nodes (kept whatever the thresholds, ringed, shown on their own, in the graph file and
in links) and the visitor's own upload to Neuronpedia, through the page's handlers on the bundled
model (no server), with the upload going to the local fake Neuronpedia."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest

from tests.fake_neuronpedia import KEY, fake_neuronpedia
from tests.helpers import CAP, demo_examples, load_app_module
from token_trace.app.page import GraphChoice, Page
from token_trace.app.requests import (
    MAX_PINS,
    RequestFields,
    parse_pins,
    request_from_query,
    toggle_pin,
)
from token_trace.app.service import Service
from token_trace.flow_view import PIN_COLOUR, shown
from token_trace.neuronpedia_upload import API_KEY_ENV, BASE_URL_ENV
from token_trace.options import DEFAULT_MAX_NODES

EXAMPLE = demo_examples()[0]
REQUEST = RequestFields(
    text=EXAMPLE["text"], release="ioi-demo", answer=EXAMPLE["answer"],
    contrast=EXAMPLE["contrast"],
)  # fmt: skip


@pytest.fixture(scope="module")
def page() -> Page:
    return Page(True, Service(CAP), load_app_module().EXAMPLES_DIR)


@pytest.fixture(scope="module")
def built(page: Page) -> dict:
    return page.graph(REQUEST, None, DEFAULT_MAX_NODES, GraphChoice())


def dropped_and_kept(built: dict) -> tuple[list[str], list[str]]:
    """SAE nodes the default pruning drops, and ones it keeps."""
    graph_run = built["graph_run"]
    kept = set(GraphChoice().pruned(graph_run.graph).nodes["node_id"])
    sae = graph_run.graph.candidate_nodes
    sae = sae[sae["node_type"].isin(["feature", "error"])]
    dropped = [i for i in sae.sort_values("influence")["node_id"] if i not in kept]
    return dropped[:2], [i for i in sae["node_id"] if i in kept][:2]


def test_pins_are_kept_ringed_and_shown_on_their_own(page: Page, built: dict) -> None:
    graph_run = built["graph_run"]
    (weak, weaker), (strong, _) = dropped_and_kept(built)
    choice = GraphChoice(pinned=(weak, strong))
    graph = choice.pruned(graph_run.graph)
    assert {weak, strong} <= set(graph.nodes["node_id"])  # pruning alone dropped `weak`
    assert weaker not in set(graph.nodes["node_id"])
    drawn = page.redraw(graph_run, choice)
    markers = drawn["graph_plot"].data[-1]
    rings = dict(zip(markers.customdata, markers.marker.line.color))
    assert rings[weak] == rings[strong] == PIN_COLOUR
    assert [i for i, ring in rings.items() if ring == PIN_COLOUR] == [
        i for i in markers.customdata if i in (weak, strong)
    ]  # fmt: skip
    assert "2 pinned" in drawn["graph_plot"].layout.title.text
    # the file pins them for Neuronpedia's viewer
    document = json.loads(Path(drawn["graph_file"]).read_text())
    assert document["qParams"]["pinnedIds"] == [weak, strong]
    # on their own: only the pins (and the tokens and the metric), with the summary agreeing
    alone = page.redraw(graph_run, GraphChoice(pinned=(weak, strong), pinned_only=True))
    markers = alone["graph_plot"].data[-1]
    types = set(graph.nodes.set_index("node_id").loc[list(markers.customdata), "node_type"])
    sae_shown = [i for i in markers.customdata if i in (weak, strong)]
    assert sorted(sae_shown) == sorted([weak, strong]) and types <= {
        "feature", "error", "embedding", "metric"
    }  # fmt: skip
    view = shown(graph, True, (weak, strong))
    assert view.n_sae_nodes == 2
    assert (
        "<b>2</b> SAE nodes" in alone["graph_summary"]
        and "pinned subgraph" in (alone["graph_summary"])
    )
    assert alone["graph_plot"].layout.title.text.startswith("pinned subgraph: 2 SAE nodes")


def test_the_pin_button_toggles_the_selected_node(page: Page, built: dict) -> None:
    graph_run = built["graph_run"]
    (weak, _), (strong, _) = dropped_and_kept(built)
    pinned = page.pin(graph_run, weak, GraphChoice(pinned=(strong,)))
    assert pinned["pinned"] == f"{strong}, {weak}"
    assert json.loads(Path(pinned["graph_file"]).read_text())["qParams"]["pinnedIds"] == [
        strong, weak
    ]  # fmt: skip
    assert page.pin(graph_run, strong, GraphChoice(pinned=(strong, weak)))["pinned"] == weak
    with pytest.raises(ValueError, match="Select a node first"):
        page.pin(graph_run, None, GraphChoice())
    with pytest.raises(ValueError, match="Build the graph first"):
        page.pin(None, strong, GraphChoice())


def test_bad_pins_get_clear_messages(page: Page, built: dict) -> None:
    with pytest.raises(ValueError, match="'3_x_1' is not a graph node id"):
        parse_pins("1_2_3, 3_x_1")
    with pytest.raises(ValueError, match=f"At most {MAX_PINS} pinned"):
        parse_pins(",".join(f"1_{i}_0" for i in range(MAX_PINS + 1)))
    assert parse_pins(" 1_2_3 ,1_2_3, E_5_0,") == ("1_2_3", "E_5_0")  # once each, in order
    assert toggle_pin(("1_2_3",), "1_2_3") == ()
    far = "1_99999_0"  # not among the computed nodes
    with pytest.raises(ValueError, match=f"{far}: not among this graph's"):
        page.redraw(built["graph_run"], GraphChoice(pinned=(far,)))


def test_pins_edit_in_what_if(page: Page, built: dict) -> None:
    (weak, _), (strong, _) = dropped_and_kept(built)
    edits = page.add_edits("", [weak, strong, "E_12_0"], "scale", 2.0, False)
    assert edits == f"{weak}:x2, {strong}:x2"  # token nodes cannot be edited
    with pytest.raises(ValueError, match="pin some"):
        page.add_edits("", [], "ablate", 0.0, False)


def test_links_carry_pins_and_the_graph_size(page: Page, built: dict) -> None:
    (weak, _), (strong, _) = dropped_and_kept(built)
    query = page.link(REQUEST, None, strong, "", f"{weak}, {strong}", 300)
    params = dict(urllib.parse.parse_qsl(query[1:]))
    assert params["pinned"] == f"{weak},{strong}" and params["max_nodes"] == "300"
    shared = request_from_query(params)
    assert shared.pinned == (weak, strong) and shared.max_nodes == 300
    filled = page.from_link(params)
    assert filled["pinned"] == f"{weak}, {strong}" and filled["max_nodes"] == 300
    assert "pinned" not in dict(urllib.parse.parse_qsl(page.link(REQUEST, None, None)[1:]))
    with pytest.raises(ValueError, match="max_nodes in the link must be a whole number"):
        request_from_query({**params, "max_nodes": "lots"})
    with pytest.raises(ValueError, match="is not a graph node id"):
        request_from_query({**params, "pinned": "<script>"})


def test_the_visitor_uploads_with_their_own_key(page: Page, built: dict, monkeypatch) -> None:
    graph_run = built["graph_run"]
    (weak, _), _ = dropped_and_kept(built)
    choice = GraphChoice(pinned=(weak,))
    monkeypatch.setenv(API_KEY_ENV, KEY)  # the deployer's key: never used for a visitor
    with fake_neuronpedia(hosted=frozenset({"ioi-demo"})) as site:
        monkeypatch.setenv(BASE_URL_ENV, site.site)
        with pytest.raises(ValueError, match="Paste your Neuronpedia API key"):
            page.upload(graph_run, choice, "  ")
        assert site.requests == []
        shown_html = page.upload(graph_run, choice, f" {KEY} ")
        assert "Uploaded" in shown_html and site.site in shown_html
        (stored_key,) = site.files
        stored = site.stored_graph(stored_key)
        assert stored["qParams"]["pinnedIds"] == [weak]
        assert KEY not in shown_html
        with pytest.raises(Exception, match="refused the API key") as caught:
            page.upload(graph_run, choice, "not-my-key")
        assert "not-my-key" not in str(caught.value)
    with pytest.raises(ValueError, match="Build the graph first"):
        page.upload(None, choice, KEY)


def test_the_graph_endpoint_takes_pins(page: Page, built: dict) -> None:
    (weak, _), _ = dropped_and_kept(built)
    document = page.graph_json(REQUEST, pinned=weak)
    assert document["qParams"]["pinnedIds"] == [weak]
    assert weak in {node["node_id"] for node in document["nodes"]}
    assert weak not in {node["node_id"] for node in page.graph_json(REQUEST)["nodes"]}
    with pytest.raises(ValueError, match="is not a graph node id"):
        page.graph_json(REQUEST, pinned="nope")
