"""How a `Trace` and a `Graph` show themselves in a notebook (`_repr_html_`): offline, without the
app. A trace shows its tokens coloured by their summed attribution and its top nodes; a graph
shows the readable flow figure (`flow_view`) with plotly's script inlined, so it draws offline."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from token_trace.colors import NEGATIVE_RGB, POSITIVE_RGB
from token_trace.flow_view import GraphLike, flow_figure

#: Nodes listed under a trace's tokens.
SHOWN_NODES = 10
COLUMNS = ["layer", "position", "token", "node_type", "feature", "label", "attribution"]


def trace_html(result: Any) -> str:
    """The prompt's tokens (background: each position's summed attribution, red raises the
    metric), the metric and its value, and the top nodes by |attribution| (BOS excluded)."""
    nodes = result.nodes
    totals = (
        nodes.groupby("position")["attribution"]
        .sum()
        .reindex(range(len(result.prompt.tokens)), fill_value=0.0)
    )
    scale = float(np.abs(totals.to_numpy()).max()) or 1.0
    spans = []
    for token, total in zip(result.prompt.tokens, totals.to_numpy()):
        red, green, blue = POSITIVE_RGB if total >= 0 else NEGATIVE_RGB
        alpha = min(1.0, abs(total) / scale)
        spans.append(
            f'<span title="{total:+.3g}" style="background: rgba({red},{green},{blue},{alpha:.2f});'
            f' padding: 1px 2px; border-radius: 3px; white-space: pre">{html.escape(token)}</span>'
        )
    top = result.top_nodes(SHOWN_NODES, exclude_bos=True)
    shown = [column for column in COLUMNS if column in top.columns]
    return (
        f"<div><p><b>{html.escape(result.metric.description)}</b> = {result.metric.value:.4g} "
        f"· {len(nodes):,} nodes · {html.escape(result.model)}</p>"
        f"<p style='font-family: monospace'>{''.join(spans)}</p>"
        f"{top[shown].to_html(index=False, escape=True)}</div>"
    )


def graph_html(graph: GraphLike) -> str:
    """The flow figure, legend and labels included, as self-contained HTML."""
    return flow_figure(graph).to_html(include_plotlyjs=True, full_html=False)
