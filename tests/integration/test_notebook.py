"""A `Trace` and a `Graph` display themselves in a notebook, offline, without the app."""

from __future__ import annotations

import html

from token_trace import compute_graph, trace

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_a_trace_shows_its_tokens_and_top_nodes():
    result = trace(PROMPT, "ioi-demo", answer=" Mary", contrast=" John", device="cpu")
    page = result.with_labels()._repr_html_()
    assert html.escape(result.metric.description) in page
    assert all(html.escape(token) in page for token in result.prompt.tokens)
    top = result.with_labels().top_nodes(1, exclude_bos=True).iloc[0]
    assert html.escape(top["label"], quote=False) in page  # labels in the node table


def test_a_graph_draws_itself_offline_with_legend_and_labels():
    graph = compute_graph(PROMPT, "ioi-demo", answer=" Mary", contrast=" John", max_nodes=60)
    page = graph.with_labels()._repr_html_()
    assert "Plotly.newPlot" in page and "<script src=" not in page  # plotly inlined: offline
    assert "SAE feature" in page and "raises the metric" in page
