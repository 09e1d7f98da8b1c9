"""`report.html`: the top features across a dataset run, readable without Python.

One self-contained page (plotly's script is embedded, so it opens offline): the run's settings and
counts, the features of largest mean |attribution| (signed bars, with their labels and links to
Neuronpedia where the SAEs have pages), the share of each layer's attribution left in SAE errors,
the distribution of the metric, and the records that failed with their reasons. Signed bars take
the app's colour meaning (`token_trace.colors`: red raises the metric, blue lowers it); unsigned
ones are grey.
"""

from __future__ import annotations

import html

import pandas as pd

from token_trace.colors import NEUTRAL, TOTAL, signed_colour
from token_trace.datasets.result import DatasetResult
from token_trace.files import write_text
from token_trace.options import METHODS

TOP_FEATURES = 30
SHOWN_ERRORS = 50


def write_report(result: DatasetResult) -> None:
    import plotly.graph_objects as go
    import plotly.io as pio

    features = result.features()
    prompts = result.prompts()
    top = features[features["node_type"] == "feature"].head(TOP_FEATURES)
    labels = [_label(row) for row in top.itertuples()]
    bars = go.Figure(
        go.Bar(
            x=top["mean_attribution"][::-1],
            y=labels[::-1],
            orientation="h",
            marker_color=[signed_colour(v) for v in top["mean_attribution"][::-1]],
            customdata=top[["frac_prompts_active", "share_of_total"]]
            .assign(label=top["label"].map(html.escape))
            .to_numpy(dtype=object)[::-1],
            hovertemplate="%{y} %{customdata[2]}<br>mean attribution %{x:.4f}<br>active in "
            "%{customdata[0]:.0%} of prompts<br>%{customdata[1]:.2%} of all |attribution|"
            "<extra></extra>",
        )
    )
    bars.update_layout(
        title=f"Top {len(top)} features by mean |attribution| over {result.n_ok} prompts",
        height=max(320, 22 * len(top) + 120),
        margin={"l": 160},
        xaxis_title="mean attribution (0 where inactive)",
    )
    by_layer = (
        features.groupby(["layer", "node_type"], observed=True)["mean_abs_attribution"]
        .sum()
        .unstack(fill_value=0.0)
    )
    layers = go.Figure(
        [
            go.Bar(
                x=by_layer.index,
                y=by_layer.get(kind, pd.Series(0.0, index=by_layer.index)),
                name=kind,
                marker_color=TOTAL if kind == "feature" else NEUTRAL,
            )
            for kind in ("feature", "error")
        ]
    )
    layers.update_layout(
        barmode="stack",
        title="Mean |attribution| per layer: features and SAE errors",
        xaxis_title="layer",
        height=340,
    )
    ok = prompts[prompts["status"] == "ok"]
    metric = go.Figure(go.Histogram(x=ok["metric_value"], marker_color=TOTAL))
    metric.update_layout(title="Metric value per prompt", xaxis_title="metric", height=300)
    figures = [
        pio.to_html(figure, include_plotlyjs=index == 0, full_html=False)
        for index, figure in enumerate((bars, layers, metric))
    ]
    write_text(result.run_dir.report, _page(result, top, labels, prompts, figures))


def _label(row: object) -> str:
    return f"L{row.layer} #{row.feature}"


def _page(
    result: DatasetResult,
    top: pd.DataFrame,
    labels: list[str],
    prompts: pd.DataFrame,
    figures: list[str],
) -> str:
    settings = result.settings
    failed = prompts[prompts["status"] == "error"].head(SHOWN_ERRORS)
    feature_rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{:.4f}</td><td>{:.4f}</td><td>{:.0%}</td><td>{}</td>"
        "</tr>".format(
            _link(label, row.neuronpedia_url),
            html.escape(row.label),
            row.mean_attribution,
            row.mean_abs_attribution,
            row.frac_prompts_active,
            html.escape(", ".join(map(str, row.top_prompt_ids))),
        )
        for label, row in zip(labels, top.itertuples())
    )
    error_rows = "".join(
        f"<tr><td>{html.escape(str(r.prompt_id))}</td><td>{html.escape(str(r.error))}</td></tr>"
        for r in failed.itertuples()
    )
    more = result.n_errors - len(failed)
    failed_table = (
        f"<table><tr><th>id</th><th>reason</th></tr>{error_rows}</table>"
        if error_rows
        else "<p>None: every record was attributed.</p>"
    )
    method = METHODS[settings.trace.method]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>token-trace dataset report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #111; }}
table {{ border-collapse: collapse; font-size: 0.9rem; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }}
</style></head><body>
<h1>token-trace dataset report</h1>
<p>{html.escape(settings.model)} · SAEs {html.escape(settings.saes or "(the model's default)")} ·
{method} · {result.n_prompts} prompts: {result.n_ok} attributed,
{result.n_errors} failed{" · BOS nodes left out" if settings.exclude_bos else ""}.</p>
{"".join(figures)}
{_graphs(prompts, settings.faithfulness_baseline)}
<h2>Top features</h2>
<table><tr><th>feature</th><th>label</th><th>mean attribution</th><th>mean |attribution|</th>
<th>active in</th><th>top prompts</th></tr>{feature_rows}</table>
<h2>Failed records</h2>
{failed_table}
{f"<p>… and {more} more (see prompts/).</p>" if more > 0 else ""}
</body></html>
"""


def _graphs(prompts: pd.DataFrame, baseline: str) -> str:
    """The graphs' sizes and, when measured, how much of the metric they recover."""
    if "graph_nodes" not in prompts or not prompts["graph_nodes"].notna().any():
        return ""
    graphs = prompts[prompts["graph_nodes"].notna()]
    text = (
        f"{len(graphs)} prompts' pruned graphs keep a median of "
        f"{graphs['graph_nodes'].median():.0f} nodes (tokens and metric included)"
    )
    faithful = graphs["graph_faithfulness"].dropna() if "graph_faithfulness" in graphs else ()
    if len(faithful):
        rest = graphs["graph_complement_faithfulness"].dropna()
        text += (
            f"; with every other SAE node at "
            f"{'its mean over the dataset' if baseline == 'mean' else 'its baseline'} they "
            f"recover a mean "
            f"{faithful.mean():.0%} (median {faithful.median():.0%}) of the metric, and "
            f"everything but them {rest.mean():.0%}"
        )
    return f"<h2>Graphs</h2><p>{html.escape(text)}.</p>"


def _link(label: str, url: object) -> str:
    if isinstance(url, str) and url:
        return f'<a href="{html.escape(url)}" target="_blank">{html.escape(label)}</a>'
    return html.escape(label)
