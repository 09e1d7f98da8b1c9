"""token-trace's web app: which SAE features carry a prediction, in one Gradio page.

Runs as a Hugging Face ZeroGPU Space, locally (`python app.py`), or behind `gradio_client`
(endpoints `/attribute` and `/summary`). This file is layout and wiring only: requests are parsed
in `token_trace.app.requests`, run (and cached, and put on the GPU) by `token_trace.app.service`,
turned into outputs by `token_trace.app.page`, drawn by `token_trace.app.render` and `.plots`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import gradio as gr

from token_trace.app import render
from token_trace.app.api import endpoint, parameter
from token_trace.app.page import (
    DEFAULT_MAX_NODES,
    DEFAULT_VERIFY_NODES,
    FILTERED_OUTPUTS,
    GRAPH_OUTPUTS,
    MAX_GRAPH_NODES,
    OUTPUTS,
    VERIFY_OUTPUTS,
    Filters,
    GraphChoice,
    Page,
)
from token_trace.app.requests import (
    MAX_IG_STEPS,
    METHOD_LABELS,
    PRESET_ENV,
    RequestFields,
    max_tokens_from_env,
)
from token_trace.app.service import Service, preload, user_errors
from token_trace.app.theme import CSS
from token_trace.loading import go_offline, hub_reachable, release_sae_ids

logger = logging.getLogger("token_trace.app")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
#: Attribution events run at most this many at once (the library runs one per model at a time).
CONCURRENCY = 4
THEME = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")
PRIVATE = {"api_visibility": "private"}
#: Plotly's clicks on the flow graph go to the hidden `tt-graph-click` box (Gradio's Plot has no
#: click event): the clicked node's id is written there and the hidden button pressed.
CLICK_JS = """
() => {
  const bind = () => {
    document.querySelectorAll('#tt-graph .js-plotly-plot').forEach((plot) => {
      if (plot.ttBound || !plot.on) return;
      plot.ttBound = true;
      plot.on('plotly_click', (event) => {
        const point = event.points && event.points[0];
        if (!point || point.customdata === undefined) return;
        const box = document.querySelector('#tt-graph-click textarea, #tt-graph-click input');
        box.value = String(point.customdata);
        box.dispatchEvent(new Event('input', { bubbles: true }));
        setTimeout(() => document.querySelector('#tt-graph-click-go').click(), 50);
      });
    });
  };
  new MutationObserver(bind).observe(document.body, { childList: true, subtree: true });
}
"""


#: Turns the link's query into the full address, shows it and copies it to the clipboard.
COPY_LINK_JS = """
(query) => {
  const url = window.location.origin + window.location.pathname + query;
  if (navigator.clipboard) navigator.clipboard.writeText(url).catch(() => {});
  return url;
}
"""


def layer_choices(release: str) -> gr.CheckboxGroup:
    ids = release_sae_ids(release)
    return gr.CheckboxGroup(choices=ids, value=ids, label="SAEs to attribute to")


def build(page: Page) -> gr.Blocks:
    """The page: inputs, examples, tokens + predictions, table + feature panel, charts."""
    start = page.start
    with gr.Blocks(title="token-trace", analytics_enabled=False, fill_width=True) as demo:
        gr.HTML(
            '<div class="tt-header"><h1>token-trace</h1><p>Which SAE features — and SAE '
            "error terms — carry a language model's prediction, at which token positions and "
            "layers, and by how much.</p></div>"
        )
        gr.HTML(render.banner_html(page.offline, page.presets, start), elem_id="tt-banner")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                text = gr.Textbox(
                    label="Prompt",
                    lines=3,
                    placeholder="When John and Mary went to the shops, John gave the bag to",
                    elem_id="tt-prompt",
                )
                with gr.Row():
                    answer = gr.Textbox(
                        label="Answer (optional)",
                        placeholder="' Mary' — the leading space matters; empty: the last token",
                        elem_id="tt-answer",
                    )
                    contrast = gr.Textbox(
                        label="Contrast answer (optional)",
                        placeholder="' John' — gives logit(answer) − logit(contrast)",
                        elem_id="tt-contrast",
                    )
                counterfactual = gr.Textbox(
                    label="Counterfactual prompt (optional, same number of tokens)",
                    placeholder="Patch nodes to their value on this prompt instead of zero",
                )
            with gr.Column(scale=2):
                release = gr.Dropdown(
                    label="Model · SAE release",
                    choices=[(preset.label, preset.release) for preset in page.presets],
                    value=start,
                )
                method = gr.Radio(
                    label="Method",
                    choices=[(label, key) for key, label in METHOD_LABELS.items()],
                    value="atp",
                )
                ig_steps = gr.Slider(
                    1, MAX_IG_STEPS, value=10, step=1, label="IG steps", visible=False
                )
                with gr.Accordion("Layers (SAEs)", open=False):
                    layers = layer_choices(start)
                run_button = gr.Button("Trace", variant="primary", elem_id="tt-run")
                with gr.Row():
                    link_button = gr.Button("Copy link", size="sm", elem_id="tt-copy-link")
                    share = gr.Textbox(
                        show_label=False,
                        placeholder="a link to these settings appears here",
                        elem_id="tt-share",
                        scale=3,
                    )
        example_fields = [text, release, answer, contrast, counterfactual]
        examples = gr.Dataset(
            components=example_fields,
            samples=[
                [e.text, e.release, e.answer or "", e.contrast or "", e.counterfactual or ""]
                for e in page.examples
            ],
            type="index",
            label="Examples — click one to run it",
            visible=bool(page.examples),
            elem_id="tt-examples",
            sample_labels=[e.label for e in page.examples],
        )

        with gr.Accordion("How to read the results", open=False):
            gr.Markdown(render.GUIDE)
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                summary = gr.HTML(render.WAITING, elem_id="tt-summary")
                tokens = gr.HTML(elem_id="tt-tokens")
            with gr.Column(scale=1, min_width=240):
                predictions = gr.Label(
                    label="Top next-token predictions",
                    num_top_classes=6,
                    elem_id="tt-predictions",
                    visible=False,  # until there are predictions to show
                )

        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                with gr.Row():
                    features_only = gr.Checkbox(label="Features only", value=False)
                    hide_bos = gr.Checkbox(label="Hide BOS", value=True)
                    query = gr.Textbox(
                        label="Search",
                        placeholder="token, feature id or SAE name",
                        scale=2,
                        elem_id="tt-search",
                    )
                table = gr.Dataframe(
                    value=render.empty_table(),
                    label=f"Top {render.TABLE_ROWS} nodes by |attribution| — click a row",
                    interactive=False,
                    wrap=False,
                    elem_id="tt-table",
                    max_height=520,
                )
                links = gr.HTML(elem_id="tt-links")
                with gr.Row():
                    csv = gr.DownloadButton("Nodes (CSV)", size="sm")
                    parquet = gr.DownloadButton("Nodes (Parquet)", size="sm")
                    trace_file = gr.DownloadButton("Trace (Parquet)", size="sm")
                    settings_json = gr.DownloadButton("Settings (JSON)", size="sm")
            with gr.Column(scale=2):
                panel = gr.HTML(render.PANEL_HINT, elem_id="tt-panel")

        heatmap = gr.Plot(label="Layer × position", elem_id="tt-heatmap")
        with gr.Row():
            layer_plot = gr.Plot(label="Features vs error", elem_id="tt-layers")
            scatter = gr.Plot(label="Attribution vs activation", elem_id="tt-scatter")

        with gr.Accordion("Check with real ablations", open=True):
            with gr.Row():
                verify_k = gr.Slider(
                    1, 100, value=DEFAULT_VERIFY_NODES, step=1, label="Top nodes to ablate"
                )
                verify_button = gr.Button("Check with real ablations", elem_id="tt-verify")
            verify_summary = gr.HTML(elem_id="tt-verify-summary")
            with gr.Row():
                verify_scatter = gr.Plot(label="Estimate vs real", elem_id="tt-verify-scatter")
                verify_layers = gr.Plot(label="Per layer", elem_id="tt-verify-layers")

        with gr.Accordion("Flow graph: from the prompt's tokens to the prediction", open=True):
            with gr.Row():
                max_nodes = gr.Slider(
                    10, MAX_GRAPH_NODES, value=DEFAULT_MAX_NODES, step=10, label="Nodes"
                )
                node_threshold = gr.Slider(0.1, 1.0, value=0.8, step=0.01, label="Node threshold")
                edge_threshold = gr.Slider(0.1, 1.0, value=0.98, step=0.01, label="Edge threshold")
                show_errors = gr.Checkbox(label="Show error nodes", value=True)
                graph_button = gr.Button("Build graph", elem_id="tt-graph-run")
            graph_summary = gr.HTML(elem_id="tt-graph-summary")
            graph_plot = gr.Plot(label="Flow graph", elem_id="tt-graph")
            with gr.Row():
                graph_file = gr.DownloadButton("Graph (Neuronpedia JSON)", size="sm")
                gr.HTML(render.NEURONPEDIA_NOTE)
            # A clicked graph node's id, written there by the page's script (see CLICK_JS),
            # which then presses the hidden button.
            graph_click = gr.Textbox(elem_id="tt-graph-click", elem_classes="tt-hidden")
            graph_click_go = gr.Button(elem_id="tt-graph-click-go", elem_classes="tt-hidden")
        state, graph_state, selected = gr.State(), gr.State(), gr.State()
        shared_layers, shared_node = gr.State(), gr.State()

        named = {
            "run": state, "summary": summary, "tokens": tokens, "predictions": predictions,
            "table": table, "heatmap": heatmap, "layer_plot": layer_plot, "scatter": scatter,
            "links": links, "panel": panel, "csv": csv, "parquet": parquet,
            "trace_file": trace_file, "settings_json": settings_json, "text": text,
            "release": release, "answer": answer, "contrast": contrast,
            "counterfactual": counterfactual, "method": method, "features_only": features_only,
            "hide_bos": hide_bos, "query": query, "graph_run": graph_state,
            "graph_plot": graph_plot, "graph_summary": graph_summary, "graph_file": graph_file,
            "verify_summary": verify_summary, "verify_scatter": verify_scatter,
            "verify_layers": verify_layers, "layers": layers,
            "ig_steps": ig_steps, "shared_node": shared_node, "shared": shared_layers,
        }  # fmt: skip

        def to_components(values: dict[str, Any]) -> dict[gr.components.Component, Any]:
            out = {named[name]: value for name, value in values.items()}
            if "predictions" in values:  # shown only with a run's predictions
                out[predictions] = gr.Label(
                    values["predictions"], visible=bool(values["predictions"])
                )
            return out

        outputs = [named[name] for name in OUTPUTS]
        filters = [features_only, hide_bos, query]

        def request(text, release, answer, contrast, method="atp", ig_steps=10, counterfactual=""):
            """The form's fields as a request (the layers travel apart: checkboxes, not text)."""
            return RequestFields(
                text=text, release=release, answer=answer, contrast=contrast, method=method,
                ig_steps=ig_steps, counterfactual=counterfactual,
            )  # fmt: skip

        def run(
            text, release, layers, answer, contrast, method, ig_steps, counterfactual,
            features_only, hide_bos, query, progress=gr.Progress(),  # noqa: B008
        ):  # fmt: skip
            form = request(text, release, answer, contrast, method, ig_steps, counterfactual)
            filters = Filters(features_only, hide_bos, query)
            return to_components(page.run(form, layers, filters, progress))

        def run_example(text, release, answer, contrast, counterfactual, progress=gr.Progress()):  # noqa: B008
            # All of the preset's layers: the layer boxes may still be catching up with it.
            form = request(text, release, answer, contrast, counterfactual=counterfactual)
            return to_components(page.run(form, None, Filters(), progress))

        inputs = [text, release, layers, answer, contrast, method, ig_steps, counterfactual]
        for trigger in (run_button.click, text.submit):
            trigger(user_errors(run), inputs + filters, outputs, **PRIVATE).failure(
                lambda: to_components(page.failed()), None, outputs, **PRIVATE
            )
        examples.click(
            lambda index: to_components(page.example(index)),
            examples,
            [*example_fields, method, *filters],
            **PRIVATE,
        ).then(user_errors(run_example), example_fields, outputs, **PRIVATE).failure(
            lambda: to_components(page.failed()), None, outputs, **PRIVATE
        )
        release.change(layer_choices, release, layers, **PRIVATE)
        method.change(lambda chosen: gr.Slider(visible=chosen == "ig"), method, ig_steps, **PRIVATE)

        cheap = {"concurrency_limit": None, **PRIVATE}
        gr.on(
            [features_only.input, hide_bos.input],
            lambda run, *chosen: to_components(page.views(run, Filters(*chosen))),
            [state, *filters],
            [named[name] for name in FILTERED_OUTPUTS],
            **cheap,
        )
        # `change`, not `input`: a pasted or programmatically filled search filters at once.
        query.change(
            lambda run, *chosen: page.table(run, Filters(*chosen)),
            [state, *filters],
            table,
            **cheap,
        )

        def select(run, features_only, hide_bos, query, event: gr.SelectData):
            index = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
            chosen = Filters(features_only, hide_bos, query)
            return selection(page.select(run, chosen, index, event.row_value))

        def selection(values: dict[str, Any]) -> dict[gr.components.Component, Any]:
            return {panel: values["panel"], selected: values["selected"]}

        table.select(select, [state, *filters], [panel, selected], **cheap)

        fields = [text, release, answer, contrast, method, ig_steps, counterfactual]
        choice = [node_threshold, edge_threshold, show_errors]

        def build_graph(*values, progress=gr.Progress()):  # noqa: B008
            *form, layers_chosen, nodes, node_cut, edge_cut, errors = values
            chosen = GraphChoice(node_cut, edge_cut, errors)
            return to_components(page.graph(request(*form), layers_chosen, nodes, chosen, progress))

        graph_outputs = [graph_state, *(named[name] for name in GRAPH_OUTPUTS)]
        graph_button.click(
            user_errors(build_graph), [*fields, layers, max_nodes, *choice], graph_outputs,
            **PRIVATE,
        )  # fmt: skip
        gr.on(
            [node_threshold.release, edge_threshold.release, show_errors.input],
            lambda run, *chosen: to_components(page.redraw(run, GraphChoice(*chosen))),
            [graph_state, *choice],
            [named[name] for name in GRAPH_OUTPUTS],
            **cheap,
        )
        graph_click_go.click(
            lambda run, node: selection(page.graph_click(run, node)),
            [graph_state, graph_click],
            [panel, selected],
            **cheap,
        )

        # Shareable links: the settings (and the selected node) in the page's URL query.
        def from_link(http: gr.Request):
            values = page.from_link(dict(http.query_params))
            values["shared"] = values.pop("layers", None) if values.pop("shared") else None
            return to_components(values)

        def run_shared(chosen_layers, *values, progress=gr.Progress()):  # noqa: B008
            if chosen_layers is None:  # a plain visit: nothing to run
                return [gr.skip()] * len(outputs)
            text, release, _, *rest = values
            return run(text, release, chosen_layers, *rest, progress=progress)

        link_inputs = [text, release, answer, contrast, counterfactual, method, ig_steps]
        link_outputs = [*link_inputs, layers, shared_layers, shared_node]
        demo.load(user_errors(from_link), None, link_outputs, **PRIVATE).success(
            user_errors(run_shared), [shared_layers, *inputs, *filters], outputs, **PRIVATE
        ).success(page.open_node, [state, shared_node], panel, **PRIVATE)

        def link(text, release, answer, contrast, method, ig_steps, counterfactual, chosen, node):
            form = request(text, release, answer, contrast, method, ig_steps, counterfactual)
            return page.link(form, chosen, node)

        link_button.click(link, [*fields, layers, selected], share, **cheap).then(
            None, share, share, js=COPY_LINK_JS, **cheap
        )

        def check(*values, progress=gr.Progress()):  # noqa: B008
            *form, layers_chosen, k = values
            return to_components(page.verify(request(*form), layers_chosen, k, progress))

        verify_button.click(
            user_errors(check),
            [*fields, layers, verify_k],
            [named[name] for name in VERIFY_OUTPUTS],
            **PRIVATE,
        )
        api(page)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=64)
    return demo


def api(page: Page) -> None:
    """`/attribute` and `/summary`: the request's fields as plain parameters, JSON out."""
    graph_options = [
        parameter("max_nodes", float, DEFAULT_MAX_NODES),
        parameter("node_threshold", float, 0.8),
        parameter("edge_threshold", float, 0.98),
    ]
    endpoints = {
        "attribute": (page.attribute, list[dict], [parameter("top_k", float, 0)]),
        "summary": (page.summary, dict, []),
        "graph": (page.graph_json, dict, graph_options),
        "verify": (page.verify_json, dict, [parameter("top_k", float, DEFAULT_VERIFY_NODES)]),
    }
    extra_help = {
        "top_k": "How many nodes of largest |attribution| (0 for /attribute: every node).",
        "max_nodes": "Nodes of largest |attribution| to compute edges between (1-1000).",
        "node_threshold": "Keep the nodes carrying this share of the influence (0-1).",
        "edge_threshold": "Keep the edges carrying this share of the influence (0-1).",
    }
    for name, (handler, returns, extra) in endpoints.items():
        fn = endpoint(
            handler,
            name=name,
            doc=handler.__doc__ or "",
            returns=returns,
            extra=extra,
            extra_help=extra_help,
        )
        gr.api(user_errors(fn), api_name=name)


def create_app(offline: bool | None = None, max_tokens: int | None = None) -> gr.Blocks:
    """The app for this deployment; `offline` is probed (quickly) and `max_tokens` read from the
    environment unless given."""
    if offline is None:
        offline = not hub_reachable()
    if max_tokens is None:
        max_tokens = max_tokens_from_env()
    if offline:
        go_offline()
    page = Page(offline, Service(max_tokens), EXAMPLES_DIR)
    if offline:
        logger.warning(
            "Hugging Face hub unreachable: starting offline on %s; available offline: %s",
            page.start,
            ", ".join(preset.release for preset in page.presets),
        )
        wanted = os.environ.get(PRESET_ENV, "").strip()
        if wanted and wanted != page.start:
            logger.warning("%s=%s is not in the local Hugging Face cache", PRESET_ENV, wanted)
    elif os.environ.get("SPACE_ID"):
        # On a Space, load the default weights at startup, as ZeroGPU expects, so the first
        # visitor does not wait for a download.
        preload(page.start)
    return build(page)


def launch(demo: gr.Blocks, **options: Any) -> Any:
    """`demo.launch` with the page's theme, CSS and script (Gradio 6 takes them at launch), and
    the API endpoints also served as MCP tools (at /gradio_api/mcp).

    Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, which Gradio reads itself.
    """
    return demo.launch(theme=THEME, css=CSS, js=CLICK_JS, mcp_server=True, **options)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    launch(create_app(), show_error=True)
