"""Plotly figures of a trace: where (layer x position), how (features vs error), which nodes.

Each function takes node tables from a `Trace` (already filtered by the caller if wanted) and
returns a `plotly.graph_objects.Figure`; nothing here recomputes attributions. Tokens are passed
through `html.escape` because plotly renders a subset of HTML in labels and hover text. Colours
come from `token_trace.app.theme`, so a sign has one colour on the whole page.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from token_trace.ablation import Verification
from token_trace.app.render import token_label
from token_trace.app.theme import DIVERGING, FONT, MONO, NEUTRAL, TOTAL, signed_colour
from token_trace.hook_names import short_label
from token_trace.records import Trace

SCATTER_POINTS = 4000
MAX_TICKS = 48  # position labels on the heatmap's axis before every k-th one is shown


def _style(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}},
        template="plotly_white",
        height=height,
        margin={"l": 10, "r": 10, "t": 44, "b": 10},
        font={"family": FONT, "size": 12},
        hoverlabel={"font": {"family": MONO}},
    )
    return fig


def layer_position_heatmap(result: Trace, df: pd.DataFrame) -> go.Figure:
    """Summed attribution per SAE layer and token position of `df` (rows of `result.nodes`):
    where in the prompt, how deep. Layers in the run's order (by depth for releases)."""
    present = set(df["hook_name"].astype(str))
    hooks = [hook for hook in result.hook_names if hook in present]
    tokens = result.prompt.tokens
    positions = sorted(df["position"].unique().tolist())
    sums = df.groupby([df["hook_name"].astype(str), "position"])["attribution"].sum()
    grid = sums.unstack("position").reindex(index=hooks, columns=positions).fillna(0.0)
    z = grid.to_numpy(dtype=float)
    limit = float(np.abs(z).max()) if z.size else 1.0
    labels = [token_label(p, tokens[p]) for p in positions]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(len(positions))),
            y=[short_label(h) for h in hooks],
            customdata=np.array([labels] * len(hooks), dtype=object),
            colorscale=DIVERGING,
            zmid=0.0,
            zmin=-limit,
            zmax=limit,
            colorbar={"title": {"text": "attr."}, "thickness": 12},
            hovertemplate="%{y} · %{customdata}<br>attribution %{z:+.4g}<extra></extra>",
        )
    )
    step = -(-len(positions) // MAX_TICKS)  # ceil: long prompts label every k-th token
    ticks = list(range(0, len(positions), step))
    fig.update_xaxes(tickvals=ticks, ticktext=[labels[i] for i in ticks], tickangle=-45)
    fig.update_yaxes(autorange="reversed", title=None)
    return _style(fig, "Attribution by layer and position", height=170 + 28 * max(len(hooks), 5))


def layer_totals_figure(totals: pd.DataFrame) -> go.Figure:
    """Per layer: summed attribution of its features and of its error nodes, and their total.

    A large error bar says that layer's SAE leaves much of the effect unexplained.
    `totals` is `token_trace.layer_totals(df)`.
    """
    labels = [short_label(h) for h in totals["hook_name"].astype(str)]
    share = [f"error share {s:.0%}" for s in totals["error_share"]]
    fig = go.Figure()
    # Features: the page's sign colours. Errors: the same colours, hatched, so the two bars of a
    # layer stay apart without giving either a colour that means something else.
    for column, name, pattern in (("features", "SAE features", ""), ("error", "SAE error", "/")):
        fig.add_bar(
            x=labels,
            y=totals[column],
            name=name,
            marker={
                "color": [signed_colour(v) for v in totals[column]],
                "pattern": {"shape": pattern, "fgcolor": "white", "solidity": 0.35},
                "line": {"color": NEUTRAL, "width": 1},
            },
            customdata=share,
            hovertemplate=f"%{{x}} · {name}: %{{y:+.4g}}<br>%{{customdata}}<extra></extra>",
        )
    fig.add_scatter(
        x=labels,
        y=totals["total"],
        name="total",
        mode="markers",
        marker={"color": TOTAL, "symbol": "diamond", "size": 9},
        hovertemplate="%{x} · total: %{y:+.4g}<extra></extra>",
    )
    fig.update_layout(
        barmode="group", legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right"}
    )
    fig.update_yaxes(title="summed attribution", zeroline=True)
    return _style(fig, "Per layer: features vs error", height=340)


def attribution_scatter(df: pd.DataFrame, max_points: int = SCATTER_POINTS) -> go.Figure:
    """Feature activation against attribution, coloured by layer: strongly active features need not
    matter, and small activations can carry large effects. The `max_points` largest |attribution|
    features are drawn (a GPT-2 prompt has tens of thousands)."""
    features = df[df["node_type"] == "feature"]
    shown = features.loc[features["attribution"].abs().nlargest(max_points).index]
    tokens = [token_label(p, t) for p, t in zip(shown["position"], shown["token"])]
    hover = [
        f"{short_label(h)} · feature {f}<br>{t}"
        for h, f, t in zip(shown["hook_name"].astype(str), shown["feature"], tokens)
    ]
    fig = go.Figure(
        go.Scattergl(
            x=shown["activation"],
            y=shown["attribution"],
            mode="markers",
            marker={
                "color": shown["layer"],
                "colorscale": "Viridis",
                "size": 6,
                "opacity": 0.75,
                "colorbar": {"title": {"text": "layer"}, "thickness": 12},
            },
            text=hover,
            hovertemplate="%{text}<br>activation %{x:.4g} · attribution %{y:+.4g}<extra></extra>",
        )
    )
    fig.update_xaxes(title="activation")
    fig.update_yaxes(title="attribution", zeroline=True)
    title = "Features: attribution vs activation"
    if len(features) > len(shown):
        title += f" (top {len(shown):,} of {len(features):,} by |attribution|)"
    return _style(fig, title, height=380)


#: Edge line widths: |weight| is binned into this many widths per sign (one plotly trace each).


def verification_figures(check: Verification) -> tuple[go.Figure, go.Figure]:
    """Estimate vs real effect for the top nodes (with the diagonal), and per layer side by side."""
    nodes = check.nodes
    scatter = go.Figure()
    limit = float(np.abs(np.r_[nodes["attribution"], nodes["real"]]).max() or 1.0)
    scatter.add_scatter(
        x=[-limit, limit], y=[-limit, limit], mode="lines", name="estimate = real",
        line={"color": NEUTRAL, "dash": "dash"},
    )  # fmt: skip
    labels = [
        f"{short_label(str(h))} · feature {f}<br>{token_label(p, str(t))}"
        for h, f, p, t in zip(
            nodes["hook_name"], nodes["feature"], nodes["position"], nodes["token"]
        )
    ]
    scatter.add_scatter(
        x=nodes["attribution"],
        y=nodes["real"],
        mode="markers",
        name="top nodes",
        marker={"color": [signed_colour(v) for v in nodes["real"]], "size": 9},
        text=labels,
        hovertemplate="%{text}<br>estimate %{x:+.4g} · real %{y:+.4g}<extra></extra>",
    )
    scatter.update_xaxes(title="estimate (attribution)")
    scatter.update_yaxes(title="real ablation effect")
    title = (
        f"Top {len(nodes)} nodes: sign agreement {check.sign_agreement:.0%}, "
        f"Spearman ρ {check.rank_correlation:.2f}"
    )
    scatter = _style(scatter, title, height=380)
    layers = check.layers
    names = [short_label(h) for h in layers["hook_name"].astype(str)]
    bars = go.Figure()
    bars.add_bar(x=names, y=layers["estimate"], name="estimate", marker_color=NEUTRAL)
    bars.add_bar(
        x=names,
        y=layers["real"],
        name="real (whole layer ablated)",
        marker_color=[signed_colour(v) for v in layers["real"]],
    )
    bars.update_layout(
        barmode="group", legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right"}
    )
    bars.update_yaxes(title="effect on the metric", zeroline=True)
    return scatter, _style(bars, "Per layer: estimate vs real", height=340)


def faithfulness_figure(curve: pd.DataFrame, kept: int) -> go.Figure:
    """Faithfulness against circuit size (the graph's own influence order), the drawn graph's
    size marked."""
    fig = go.Figure()
    fig.add_scatter(
        x=curve["size"], y=curve["faithfulness"], mode="lines+markers", name="faithfulness",
        line={"color": TOTAL},
    )  # fmt: skip
    fig.add_hline(y=0.8, line={"color": NEUTRAL, "dash": "dot"}, annotation_text="80%")
    fig.add_vline(x=kept, line={"color": NEUTRAL, "dash": "dash"}, annotation_text="this graph")
    fig.update_xaxes(type="log", title="SAE nodes kept (most influential first)")
    fig.update_yaxes(title="share of the metric recovered", tickformat=".0%")
    return _style(fig, "Faithfulness by circuit size", height=320)
