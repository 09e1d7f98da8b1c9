"""The token-flow graph as a figure a person can read: the app draws it, and so does a notebook.

Positions run left to right and SAE layers bottom to top (the prompt's tokens below, the metric on
top). The nodes of one (layer, position) cell are laid out on a small grid inside the cell, and the
figure is made wide and tall enough that no two markers overlap: a long prompt gives a wide figure
that scrolls sideways rather than one that squeezes. A legend says what each shape and colour
means; the most influential nodes (one per cell) carry their label beside them, and every node
its hover.
A selected node keeps its own edges in full colour and fades the rest; pinned nodes are ringed,
and can be shown on their own (the pinned subgraph, as Neuronpedia's viewer has it).
"""

from __future__ import annotations

import html
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from token_trace.colors import NEGATIVE, NEUTRAL, POSITIVE, signed_colour
from token_trace.hook_names import short_label
from token_trace.nodes import error_share

SYMBOLS = {"feature": "circle", "error": "x", "embedding": "square", "metric": "star"}
KINDS = {
    "feature": "SAE feature",
    "error": "SAE error (what the SAE misses)",
    "embedding": "prompt token",
    "metric": "the metric",
}
#: How many of the most influential SAE nodes get their label written beside them.
N_LABELLED = 15
#: Pixels between neighbours of a cell (markers are at most `MAX_MARKER` wide), and the least
#: room a position and a layer get however few nodes they hold.
SLOT_PX, MAX_MARKER = 24, 18
MIN_POSITION_PX, MIN_LAYER_PX = 44, 64
MARGIN = {"l": 90, "r": 30, "t": 80, "b": 90}
EDGE_BINS = 4
FADED = 0.06
PIN_COLOUR = "#d99a00"


class GraphLike(Protocol):
    """What the view needs of a `graph.Graph` (described by shape: `graph` is not imported)."""

    trace: Any
    nodes: pd.DataFrame
    edges: pd.DataFrame


@dataclass(frozen=True)
class Shown:
    """The nodes and edges a view shows (error nodes hidden or not), counted the same way by the
    figure's title and the page's summary."""

    nodes: pd.DataFrame
    edges: pd.DataFrame

    @property
    def n_sae_nodes(self) -> int:
        return int(self.nodes["node_type"].isin(["feature", "error"]).sum())

    @property
    def error_share(self) -> float:
        return error_share(self.nodes)


def shown(graph: GraphLike, show_errors: bool = True, only: Collection[str] | None = None) -> Shown:
    """The graph's kept nodes and edges, without the error nodes (and their edges) if asked;
    with `only`, just those nodes (the pinned subgraph) beside the tokens and the metric."""
    nodes, edges = graph.nodes, graph.edges
    if only is not None:
        nodes = nodes[
            nodes["node_type"].isin(["embedding", "metric"]) | nodes["node_id"].isin(only)
        ]
        edges = edges[
            edges["source"].isin(nodes["node_id"]) & edges["target"].isin(nodes["node_id"])
        ]
    if not show_errors:
        errors = nodes.loc[nodes["node_type"] == "error", "node_id"]
        nodes = nodes[nodes["node_type"] != "error"]
        edges = edges[~edges["source"].isin(errors) & ~edges["target"].isin(errors)]
    return Shown(nodes, edges)


@dataclass(frozen=True)
class Layout:
    """Where each node sits (in pixels, by node id), where each position and layer is centred,
    and the plotting area's size."""

    places: pd.DataFrame
    position_centres: np.ndarray
    layer_centres: np.ndarray
    rows: list[int]  # the layers, bottom to top
    width: int  # of the plotting area, margins excluded
    height: int


def _bands(cells: pd.Series, n_bands: int, least: int) -> tuple[np.ndarray, np.ndarray]:
    """Band sizes and centres in pixels: each band as wide as its fullest cell's grid needs."""
    needed = cells.reindex(range(n_bands), fill_value=1).to_numpy()
    size = np.maximum(least, SLOT_PX * needed + SLOT_PX // 2)
    return size, np.cumsum(size) - size / 2


def layout(nodes: pd.DataFrame, n_positions: int) -> Layout:
    """Each (layer, position) cell's nodes on a grid, largest |attribution| first, `SLOT_PX`
    apart; each position as wide, and each layer as tall, as its fullest cell needs (so a long
    prompt's quiet positions stay narrow). Layers are evenly ordered whatever their numbers."""
    rows = sorted(nodes["layer"].unique().tolist())
    row_of = {layer: index for index, layer in enumerate(rows)}
    order = nodes.assign(size=nodes["attribution"].abs().fillna(0.0)).sort_values(
        ["layer", "position", "size"], ascending=[True, True, False], kind="stable"
    )
    row = order["layer"].map(row_of).to_numpy()
    position = order["position"].to_numpy()
    cell = order.groupby(["layer", "position"], sort=False)
    rank = cell.cumcount().to_numpy()
    count = cell["node_id"].transform("size").to_numpy()
    columns = np.ceil(np.sqrt(count * 1.5)).astype(int)
    lines = np.ceil(count / columns).astype(int)
    widths, x_centre = _bands(pd.Series(columns).groupby(position).max(), n_positions,
                              MIN_POSITION_PX)  # fmt: skip
    heights, y_centre = _bands(pd.Series(lines).groupby(row).max(), len(rows), MIN_LAYER_PX)
    column, line = rank % columns, rank // columns
    places = pd.DataFrame(
        {
            "x": x_centre[position] + (column - (columns - 1) / 2) * SLOT_PX,
            "y": y_centre[row] + (line - (lines - 1) / 2) * SLOT_PX,
        },
        index=order["node_id"].to_numpy(),
    )
    return Layout(places, x_centre, y_centre, rows, int(widths.sum()), int(heights.sum()))


def node_label(node: pd.Series | dict) -> str:
    """A node's short name: its label where one is known, else what it is."""
    label = str(node.get("label") or "")
    kind = str(node["node_type"])
    if kind == "feature":
        return label or f"#{int(node['feature'])}"
    if kind == "error":
        return "error"
    return label or str(node.get("token", ""))


def flow_figure(
    graph: GraphLike,
    show_errors: bool = True,
    selected: str | None = None,
    pinned: Collection[str] = (),
    pinned_only: bool = False,
) -> go.Figure:
    """The readable flow graph (see the module docstring). Each marker carries its node id as
    `customdata`, which the page reads on a click. `pinned` nodes are ringed; `pinned_only`
    draws them alone with the tokens and the metric."""
    pinned = set(pinned)
    view = shown(graph, show_errors, pinned if pinned_only else None)
    nodes, edges = view.nodes, view.edges
    placed = layout(nodes, len(graph.trace.prompt.tokens))
    place = placed.places
    neighbours = _neighbours(edges, selected)
    fig = go.Figure()
    if len(edges):
        _add_edges(fig, edges, place, selected)
    _add_legend(fig, bool(pinned))  # before the nodes: the page reads them off the last trace
    size = nodes["attribution"].abs().fillna(0.0).to_numpy()
    size = 7 + (MAX_MARKER - 7) * np.sqrt(size / size.max()) if size.max() > 0 else 10.0
    labelled = _labelled(nodes)
    records = nodes.to_dict("records")
    texts = [_text(node_label(n)[:28]) if n["node_id"] in labelled else "" for n in records]
    opacity = [1.0 if selected is None or n["node_id"] in neighbours else 0.2 for n in records]
    rings = [_ring(n["node_id"], selected, pinned) for n in records]
    fig.add_scatter(
        x=place.loc[nodes["node_id"], "x"],
        y=place.loc[nodes["node_id"], "y"],
        mode="markers+text",
        customdata=nodes["node_id"],
        text=texts,
        textposition="middle right",
        textfont={"size": 10},
        hovertext=[_hover(n, graph) for n in records],
        hovertemplate="%{hovertext}<extra></extra>",
        marker={
            "size": size,
            "color": [signed_colour(v) for v in nodes["attribution"].fillna(0.0)],
            "symbol": [SYMBOLS[str(kind)] for kind in nodes["node_type"]],
            "opacity": opacity,
            "line": {"color": rings, "width": [1 if ring == "white" else 3 for ring in rings]},
        },
        showlegend=False,
    )
    _axes(fig, graph, placed)
    what = "pinned subgraph: " if pinned_only else ""
    pins = f" · {len(pinned)} pinned" if pinned and not pinned_only else ""
    title = (
        f"{what}{view.n_sae_nodes} SAE nodes, {len(edges):,} edges · error share "
        f"{view.error_share:.0%}{pins} · click a node"
    )
    # Title and legend sit at the right end, beside the metric: a wide graph opens scrolled there
    # (the page scrolls its frame to `meta.focus`, in figure pixels: the metric, or the pins).
    focus = place.loc[list(pinned & set(nodes["node_id"])) if pinned_only else [], "x"]
    right = placed.width + MARGIN["l"] + MARGIN["r"]
    left = float(focus.min()) + MARGIN["l"] if len(focus) else right - MARGIN["r"] - SLOT_PX
    fig.update_layout(
        meta={"focus": [left - SLOT_PX, right]},
        title={"text": title, "x": 1, "xanchor": "right", "font": {"size": 14}},
        template="plotly_white",
        width=placed.width + MARGIN["l"] + MARGIN["r"],
        height=placed.height + MARGIN["t"] + MARGIN["b"],
        margin=MARGIN,
        hovermode="closest",
        clickmode="event",
        dragmode="pan",
        legend={
            "orientation": "h",
            "x": 1,
            "xanchor": "right",
            "y": 1.0,
            "yanchor": "bottom",
            "font": {"size": 11},
        },
    )
    return fig


def _labelled(nodes: pd.DataFrame) -> set[str]:
    """The SAE nodes whose label is written beside them: the most influential one of each
    (layer, position) cell, for the `N_LABELLED` most influential cells (labels of one cell's
    neighbours would write over each other)."""
    sae = nodes[nodes["node_type"].isin(["feature", "error"])]
    best = sae.sort_values("influence", ascending=False).drop_duplicates(["layer", "position"])
    return set(best.head(N_LABELLED)["node_id"])


def _ring(node_id: str, selected: str | None, pinned: Collection[str]) -> str:
    """A marker's outline: black when selected, gold when pinned, else white."""
    if node_id == selected:
        return "black"
    return PIN_COLOUR if node_id in pinned else "white"


def _neighbours(edges: pd.DataFrame, selected: str | None) -> set[str]:
    if selected is None:
        return set()
    touching = edges[(edges["source"] == selected) | (edges["target"] == selected)]
    return {selected, *touching["source"], *touching["target"]}


def _add_edges(fig: go.Figure, edges: pd.DataFrame, place: pd.DataFrame, selected: str | None):
    """Edges as few line traces: one per sign, width bin and (with a selection) highlight."""
    scale = float(edges["weight"].abs().max()) or 1.0
    level = np.minimum((edges["weight"].abs().to_numpy() / scale * EDGE_BINS).astype(int),
                       EDGE_BINS - 1)  # fmt: skip
    lit = (
        np.ones(len(edges), dtype=bool)
        if selected is None
        else ((edges["source"] == selected) | (edges["target"] == selected)).to_numpy()
    )
    positive = (edges["weight"] >= 0).to_numpy()
    for sign in (True, False):
        for width in range(EDGE_BINS):
            for bright in (True, False):
                chosen = edges[(positive == sign) & (level == width) & (lit == bright)]
                if chosen.empty:
                    continue
                start, end = place.loc[chosen["source"]], place.loc[chosen["target"]]
                gap = np.full(len(chosen), np.nan)
                fig.add_scatter(
                    x=np.column_stack([start["x"], end["x"], gap]).ravel(),
                    y=np.column_stack([start["y"], end["y"], gap]).ravel(),
                    mode="lines",
                    line={"color": POSITIVE if sign else NEGATIVE, "width": 0.6 + width},
                    opacity=(0.2 + 0.12 * width) if bright else FADED,
                    hoverinfo="skip",
                    showlegend=False,
                )


def _add_legend(fig: go.Figure, pins: bool = False) -> None:
    """Legend entries for the shapes (in grey), the two colours and, when any, the pin ring."""
    for kind, name in KINDS.items():
        fig.add_scatter(
            x=[None], y=[None], mode="markers", name=name,
            marker={"symbol": SYMBOLS[kind], "color": NEUTRAL, "size": 10},
        )  # fmt: skip
    for colour, name in ((POSITIVE, "red: raises the metric"), (NEGATIVE, "blue: lowers it")):
        fig.add_scatter(
            x=[None], y=[None], mode="markers", name=name,
            marker={"symbol": "circle", "color": colour, "size": 10},
        )  # fmt: skip
    if pins:
        fig.add_scatter(
            x=[None], y=[None], mode="markers", name="ringed: pinned",
            marker={"symbol": "circle", "color": "white", "size": 10,
                    "line": {"color": PIN_COLOUR, "width": 3}},
        )  # fmt: skip


def _axes(fig: go.Figure, graph: GraphLike, placed: Layout) -> None:
    tokens = graph.trace.prompt.tokens
    fig.update_xaxes(
        tickvals=placed.position_centres.tolist(),
        ticktext=[_text(f"{p}: {tokens[p]!r}") for p in range(len(tokens))],
        tickangle=-45,
        showgrid=False,
        zeroline=False,
        range=[0, placed.width],
    )
    names = {record.layer: short_label(record.hook_name) for record in graph.trace.saes}
    names = {**names, -1: "tokens", placed.rows[-1]: "metric"} if placed.rows else names
    fig.update_yaxes(
        tickvals=placed.layer_centres.tolist(),
        ticktext=[names.get(layer, str(layer)) for layer in placed.rows],
        showgrid=True,
        zeroline=False,
        range=[0, placed.height],
    )


def _text(text: str) -> str:
    """Text for plotly, which reads `<`, `>` and `&` as its HTML subset (quotes stay quotes)."""
    return html.escape(text, quote=False)


def _hover(node: dict, graph: GraphLike) -> str:
    kind = str(node["node_type"])
    parts = [f"<b>{_text(KINDS[kind])}</b> · {_text(repr(node['token']))}"]
    if kind in ("feature", "error"):
        parts.append(_text(short_label(str(node["hook_name"]))))
        if kind == "feature":
            parts.append(f"feature {int(node['feature'])}")
        if node.get("label"):
            parts.append(_text(str(node["label"])[:120]))
        parts.append(
            f"activation {_number(node['activation'])} · attribution "
            f"{_number(node['attribution'])} · influence {_number(node['influence'])}"
        )
    elif kind == "metric":
        parts.append(_text(graph.trace.metric.description))
    return "<br>".join(parts)


def _number(value: Any) -> str:
    value = float(value)
    return "–" if math.isnan(value) else f"{value:+.3g}"
