"""What the app shows of a trace: coloured tokens, the summary, the ranked table, the feature panel.

Everything here turns a finished `Trace` (and the user's filters) into HTML strings, dicts or small
DataFrames; nothing computes attributions. Any text that came from a user or a tokenizer goes
through `html.escape` before it reaches the page, so a prompt cannot inject markup.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import pandas as pd

from token_trace import loading
from token_trace.ablation import Verification
from token_trace.app.requests import GRAPH_NODE_ID, Preset
from token_trace.app.theme import signed_background
from token_trace.circuit import Faithfulness
from token_trace.flow_view import KINDS, node_label, shown
from token_trace.graph import Graph
from token_trace.interventions import Intervention
from token_trace.loading import is_bundled
from token_trace.neuronpedia import embed_url, feature_url, quick_list_url
from token_trace.nodes import top_nodes, without_bos
from token_trace.options import METHODS
from token_trace.records import Trace

#: Rows the table shows; the full table is in the exports.
TABLE_ROWS = 300
QUICK_LIST_SIZE = 20
PANEL_HINT = (
    '<div class="tt-panel tt-muted">Click a row of the table to see that feature on Neuronpedia '
    "(or its offline card for the bundled model).</div>"
)
TABLE_COLUMNS = {
    "node": "node",
    "layer": "layer",
    "position": "pos",
    "token": "token",
    "node_type": "type",
    "feature": "feature",
    "label": "label",
    "activation": "activation",
    "attribution": "attribution",
}


GUIDE = """
**Attribution** estimates how much the metric (shown above the tokens) would fall if a node were set
to its baseline: zero, or its value on the counterfactual prompt. Red nodes support the prediction,
blue ones work against it.

**Nodes** are every active SAE feature at every token position and layer, plus one **error** node
per position and layer: the part of the activation the SAE does not reconstruct. A large error bar
means that layer's SAE misses part of what the model does there.

**Token colours** show, per token, the mean over layers of its summed attribution. The first token
(BOS) is an attention sink with outsized values; *Hide BOS* leaves it out of rankings and charts.

**Methods**: attribution patching (AtP) is one forward and one backward pass, a first-order
estimate; integrated gradients (IG) averages gradients on the way to the baseline and is more
faithful where attention saturates. Check the largest nodes by real ablation before relying on them.

**Answers**: a leading space is part of a token. GPT-2 reads `' Mary'` (with the space, as after
another word) and `'Mary'` as different tokens; the summary shows the token(s) actually scored.
"""


def visible_token(token: str) -> str:
    """A token as text a reader can see: newlines and tabs as arrows (spaces are kept)."""
    return token.replace("\n", "↵").replace("\t", "⇥").replace("\r", "")


def token_label(position: int, token: str) -> str:
    """`12: ' Mary'`, escaped for plotly's labels (quoted so punctuation and spaces show)."""
    return html.escape(f"{position}: {quoted_token(token)}")


def format_value(value: float) -> str:
    """Signed, three significant digits, with a real minus sign: `+0.123`, `−4.56e-05`."""
    return f"{value:+.3g}".replace("-", "−")


def quoted_token(token: str) -> str:
    """A token in quotes, so leading spaces show: `' Mary'`."""
    return f"'{visible_token(token)}'"


def _strength(value: float, scale: float) -> float:
    return min(1.0, abs(value) / scale) if scale > 0 else 0.0


def _background(value: float, scale: float) -> str:
    return signed_background(value, _strength(value, scale))


# --------------------------------------------------------------------------- tokens


def tokens_html(result: Trace) -> str:
    """Every token coloured by its total attribution (`position_totals`), value printed beneath.

    The colour scale ignores BOS, whose outsized totals would wash out every other token. The last
    position (where the prediction is read) is outlined, and the target follows it.
    """
    tokens = result.prompt.tokens
    totals = result.position_totals().set_index("position")["attribution"]
    bos = result.prompt.bos_position
    scored = totals.drop(index=bos, errors="ignore") if bos is not None else totals
    scale = float(scored.abs().max()) if len(scored) else 0.0
    last = len(tokens) - 1
    spans = []
    for position, token in enumerate(tokens):
        value = float(totals.get(position, 0.0))
        classes = ["tt-tok"]
        if position == bos:
            classes.append("tt-bos")
        if position == last:
            classes.append("tt-last")
        if _strength(value, scale) > 0.55:
            classes.append("tt-strong")  # light text on a dark background
        style = "" if position == bos else f' style="background:{_background(value, scale)}"'
        title = f"position {position} · {quoted_token(token)} · total attribution {value:+.4g}"
        spans.append(
            f'<span class="{" ".join(classes)}" title="{html.escape(title)}"{style}>'
            f'<span class="tt-text">{html.escape(visible_token(token))}</span>'
            f'<span class="tt-val">{format_value(value)}</span></span>'
        )
    target = result.prompt.target
    if target is not None:
        spans.append('<span class="tt-arrow" aria-hidden="true">→</span>')
        spans.append(
            f'<span class="tt-tok tt-target" title="the token(s) the metric scores">'
            f'<span class="tt-text">{html.escape(visible_token(target))}</span>'
            f'<span class="tt-val">target</span></span>'
        )
    legend = (
        '<div class="tt-legend">'
        f'<span><i style="background:{_background(1, 1)}"></i>raises the metric</span>'
        f'<span><i style="background:{_background(-1, 1)}"></i>lowers it</span>'
        f"<span>scale ±{scale:.3g} (mean over layers of each token's summed attribution"
        f"{', BOS excluded' if bos is not None else ''})</span></div>"
    )
    return f'<div class="tt-tokens"><div class="tt-row">{"".join(spans)}</div>{legend}</div>'


def predictions(result: Trace) -> dict[str, float]:
    """The model's top next-token predictions, for `gr.Label` (quoted so spaces show)."""
    return {quoted_token(p.token): p.probability for p in result.top_predictions}


def summary_html(result: Trace, seconds: float | None) -> str:
    """What was measured (metric and value, the token(s) scored, method, baseline, size), and any
    warning the library raised (unknown words) in a box of its own."""
    metric = result.metric
    line = f"<b>{html.escape(metric.description)}</b> = {format_value(metric.value)}"
    if metric.name == "logprob":
        line += f" (p = {math.exp(metric.value):.3g})"
    baseline = "zero baseline (features and errors ablated)"
    if result.baseline == "counterfactual" and metric.baseline_value is not None:
        baseline = f"counterfactual baseline (metric there {format_value(metric.baseline_value)})"
    method = METHODS.get(result.method, result.method)
    if result.ig_steps:
        method += f", {result.ig_steps} steps"
    nodes = result.nodes
    n_features = int((nodes["node_type"] == "feature").sum())
    parts = [line]
    if result.prompt.target is not None:
        parts.append(f"scores {html.escape(quoted_token(result.prompt.target))}")
    parts += [
        html.escape(method),
        baseline,
        f"{len(result.saes)} SAEs",
        f"{n_features:,} active features + {len(nodes) - n_features:,} error nodes",
    ]
    if seconds is not None:
        parts.append(f"{seconds:.2f} s")
    warnings = "".join(
        f'<div class="tt-warning">⚠ {html.escape(warning)}</div>' for warning in result.warnings
    )
    return f'<div class="tt-summary">{" · ".join(parts)}{warnings}</div>'


WAITING = (
    '<div class="tt-summary tt-muted">Type a prompt and press Trace, or click an example: the '
    "metric, the tokens coloured by attribution and the model's predictions appear here.</div>"
)


def stale_summary_html() -> str:
    """The summary after a failed request: the previous results are cleared, not left standing."""
    return (
        '<div class="tt-summary tt-stale">No results: the last request failed (its message is '
        "shown above). Fix the input and press Trace again.</div>"
    )


# --------------------------------------------------------------------------- table


def filtered(result: Trace, features_only: bool, hide_bos: bool) -> pd.DataFrame:
    """The node table under the two filters every view shares."""
    df = without_bos(result) if hide_bos else result.nodes
    if features_only:
        df = df[df["node_type"] == "feature"]
    return df


def matches(df: pd.DataFrame, query: str) -> pd.Series:
    """Rows matching a search: a number is a feature id; text is looked for in the token and in
    the SAE's name (case-insensitive)."""
    query = query.strip()
    if query.isdigit():
        return df["feature"] == int(query)
    hit = df["token"].str.contains(query, case=False, regex=False)
    return hit | df["sae_id"].astype(str).str.contains(query, case=False, regex=False)


def _significant(values: pd.Series, digits: int = 4) -> pd.Series:
    """Each value to `digits` significant digits: short to read, still numbers (so sortable)."""
    return values.map(lambda value: float(f"{value:.{digits}g}"))


def empty_table() -> pd.DataFrame:
    """The table before any run: the real column headers, no rows."""
    return pd.DataFrame(columns=list(TABLE_COLUMNS.values()))


def table_view(result: Trace, features_only: bool, hide_bos: bool, query: str) -> pd.DataFrame:
    """The top rows by |attribution| under the filters, with a `node` column: the row's index in
    the full table, which is how a selected row is found again whatever the table's sort order."""
    view = filtered(result, features_only, hide_bos)
    if query.strip():
        view = view[matches(view, query)]
    view = top_nodes(view, TABLE_ROWS)
    if "label" not in view.columns:  # a trace not labelled (`Trace.with_labels`)
        view = view.assign(label="")
    out = view.reset_index(names="node")[list(TABLE_COLUMNS)]
    out["node_type"] = out["node_type"].astype(str)
    out["token"] = out["token"].map(visible_token)
    for column in ("activation", "attribution"):
        out[column] = _significant(out[column].astype(float))
    return out.rename(columns=TABLE_COLUMNS)


def node_from_row(row: list | Mapping | None, index: int | None, view: pd.DataFrame) -> int | None:
    """The full table's index of a clicked row, from the row's values or else its position."""
    if isinstance(row, Mapping):
        row = list(row.values())
    if row:
        return int(row[0])
    if index is not None and 0 <= index < len(view):
        return int(view.iloc[index]["node"])
    return None


# --------------------------------------------------------------------------- feature panel


def _node_header(node: pd.Series) -> str:
    kind = "SAE error node" if node["node_type"] == "error" else f"feature {int(node['feature'])}"
    label = str(node.get("label") or "")
    shown = f'<div class="tt-label">{html.escape(label)}</div>' if label else ""
    return (
        f'<div class="tt-node-head"><b>{html.escape(str(node["sae_id"]))}</b> · {kind} · '
        f"position {int(node['position'])} {html.escape(quoted_token(node['token']))} · "
        f"activation {format_value(float(node['activation']))} · "
        f"attribution <b>{format_value(float(node['attribution']))}</b>{shown}</div>"
    )


def feature_panel_html(
    result: Trace,
    node_index: int | None,
    *,
    offline: bool,
) -> str:
    """The panel for one selected node: Neuronpedia's page in an iframe, or the offline card its
    release ships (`loading.feature_card`)."""
    if node_index is None or node_index not in result.nodes.index:
        return PANEL_HINT
    node = result.nodes.loc[node_index]
    head = _node_header(node)
    if node["node_type"] == "error":
        body = (
            "<p>The part of this activation the SAE does not reconstruct. Its attribution is "
            "what the SAE's features miss here; it has no feature page.</p>"
        )
        return f'<div class="tt-panel">{head}{body}</div>'
    feature = int(node["feature"])
    np_id = result.sae(str(node["hook_name"])).neuronpedia_id
    if np_id is not None:
        link = html.escape(feature_url(np_id, feature))
        frame = html.escape(embed_url(np_id, feature))
        note = " (Neuronpedia needs internet access)" if offline else ""
        body = (
            f'<p><a href="{link}" target="_blank" rel="noopener">Open on Neuronpedia ↗</a>'
            f"{note}</p>"
            f'<iframe class="tt-np" src="{frame}" loading="lazy" title="Neuronpedia feature"'
            ' referrerpolicy="no-referrer"></iframe>'
        )
        return f'<div class="tt-panel">{head}{body}</div>'
    record = result.sae(str(node["hook_name"]))
    details = loading.feature_card(record.release, record.hook_name, feature)
    if details is None:
        body = "<p>No Neuronpedia page or feature card is known for this SAE.</p>"
    else:
        body = feature_card_html(details)
    return f'<div class="tt-panel">{head}{body}</div>'


def feature_card_html(card: Mapping) -> str:
    """The bundled model's offline card: density, promoted tokens, top-activating contexts.

    `card` is `token_trace.loading.feature_card(...)`: `density`, `top_logits` ([token, effect]
    pairs) and `contexts` (`tokens`, the activating token's `index`, its `activation`).
    """
    logits = "".join(
        f'<span class="tt-chip">{html.escape(quoted_token(token))} '
        f"<small>{format_value(effect)}</small></span>"
        for token, effect in card.get("top_logits", [])
    )
    contexts = []
    for context in card.get("contexts", []):
        pieces = [
            f'<mark title="activation {context["activation"]:.3g}">{html.escape(token)}</mark>'
            if i == context["index"]
            else html.escape(token)
            for i, token in enumerate(context["tokens"])
        ]
        contexts.append(
            f'<li><span class="tt-context">{"".join(pieces)}</span> '
            f"<small>{context['activation']:.3g}</small></li>"
        )
    return (
        '<div class="tt-card">'
        f"<p>Fires on <b>{100 * card.get('density', 0.0):.2g}%</b> of held-out tokens "
        "(offline card: the bundled model has no Neuronpedia pages).</p>"
        f"<p><b>Promotes</b> {logits or '—'}</p>"
        f"<p><b>Top-activating contexts</b></p><ol>{''.join(contexts) or '<li>none</li>'}</ol>"
        "</div>"
    )


def quick_links_html(result: Trace, hide_bos: bool) -> str:
    """Links to Neuronpedia quick-lists of the top positive and top negative features."""
    pages = {sae.hook_name: sae.neuronpedia_id for sae in result.saes if sae.neuronpedia_id}
    if not pages:
        return (
            '<div class="tt-links tt-muted">This model has no Neuronpedia pages; click a row for '
            "its offline feature card.</div>"
        )
    features = filtered(result, features_only=True, hide_bos=hide_bos)
    features = features[features["hook_name"].astype(str).isin(pages)]
    links = []
    for name, ascending in (("positive", False), ("negative", True)):
        signed = features[features["attribution"] < 0 if ascending else features["attribution"] > 0]
        top = signed.sort_values("attribution", ascending=ascending)
        top = top.drop_duplicates(["sae_id", "feature"]).head(QUICK_LIST_SIZE)
        if top.empty:
            continue
        pairs = [
            (pages[str(hook)], int(feature))
            for hook, feature in zip(top["hook_name"], top["feature"])
        ]
        url = quick_list_url(f"token-trace top {name} features", pairs)
        links.append(
            f'<a href="{html.escape(url)}" target="_blank" rel="noopener">'
            f"Top {len(pairs)} {name} features on Neuronpedia ↗</a>"
        )
    return f'<div class="tt-links">{" · ".join(links)}</div>' if links else ""


def banner_html(offline: bool, available: Sequence[Preset] = (), selected: str = "") -> str:
    """The offline notice shown at the top of the page (empty when online): which presets run
    without a network (`available`: the bundled model, and those whose files are all in the
    local Hugging Face cache) and which one is `selected`."""
    if not offline:
        return ""
    bundled = [preset for preset in available if is_bundled(preset.release)]
    cached = [preset for preset in available if not is_bundled(preset.release)]
    parts = []
    if bundled:
        parts.append(_preset_names(bundled) + " (bundled with token-trace)")
    if cached:
        parts.append(_preset_names(cached) + " (every file in the local Hugging Face cache)")
    runs = " and ".join(parts) if parts else "no model"
    chosen = f" <code>{html.escape(selected)}</code> is selected." if selected else ""
    return (
        '<div class="tt-banner"><b>Offline mode.</b> The Hugging Face hub cannot be reached, so '
        f"only models already on this machine can run: {runs}. Others would need a download "
        f"and fail at once.{chosen}</div>"
    )


def _preset_names(presets: Sequence[Preset]) -> str:
    return ", ".join(f"<code>{html.escape(preset.release)}</code>" for preset in presets)


# --------------------------------------------------------------------------- graph and checks

NEURONPEDIA_NOTE = (
    '<div class="tt-links tt-muted">The download is Neuronpedia\'s attribution-graph JSON: check '
    "it on Neuronpedia's graph validator page, then upload it there (its graph upload takes the "
    "file with your API key) to explore it in Neuronpedia's graph viewer.</div>"
)


UPLOAD_KEY_NOTE = (
    "Used for this one upload and sent only to Neuronpedia: it is not stored, logged or put in "
    "links. The graph goes up as drawn (thresholds and pins)."
)


def upload_html(url: str) -> str:
    """Where an uploaded graph now lives."""
    link = html.escape(url, quote=True)
    return (
        f'<div class="tt-summary">Uploaded: <a href="{link}" target="_blank" rel="noopener">'
        f"{html.escape(url)}</a></div>"
    )


def graph_summary_html(
    graph: Graph, method: str, show_errors: bool = True, only: Sequence[str] | None = None
) -> str:
    """Counts (of what the figure shows: with `only`, the pinned subgraph), the error share, and
    what the graph is built from."""
    view = shown(graph, show_errors, only)
    hidden = "" if show_errors else " (error nodes hidden)"
    what = "in the pinned subgraph" if only is not None else "kept"
    parts = [
        f"<b>{view.n_sae_nodes}</b> SAE nodes and <b>{len(view.edges):,}</b> edges {what}{hidden}, "
        f"of {graph.max_nodes} nodes and {len(graph.candidate_edges):,} edges computed",
        f"error nodes carry <b>{view.error_share:.0%}</b> of the shown influence",
    ]
    note = ""
    if method != "atp":
        note = (
            '<div class="tt-warning">Graphs are built from attribution patching: the nodes and '
            "edges here are AtP estimates, whatever the method chosen above.</div>"
        )
    return f'<div class="tt-summary">{" · ".join(parts)}{note}</div>'


#: Inputs and outputs a graph card lists for its node.
CARD_LINKS = 8


def graph_card_html(graph: Graph, node_id: str | None, pinned: bool = False) -> str:
    """Beside the graph: the clicked node (and whether it is pinned), and its strongest inputs
    and outputs in the shown graph with their weights and labels."""
    if not node_id:
        return GRAPH_CARD_HINT
    nodes = graph.nodes.set_index("node_id")
    if node_id not in nodes.index:
        return _panel_message(f"{node_id!r} is not in the graph as pruned now.")
    node = nodes.loc[node_id]
    kind, name = KINDS[str(node["node_type"])], node_label(node.to_dict())
    token = quoted_token(str(node["token"]))
    head = (
        f'<div class="tt-node-head">{html.escape(kind)} <b>{html.escape(name)}</b> · '
        f"{html.escape(token)} · attribution "
        f"<b>{format_value(float(node['attribution']))}</b>"
        f"{' · <b>pinned</b>' if pinned else ''}</div>"
    )
    edges = graph.edges
    lists = []
    for title, chosen, other in (
        ("Inputs", edges[edges["target"] == node_id], "source"),
        ("Outputs", edges[edges["source"] == node_id], "target"),
    ):
        top = chosen.reindex(chosen["weight"].abs().sort_values(ascending=False).index)
        items = "".join(
            f"<li>{format_value(weight)} · {html.escape(node_label(nodes.loc[end].to_dict()))} "
            f"<span class='tt-muted'>({html.escape(end)})</span></li>"
            for end, weight in zip(top[other].head(CARD_LINKS), top["weight"].head(CARD_LINKS))
        )
        lists.append(f"<p><b>{title}</b> ({len(chosen)})</p><ol>{items or '<li>none</li>'}</ol>")
    return f'<div class="tt-panel tt-graph-card">{head}{"".join(lists)}</div>'


GRAPH_CARD_HINT = (
    '<div class="tt-panel tt-graph-card"><p class="tt-note">Click a node of the graph: its '
    "edges light up and its strongest inputs and outputs are listed here.</p></div>"
)


def graph_node_panel_html(result: Trace, node_id: str, *, offline: bool) -> str:
    """The panel for a node given by id (a graph click or a shared link): the table row's panel
    for SAE nodes, a card for the token and metric nodes, and a plain message for an id that names
    no node of this run."""
    match = GRAPH_NODE_ID.fullmatch(node_id.strip())
    if match is None:
        return _panel_message(
            f"{node_id!r} is not a node id: a node is layer_feature_position (e.g. 1_23_4), "
            "E_token_position for a prompt token."
        )
    layer, feature, position = match[1], int(match[2]), int(match[3])
    tokens = result.prompt.tokens
    if layer == "E":
        if position >= len(tokens):
            return _panel_message(f"The prompt has no token {position} (it has {len(tokens)}).")
        return (
            f'<div class="tt-panel"><div class="tt-node-head">token {position} '
            f"{html.escape(quoted_token(tokens[position]))}: the prompt's embedding entering the "
            "model</div></div>"
        )
    metric_layer = max(sae.layer for sae in result.saes) + 1
    if int(layer) == metric_layer and position in (result.metric.positions or ()):
        return (
            f'<div class="tt-panel"><div class="tt-node-head">the metric: '
            f"<b>{html.escape(result.metric.description)}</b> = "
            f"{format_value(result.metric.value)}</div></div>"
        )
    nodes = result.nodes
    found = nodes.index[
        (nodes["layer"] == int(layer))
        & (nodes["feature"] == feature)
        & (nodes["position"] == position)
    ]
    if not len(found):
        return _panel_message(
            f"This run has no node {node_id!r}: no SAE at layer {layer} has feature {feature} "
            f"active at position {position}."
        )
    return feature_panel_html(result, int(found[0]), offline=offline)


def _panel_message(text: str) -> str:
    return f'<div class="tt-panel"><p class="tt-note">{html.escape(text)}</p></div>'


def verification_html(check: Verification) -> str:
    """The checks' numbers, and a warning for each layer whose estimate has the wrong sign."""
    line = (
        f"Real ablations of the top {len(check.nodes)} nodes: sign agreement "
        f"<b>{check.sign_agreement:.0%}</b>, Spearman ρ <b>{check.rank_correlation:.2f}</b>."
    )
    wrong = check.layers_with_wrong_sign
    warning = ""
    if wrong:
        names = ", ".join(html.escape(name) for name in wrong)
        warning = (
            f'<div class="tt-warning">⚠ The summed estimate has the wrong sign at {names}: '
            "the linear estimate is poor there (attention saturation, large nodes). Try "
            "integrated gradients (IG), whose layer totals approach the real effect.</div>"
        )
    return f'<div class="tt-summary">{line}{warning}</div>'


def intervention_html(result: Intervention, metric: str) -> str:
    """What the edits did: the metric before and after, the top predictions side by side, the
    target's logit change, and the continuations with and without the edits."""
    change = result.metric_after - result.metric_before
    head = (
        f"<p><b>{html.escape(metric)}</b>: {format_value(result.metric_before)} → "
        f"<b>{format_value(result.metric_after)}</b> ({format_value(change)}) with "
        f"{len(result.edits)} edit{'s' if len(result.edits) != 1 else ''}.</p>"
    )
    rows = "".join(
        f"<tr><td>{html.escape(quoted_token(b.token))} {b.probability:.1%}</td>"
        f"<td>{html.escape(quoted_token(a.token))} {a.probability:.1%}</td></tr>"
        for b, a in zip(result.predictions_before[:6], result.predictions_after[:6])
    )
    table = (
        '<table class="tt-whatif"><tr><th>top predictions before</th><th>after</th></tr>'
        f"{rows}</table>"
    )
    generated = ""
    if result.generated_before is not None:
        generated = (
            f"<p>Continuation before: <span class='tt-context'>"
            f"{html.escape(result.generated_before)}</span><br>after: <span class='tt-context'>"
            f"<b>{html.escape(result.generated_after or '')}</b></span></p>"
        )
    return f'<div class="tt-summary">{head}{table}{generated}</div>'


def faithfulness_html(kept: Faithfulness, curve: pd.DataFrame) -> str:
    """One line: how much of the metric the drawn graph's nodes recover, and the size that
    reaches 80% along the curve; where SAE errors limit it, say so."""
    share = kept.faithfulness
    reach = curve.loc[curve["faithfulness"] >= 0.8, "size"]
    reached = f"; {int(reach.min())} nodes reach 80%" if len(reach) else "; no size reaches 80%"
    return (
        f'<div class="tt-summary">These <b>{kept.n_nodes}</b> SAE nodes recover '
        f"<b>{share:.0%}</b> of the metric (every other node at its baseline, real reruns; "
        f"their complement recovers {kept.complement_faithfulness:.0%}){reached}. Error nodes "
        "count as nodes: a graph that needs them is one where the SAEs leave the behaviour "
        "unexplained.</div>"
    )
