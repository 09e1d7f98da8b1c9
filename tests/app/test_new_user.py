"""What a new user tripped over (round 3): MCP results, API error text, numbers sent as strings,
bad node ids in links, the answer's leading space and the empty answer."""

from __future__ import annotations

import asyncio
import json

import pytest
from gradio_client.exceptions import AppError
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from tests.helpers import Served, demo_examples
from token_trace import TOP_PREDICTION, trace
from token_trace.app import render
from token_trace.app.api import MCP_TOP_K

EXAMPLE = demo_examples()[0]
REQUEST = {"text": EXAMPLE["text"], "model": "ioi-demo", "answer": EXAMPLE["answer"]}
PROMPT = "When Mary and John went to the store, John gave a drink to"


def call_tool(url: str, name: str, arguments: dict) -> str:
    """One MCP tool call over streamable HTTP, as an agent makes it; the result's text."""

    async def go() -> str:
        async with (
            streamablehttp_client(f"{url}gradio_api/mcp/") as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool(name, arguments)
            return "".join(part.text for part in result.content)

    return asyncio.run(go())


def test_mcp_results_are_json_with_a_small_default(served: Served) -> None:
    text = call_tool(served.url, "attribute", REQUEST)
    nodes = json.loads(text)  # JSON, not a Python repr
    assert isinstance(nodes, list) and len(nodes) == MCP_TOP_K
    assert {"attribution", "neuronpedia_url"} <= set(nodes[0])
    everything = json.loads(call_tool(served.url, "attribute", {**REQUEST, "top_k": 0}))
    assert len(everything) > MCP_TOP_K
    summary = json.loads(call_tool(served.url, "summary", REQUEST))
    expected = served.client.predict(**REQUEST, api_name="/summary")
    assert summary["tokens"] == expected["tokens"]
    assert summary["metric_value"] == pytest.approx(expected["metric_value"])
    # Python clients still get lists and dicts, every node by default.
    assert len(served.client.predict(**REQUEST, api_name="/attribute")) == len(everything)


def test_mcp_schema_has_integer_types_ranges_and_defaults(served: Served) -> None:
    import httpx

    schema = httpx.get(f"{served.url}gradio_api/mcp/schema", timeout=30).json()
    tools = {tool["name"]: tool for tool in schema if tool["meta"]["mcp_type"] == "tool"}
    attribute = tools["attribute"]["inputSchema"]["properties"]
    assert attribute["top_k"]["type"] == "integer" and attribute["top_k"]["default"] == MCP_TOP_K
    assert attribute["ig_steps"]["type"] == "integer"
    assert "top next-token prediction" in attribute["answer"]["description"]
    verify = tools["verify"]["inputSchema"]["properties"]["top_k"]
    assert verify["type"] == "integer" and "1-200" in verify["description"]
    assert "0 for /attribute" not in json.dumps(tools["verify"])
    assert tools["graph"]["inputSchema"]["properties"]["max_nodes"]["type"] == "integer"


def test_api_errors_are_plain_text(served: Served) -> None:
    with pytest.raises(AppError) as raised:
        served.client.predict(**{**REQUEST, "answer": " Zorblax"}, api_name="/attribute")
    message = str(raised.value)
    assert "<unk>" in message and "&lt;" not in message


@pytest.mark.parametrize(
    "extra, api_name, message",
    [
        ({"top_k": "NaN"}, "/attribute", "top_k must be 0"),
        ({"top_k": "abc"}, "/verify", "top_k must be a whole number"),
        ({"max_nodes": "NaN"}, "/graph", "max_nodes must be a whole number"),
        ({"node_threshold": "NaN"}, "/graph", "node_threshold must lie between 0 and 1"),
        ({"method": "ig", "ig_steps": "abc"}, "/attribute", "whole number of steps"),
    ],
)
def test_strings_where_numbers_belong_get_checked_messages(
    served: Served, extra: dict, api_name: str, message: str
) -> None:
    with pytest.raises(AppError, match=message) as raised:
        served.client.predict(**{**REQUEST, **extra}, api_name=api_name)
    assert "unexpectedly" not in str(raised.value)


def test_an_empty_answer_scores_the_models_top_prediction(served: Served) -> None:
    summary = served.client.predict(text=PROMPT, model="ioi-demo", api_name="/summary")
    top = summary["top_predictions"][0]["token"]
    assert summary["metric_description"] == f"log p({top!r} | prompt)"
    expected = trace(PROMPT, "ioi-demo", answer=top, device="cpu")
    assert summary["metric_value"] == pytest.approx(expected.metric.value, rel=1e-5)
    # The library keeps its documented default (the text's last token) and offers the choice.
    assert trace(PROMPT, "ioi-demo", device="cpu").prompt.target == " to"
    chosen = trace(PROMPT, "ioi-demo", answer=TOP_PREDICTION, device="cpu")
    assert chosen.prompt.target == top


def test_the_answers_leading_space_is_warned_about() -> None:
    with pytest.warns(UserWarning, match="leading space"):
        result = trace(PROMPT, "ioi-demo", answer="Mary", device="cpu")
    (note,) = [w for w in result.warnings if "leading space" in w]
    assert "'Mary'" in note and "' Mary'" in note and "p = " in note
    assert not any("leading space" in w for w in trace(PROMPT, "ioi-demo", answer=" Mary").warnings)


@pytest.mark.parametrize(
    "node, shown",
    [
        ("<script>alert(1)</script>", "is not a node id"),
        ("metric", "is not a node id"),
        ("E_3", "is not a node id"),
        ("0_99999_3", "has no node"),
        ("9_1_1", "has no node"),
        ("E_1_99", "has no token 99"),
    ],
)
def test_a_bad_node_in_a_link_is_a_plain_message(node: str, shown: str) -> None:
    result = trace(PROMPT, "ioi-demo", answer=" Mary", device="cpu")
    panel = render.graph_node_panel_html(result, node, offline=True)
    assert shown in panel and "<script>" not in panel
    assert "the metric" not in panel


def test_token_and_metric_nodes_open_their_own_cards() -> None:
    result = trace(PROMPT, "ioi-demo", answer=" Mary", device="cpu")
    last = len(result.prompt.tokens) - 1
    token = render.graph_node_panel_html(result, f"E_{result.prompt.token_ids[2]}_2", offline=True)
    assert "token 2" in token
    metric_layer = max(sae.layer for sae in result.saes) + 1
    metric_id = f"{metric_layer}_{result.metric.token_ids[0]}_{last}"
    assert "the metric" in render.graph_node_panel_html(result, metric_id, offline=True)


def test_labels_reach_the_api_records_and_the_graph_file(served: Served) -> None:
    from token_trace.labels import card_label
    from token_trace.loading import feature_card

    nodes = served.client.predict(**REQUEST, top_k=30, api_name="/attribute")
    features = [n for n in nodes if n["node_type"] == "feature"]
    assert features and all(n["label"] for n in features)
    for node in features[:5]:  # the bundled cards' labels, computed here from the card itself
        card = feature_card("ioi-demo", node["hook_name"], node["feature"])
        assert node["label"] == card_label(card)
    assert all(n["label"] == "" for n in nodes if n["node_type"] == "error")
    graph = served.client.predict(**REQUEST, max_nodes=40, api_name="/graph")
    clerps = [n["clerp"] for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert clerps and all(clerps)


def test_intervene_over_the_api_matches_the_library(served: Served) -> None:
    from token_trace import Edit, intervene

    top = trace(EXAMPLE["text"], "ioi-demo", answer=EXAMPLE["answer"], device="cpu")
    top = top.with_labels()
    node = top.top_nodes(1, exclude_bos=True, node_type="feature").iloc[0]
    node_id = f"{node['layer']}_{node['feature']}_{node['position']}"
    got = served.client.predict(
        **REQUEST, edits=f"{node_id}:ablate", generate=3, api_name="/intervene"
    )
    expected = intervene(top, [Edit(node_id, scale=0.0)], generate=3)
    assert got["metric_after"] == pytest.approx(expected.metric_after, rel=1e-5, abs=1e-6)
    assert got["generated_after"] == expected.generated_after
    assert json.loads(call_tool(served.url, "intervene", {**REQUEST, "edits": f"{node_id}:x2"}))


@pytest.mark.parametrize(
    "edits, message",
    [
        ("", "at least one edit"),
        ("1_2_3", "has no action"),
        ("1_2_3:x", "the action must be"),
        ("1_2_3:xNaN", "the action must be"),
        ("<script>:ablate", "node"),
        (", ".join(["1_2_3:ablate"] * 40), "At most 32 edits"),
    ],
)
def test_bad_edits_are_clear_errors(served: Served, edits: str, message: str) -> None:
    with pytest.raises(AppError, match=message) as raised:
        served.client.predict(**REQUEST, edits=edits, api_name="/intervene")
    assert "unexpectedly" not in str(raised.value)
