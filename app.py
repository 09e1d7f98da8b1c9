"""token-trace's web app: which SAE features carry a prediction, in one Gradio page.

Runs as a Hugging Face ZeroGPU Space, locally (`python app.py`), or behind `gradio_client` and MCP
(the named endpoints of `token_trace.app.api`). This file is layout and wiring only, one builder
per section: requests are parsed in `token_trace.app.requests`, run (and cached, and put on the
GPU) by `token_trace.app.service`, turned into outputs by `token_trace.app.page`, drawn by
`token_trace.app.render` and `.plots`. Every component a handler reads or fills is registered
under the name `page` uses for it (`Components`), and handlers take their inputs as a dict, so no
list of components has to be kept in step with a function's arguments.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gradio as gr

from token_trace.app import render
from token_trace.app.api import add_endpoints
from token_trace.app.page import (
    DEFAULT_VERIFY_NODES,
    EXAMPLE_FIELDS,
    FAITH_OUTPUTS,
    FILTERED_OUTPUTS,
    FORM_FIELDS,
    GRAPH_OUTPUTS,
    OUTPUTS,
    VERIFY_OUTPUTS,
    Filters,
    GraphChoice,
    Page,
)
from token_trace.app.requests import (
    EDITS_HELP,
    MAX_GRAPH_NODES,
    MAX_IG_STEPS,
    PINS_HELP,
    PRESET_ENV,
    RequestFields,
    max_generate_from_env,
    max_tokens_from_env,
    parse_pins,
)
from token_trace.app.service import Service, preload, user_errors
from token_trace.app.theme import CSS
from token_trace.loading import go_offline, hub_reachable, release_sae_ids
from token_trace.options import (
    DEFAULT_EDGE_THRESHOLD,
    DEFAULT_MAX_NODES,
    DEFAULT_NODE_THRESHOLD,
    METHODS,
    default_backend,
)

logger = logging.getLogger("token_trace.app")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
#: Attribution events run at most this many at once (the library runs one per model at a time).
CONCURRENCY = 4
THEME = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")
PRIVATE = {"api_visibility": "private"}
CHEAP = {"concurrency_limit": None, **PRIVATE}
FILTER_FIELDS = ("features_only", "hide_bos", "query")
GRAPH_FIELDS = (
    "max_nodes", "node_threshold", "edge_threshold", "show_errors", "pinned", "pinned_only",
)  # fmt: skip
#: Plotly's clicks on the flow graph go to the hidden `tt-graph-click` box (Gradio's Plot has no
#: click event): the clicked node's id is written there and the hidden button pressed.
CLICK_JS = """
() => {
  const bind = () => {
    document.querySelectorAll('#tt-graph .js-plotly-plot').forEach((plot) => {
      if (plot.ttBound || !plot.on) return;
      plot.ttBound = true;
      // A new figure opens scrolled to its focus (the prediction with the title and legend, or
      // the pinned nodes); one redrawn by a click keeps where the reader had scrolled to.
      // The figure's `meta.focus` is the span, in its pixels, the reader should see first.
      const frame = document.querySelector('#tt-graph');
      if (frame) {
        const [left, right] = (plot.layout.meta && plot.layout.meta.focus) || [0, 0];
        const start = Math.max(0, Math.min(left, right - frame.clientWidth));
        frame.scrollLeft = frame.ttKeep === undefined ? start : frame.ttKeep;
        frame.ttKeep = undefined;
      }
      plot.on('plotly_click', (event) => {
        const point = event.points && event.points[0];
        if (!point || point.customdata === undefined) return;
        if (frame) frame.ttKeep = frame.scrollLeft;
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


def show_js(selector: str) -> str:
    """A script that brings `selector` into view when it is off screen (a card filled by a
    click lands below the fold on a narrow screen)."""
    return f"""
() => {{
  const card = document.querySelector('{selector}');
  if (!card) return;
  const box = card.getBoundingClientRect();
  if (box.top < 0 || box.top > window.innerHeight - 40) {{
    card.scrollIntoView({{ behavior: 'instant', block: 'start' }});
  }}
}}
"""


#: Turns the link's query into the full address, shows it and copies it to the clipboard.
COPY_LINK_JS = """
(query) => {
  const url = window.location.origin + window.location.pathname + query;
  if (navigator.clipboard) navigator.clipboard.writeText(url).catch(() => {});
  return url;
}
"""


class Components:
    """The page's components by the names `page` gives its inputs and outputs."""

    def __init__(self) -> None:
        self.by_name: dict[str, gr.components.Component] = {}

    def add(self, name: str, component: Any) -> Any:
        self.by_name[name] = component
        return component

    def __getitem__(self, name: str) -> Any:
        return self.by_name[name]

    def of(self, names: Iterable[str]) -> list[Any]:
        return [self.by_name[name] for name in names]

    def inputs(self, *groups: Iterable[str]) -> set[Any]:
        """Components as a set: the handler then receives one dict of their values."""
        return {self.by_name[name] for group in groups for name in group}

    def read(self, given: dict[Any, Any]) -> dict[str, Any]:
        """A set-input handler's values by name."""
        return {name: given[c] for name, c in self.by_name.items() if c in given}

    def fill(self, values: dict[str, Any]) -> dict[Any, Any]:
        """Handler outputs by name -> by component (predictions show only when there are some)."""
        out = {self.by_name[name]: value for name, value in values.items()}
        if "predictions" in values:
            shown = bool(values["predictions"])
            out[self.by_name["predictions"]] = gr.Label(values["predictions"], visible=shown)
        return out


def request_of(values: dict[str, Any]) -> RequestFields:
    """The form's values as a request (the layers travel apart: checkboxes, not text)."""
    return RequestFields(**{name: values[name] for name in FORM_FIELDS})


def filters_of(values: dict[str, Any]) -> Filters:
    return Filters(*(values[name] for name in FILTER_FIELDS))


def choice_of(values: dict[str, Any]) -> GraphChoice:
    return GraphChoice(
        values["node_threshold"], values["edge_threshold"], values["show_errors"],
        parse_pins(values["pinned"]), bool(values["pinned_only"]),
    )  # fmt: skip


def layer_choices(release: str) -> gr.CheckboxGroup:
    ids = release_sae_ids(release)
    return gr.CheckboxGroup(choices=ids, value=ids, label="SAEs to attribute to")


# --------------------------------------------------------------------------- sections


def form_section(ui: Components, page: Page) -> None:
    """Prompt, answers and counterfactual; model, method and layers; run and link buttons."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            ui.add("text", gr.Textbox(
                label="Prompt", lines=3, elem_id="tt-prompt",
                placeholder="When John and Mary went to the shops, John gave the bag to",
            ))  # fmt: skip
            with gr.Row():
                ui.add("answer", gr.Textbox(
                    label="Answer (optional)", elem_id="tt-answer",
                    placeholder="' Mary' — the leading space matters; empty: the last token",
                ))  # fmt: skip
                ui.add("contrast", gr.Textbox(
                    label="Contrast answer (optional)", elem_id="tt-contrast",
                    placeholder="' John' — gives logit(answer) − logit(contrast)",
                ))  # fmt: skip
            ui.add("counterfactual", gr.Textbox(
                label="Counterfactual prompt (optional, same number of tokens)",
                placeholder="Patch nodes to their value on this prompt instead of zero",
            ))  # fmt: skip
        with gr.Column(scale=2):
            ui.add("release", gr.Dropdown(
                label="Model · SAE release", value=page.start,
                choices=[(preset.label, preset.release) for preset in page.presets],
            ))  # fmt: skip
            ui.add("method", gr.Radio(
                label="Method", value="atp",
                choices=[(label, key) for key, label in METHODS.items()],
            ))  # fmt: skip
            ui.add("ig_steps", gr.Slider(
                1, MAX_IG_STEPS, value=10, step=1, label="IG steps", visible=False
            ))  # fmt: skip
            with gr.Accordion("Layers (SAEs)", open=False):
                ui.add("layers", layer_choices(page.start))
            ui.add("run_button", gr.Button("Trace", variant="primary", elem_id="tt-run"))
            with gr.Row():
                ui.add("link_button", gr.Button("Copy link", size="sm", elem_id="tt-copy-link"))
                ui.add("share", gr.Textbox(
                    show_label=False, placeholder="a link to these settings appears here",
                    elem_id="tt-share", scale=3,
                ))  # fmt: skip
    ui.add("examples", gr.Dataset(
        components=ui.of(EXAMPLE_FIELDS),
        samples=page.example_rows(),
        type="index",
        label="Examples — click one to run it",
        visible=bool(page.examples),
        elem_id="tt-examples",
        sample_labels=[e.label for e in page.examples],
    ))  # fmt: skip


def results_section(ui: Components) -> None:
    """The run's summary, the coloured tokens and the model's next-token predictions."""
    with gr.Accordion("How to read the results", open=False):
        gr.Markdown(render.GUIDE)
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            ui.add("summary", gr.HTML(render.WAITING, elem_id="tt-summary"))
            ui.add("tokens", gr.HTML(elem_id="tt-tokens"))
        with gr.Column(scale=1, min_width=240):
            ui.add("predictions", gr.Label(
                label="Top next-token predictions", num_top_classes=6,
                elem_id="tt-predictions", visible=False,  # until there are predictions
            ))  # fmt: skip


def table_section(ui: Components) -> None:
    """Filters, the node table, quick-list links and downloads; the selected node's panel."""
    with gr.Row(equal_height=False, elem_id="tt-table-row"):
        with gr.Column(scale=3):
            with gr.Row(elem_id="tt-filters"):
                ui.add("features_only", gr.Checkbox(label="Features only", value=False))
                ui.add("hide_bos", gr.Checkbox(label="Hide BOS", value=True))
                ui.add("query", gr.Textbox(
                    label="Search", placeholder="token, feature or SAE", scale=2,
                    elem_id="tt-search",
                ))  # fmt: skip
            ui.add("table", gr.Dataframe(
                value=render.empty_table(), interactive=False, wrap=False, elem_id="tt-table",
                label=f"Top {render.TABLE_ROWS} nodes by |attribution| — click a row for its "
                "card; sort by a column from its header",
                max_height=520,
            ))  # fmt: skip
            ui.add("links", gr.HTML(elem_id="tt-links"))
            with gr.Row():
                ui.add("csv", gr.DownloadButton("Nodes (CSV)", size="sm"))
                ui.add("parquet", gr.DownloadButton("Nodes (Parquet)", size="sm"))
                ui.add("trace_file", gr.DownloadButton("Trace (Parquet)", size="sm"))
                ui.add("settings_json", gr.DownloadButton("Settings (JSON)", size="sm"))
        with gr.Column(scale=2):
            ui.add("panel", gr.HTML(render.PANEL_HINT, elem_id="tt-panel"))


def charts_section(ui: Components) -> None:
    ui.add("heatmap", gr.Plot(label="Layer × position", elem_id="tt-heatmap"))
    with gr.Row():
        ui.add("layer_plot", gr.Plot(label="Features vs error", elem_id="tt-layers"))
        ui.add("scatter", gr.Plot(label="Attribution vs activation", elem_id="tt-scatter"))


def checks_section(ui: Components) -> None:
    """Real ablations of the top nodes and of every layer against their estimates."""
    with gr.Accordion("Check with real ablations", open=True):
        with gr.Row():
            ui.add("verify_k", gr.Slider(
                1, 100, value=DEFAULT_VERIFY_NODES, step=1, label="Top nodes to ablate"
            ))  # fmt: skip
            ui.add("verify_button", gr.Button("Check with real ablations", elem_id="tt-verify"))
        ui.add("verify_summary", gr.HTML(elem_id="tt-verify-summary"))
        with gr.Row():
            ui.add("verify_scatter", gr.Plot(label="Estimate vs real", elem_id="tt-verify-scatter"))
            ui.add("verify_layers", gr.Plot(label="Per layer", elem_id="tt-verify-layers"))


def graph_section(ui: Components) -> None:
    """The flow graph, its controls and download, and the hidden box that carries its clicks."""
    with gr.Accordion("Flow graph: from the prompt's tokens to the prediction", open=True):
        with gr.Row():
            ui.add("max_nodes", gr.Slider(
                10, MAX_GRAPH_NODES, value=DEFAULT_MAX_NODES, step=10, label="Nodes"
            ))  # fmt: skip
            ui.add("node_threshold", gr.Slider(
                0.1, 1.0, value=DEFAULT_NODE_THRESHOLD, step=0.01, label="Node threshold"
            ))  # fmt: skip
            ui.add("edge_threshold", gr.Slider(
                0.1, 1.0, value=DEFAULT_EDGE_THRESHOLD, step=0.01, label="Edge threshold"
            ))  # fmt: skip
            ui.add("show_errors", gr.Checkbox(label="Show error nodes", value=True))
            ui.add("graph_button", gr.Button("Build graph", elem_id="tt-graph-run"))
        ui.add("graph_summary", gr.HTML(elem_id="tt-graph-summary"))
        with gr.Row(equal_height=False, elem_id="tt-graph-row"):
            with gr.Column(scale=3, min_width=320):
                # Wide graphs scroll sideways inside this box (see the theme's CSS).
                ui.add("graph_plot", gr.Plot(label="Flow graph", elem_id="tt-graph"))
            with gr.Column(scale=1, min_width=260):
                ui.add("graph_card", gr.HTML(render.GRAPH_CARD_HINT, elem_id="tt-graph-card"))
                ui.add("pin_button", gr.Button("Pin / unpin this node", size="sm",
                                               elem_id="tt-pin"))  # fmt: skip
                ui.add("pinned_only", gr.Checkbox(
                    label="Show only the pinned subgraph", value=False, elem_id="tt-pinned-only"
                ))  # fmt: skip
        ui.add("pinned", gr.Textbox(label="Pinned nodes", info=PINS_HELP, elem_id="tt-pinned"))
        with gr.Row():
            ui.add("graph_file", gr.DownloadButton("Graph (Neuronpedia JSON)", size="sm"))
            gr.HTML(render.NEURONPEDIA_NOTE)
        with gr.Accordion("Upload the graph to Neuronpedia", open=False):
            ui.add("upload_key", gr.Textbox(
                label="Your Neuronpedia API key", type="password", info=render.UPLOAD_KEY_NOTE,
                elem_id="tt-upload-key",
            ))  # fmt: skip
            ui.add("upload_button", gr.Button("Upload", size="sm", elem_id="tt-upload"))
            ui.add("upload_result", gr.HTML(elem_id="tt-upload-result"))
        with gr.Row():
            ui.add("faith_button", gr.Button("How faithful is this graph?", size="sm",
                                             elem_id="tt-faith-run"))  # fmt: skip
            ui.add("faith_summary", gr.HTML(elem_id="tt-faith-summary"))
        ui.add("faith_plot", gr.Plot(label="Faithfulness", elem_id="tt-faith"))
        # A clicked node's id, written there by the page's script (CLICK_JS), which then presses
        # the hidden button.
        ui.add("graph_click", gr.Textbox(elem_id="tt-graph-click", elem_classes="tt-hidden"))
        ui.add("graph_click_go", gr.Button(elem_id="tt-graph-click-go", elem_classes="tt-hidden"))


def what_if_section(ui: Components) -> None:
    """Edit SAE nodes (ablate, scale, set, patch to the counterfactual) and rerun the model."""
    with gr.Accordion("What if: edit nodes and rerun the model", open=False):
        with gr.Row():
            ui.add("edit_action", gr.Radio(
                ["ablate", "scale", "set", "baseline"], value="ablate", label="Action"
            ))  # fmt: skip
            ui.add("edit_value", gr.Number(value=2.0, label="k or v (scale, set)"))
            ui.add("edit_everywhere", gr.Checkbox(label="At every position", value=False))
            ui.add("edit_add", gr.Button("Add the selected node", size="sm", elem_id="tt-edit-add"))
            ui.add("edit_pinned", gr.Button("Add the pinned nodes", size="sm",
                                            elem_id="tt-edit-pinned"))  # fmt: skip
        ui.add("edits", gr.Textbox(label="Edits", info=EDITS_HELP, elem_id="tt-edits"))
        with gr.Row():
            ui.add("generate", gr.Slider(0, 32, value=8, step=1, label="Tokens to generate"))
            ui.add("whatif_button", gr.Button("Run the edits", elem_id="tt-whatif-run"))
        ui.add("whatif_summary", gr.HTML(elem_id="tt-whatif-summary"))


# --------------------------------------------------------------------------- wiring


def wire_what_if(ui: Components, page: Page) -> None:
    def add(given: dict) -> str:
        v = ui.read(given)
        return page.add_edits(v["edits"], [v["selected"]], v["edit_action"], v["edit_value"],
                              v["edit_everywhere"])  # fmt: skip

    def add_pinned(given: dict) -> str:
        v = ui.read(given)
        return page.add_edits(v["edits"], parse_pins(v["pinned"]), v["edit_action"],
                              v["edit_value"], v["edit_everywhere"])  # fmt: skip

    fields = ["edits", "selected", "pinned", "edit_action", "edit_value", "edit_everywhere"]
    ui["edit_add"].click(user_errors(add), ui.inputs(fields), ui["edits"], **CHEAP)
    ui["edit_pinned"].click(user_errors(add_pinned), ui.inputs(fields), ui["edits"], **CHEAP)

    def run(given: dict, progress: Any = gr.Progress()) -> dict:  # noqa: B008
        v = ui.read(given)
        chosen = page.what_if(request_of(v), v["layers"], v["edits"], v["generate"], progress)
        return ui.fill(chosen)

    ui["whatif_button"].click(
        user_errors(run),
        ui.inputs(FORM_FIELDS, ["layers", "edits", "generate"]),
        ui.of(["whatif_summary"]),
        **PRIVATE,
    )

    def faithful(given: dict) -> dict:
        v = ui.read(given)
        return ui.fill(page.faithfulness(v["graph_run"], choice_of(v)))

    ui["faith_button"].click(
        user_errors(faithful), ui.inputs(["graph_run"], GRAPH_FIELDS), ui.of(FAITH_OUTPUTS),
        **PRIVATE,
    )  # fmt: skip


def on_failure(event: Any, ui: Components, page: Page) -> None:
    """After a failed run the results are cleared, so nothing stale looks current."""
    event.failure(lambda: ui.fill(page.failed()), None, ui.of(OUTPUTS), **PRIVATE)


def wire_run(ui: Components, page: Page) -> None:
    """Trace (button, Enter, an example), the release's layers and the IG steps' visibility."""

    def run(given: dict, progress: Any = gr.Progress()) -> dict:  # noqa: B008
        values = ui.read(given)
        chosen = page.run(request_of(values), values["layers"], filters_of(values), progress)
        return ui.fill(chosen)

    def run_example(given: dict, progress: Any = gr.Progress()) -> dict:  # noqa: B008
        # All of the preset's layers: the layer boxes may still be catching up with it.
        values = ui.read(given)
        return ui.fill(page.run(request_of(values), None, Filters(), progress))

    form = ui.inputs(FORM_FIELDS, ["layers"], FILTER_FIELDS)
    for trigger in (ui["run_button"].click, ui["text"].submit):
        on_failure(trigger(user_errors(run), form, ui.of(OUTPUTS), **PRIVATE), ui, page)
    filled = (
        ui["examples"]
        .click(
            lambda index: ui.fill(page.example(index)),
            ui["examples"],
            ui.of([*EXAMPLE_FIELDS, "method", *FILTER_FIELDS]),
            **PRIVATE,
        )
        .then(user_errors(run_example), ui.inputs(FORM_FIELDS), ui.of(OUTPUTS), **PRIVATE)
    )
    on_failure(filled, ui, page)
    ui["release"].change(layer_choices, ui["release"], ui["layers"], **PRIVATE)
    ui["method"].change(
        lambda chosen: gr.Slider(visible=chosen == "ig"), ui["method"], ui["ig_steps"], **PRIVATE
    )


def wire_table(ui: Components, page: Page) -> None:
    """Filters redraw the views; a clicked row opens its node's panel."""
    views = ui.inputs(["run"], FILTER_FIELDS)

    def redraw(given: dict) -> dict:
        values = ui.read(given)
        return ui.fill(page.views(values["run"], filters_of(values)))

    def search(given: dict) -> Any:
        values = ui.read(given)
        return page.table(values["run"], filters_of(values))

    gr.on([ui["features_only"].input, ui["hide_bos"].input], redraw, views,
          ui.of(FILTERED_OUTPUTS), **CHEAP)  # fmt: skip
    # `change`, not `input`: a pasted or programmatically filled search filters at once.
    ui["query"].change(search, views, ui["table"], **CHEAP)

    def select(given: dict, event: gr.SelectData) -> dict:
        values = ui.read(given)
        index = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        return ui.fill(page.select(values["run"], filters_of(values), index, event.row_value))

    ui["table"].select(select, views, ui.of(["panel", "selected"]), **CHEAP).then(
        None, None, None, js=show_js("#tt-panel"), **CHEAP
    )


def wire_graph(ui: Components, page: Page) -> None:
    """Build the graph, re-prune it from the controls, and open a clicked node's panel."""

    def build_graph(given: dict, progress: Any = gr.Progress()) -> dict:  # noqa: B008
        values = ui.read(given)
        chosen = page.graph(
            request_of(values), values["layers"], values["max_nodes"], choice_of(values), progress
        )
        return ui.fill(chosen)

    ui["graph_button"].click(
        user_errors(build_graph),
        ui.inputs(FORM_FIELDS, ["layers"], GRAPH_FIELDS),
        ui.of(["graph_run", *GRAPH_OUTPUTS]),
        **PRIVATE,
    )

    def redraw(given: dict) -> dict:
        values = ui.read(given)
        return ui.fill(page.redraw(values["graph_run"], choice_of(values)))

    gr.on(
        [ui["node_threshold"].release, ui["edge_threshold"].release, ui["show_errors"].input,
         ui["pinned"].submit, ui["pinned_only"].input],
        user_errors(redraw),
        ui.inputs(["graph_run"], GRAPH_FIELDS),
        ui.of(GRAPH_OUTPUTS),
        **CHEAP,
    )  # fmt: skip

    def pin(given: dict) -> dict:
        values = ui.read(given)
        return ui.fill(page.pin(values["graph_run"], values["selected"], choice_of(values)))

    ui["pin_button"].click(
        user_errors(pin),
        ui.inputs(["graph_run", "selected"], GRAPH_FIELDS),
        ui.of(["pinned", *GRAPH_OUTPUTS]),
        **CHEAP,
    )

    def upload(given: dict) -> str:
        values = ui.read(given)
        return page.upload(values["graph_run"], choice_of(values), values["upload_key"])

    ui["upload_button"].click(
        user_errors(upload),
        ui.inputs(["graph_run", "upload_key"], GRAPH_FIELDS),
        ui["upload_result"],
        **PRIVATE,
    )

    def click(given: dict) -> dict:
        values = ui.read(given)
        return ui.fill(
            page.graph_click(values["graph_run"], values["graph_click"], choice_of(values))
        )

    ui["graph_click_go"].click(
        user_errors(click),
        ui.inputs(["graph_run", "graph_click"], GRAPH_FIELDS),
        ui.of(["panel", "selected", "graph_card", "graph_plot"]),
        **CHEAP,
    ).then(None, None, None, js=show_js("#tt-graph-card"), **CHEAP)


def wire_checks(ui: Components, page: Page) -> None:
    def check(given: dict, progress: Any = gr.Progress()) -> dict:  # noqa: B008
        values = ui.read(given)
        chosen = page.verify(request_of(values), values["layers"], values["verify_k"], progress)
        return ui.fill(chosen)

    ui["verify_button"].click(
        user_errors(check),
        ui.inputs(FORM_FIELDS, ["layers", "verify_k"]),
        ui.of(VERIFY_OUTPUTS),
        **PRIVATE,
    )


def wire_links(ui: Components, page: Page, demo: gr.Blocks) -> None:
    """A shareable link fills the form, runs it and opens its node; "Copy link" writes one."""

    def from_link(http: gr.Request) -> dict:
        values = page.from_link(dict(http.query_params))
        values["shared"] = values.pop("layers", None) if values.pop("shared") else None
        return ui.fill(values)

    def run_shared(given: dict, progress: Any = gr.Progress()) -> dict:  # noqa: B008
        values = ui.read(given)
        if values["shared"] is None:  # a plain visit: nothing to run
            return {component: gr.skip() for component in ui.of(OUTPUTS)}
        request = request_of(values)
        return ui.fill(page.run(request, values["shared"], filters_of(values), progress))

    def graph_shared(given: dict, progress: Any = gr.Progress()) -> dict:  # noqa: B008
        values = ui.read(given)
        if values["shared"] is None or not values["pinned"].strip():  # no pins: no graph
            return {component: gr.skip() for component in ui.of(["graph_run", *GRAPH_OUTPUTS])}
        return ui.fill(page.graph(request_of(values), values["shared"], values["max_nodes"],
                                  choice_of(values), progress))  # fmt: skip

    shared = ["layers", "edits", "pinned", "max_nodes", "shared", "shared_node"]
    loaded = demo.load(user_errors(from_link), None, ui.of([*FORM_FIELDS, *shared]), **PRIVATE)
    loaded.success(
        user_errors(run_shared),
        ui.inputs(FORM_FIELDS, ["shared"], FILTER_FIELDS),
        ui.of(OUTPUTS),
        **PRIVATE,
    ).success(page.open_node, ui.of(["run", "shared_node"]), ui["panel"], **PRIVATE).success(
        user_errors(graph_shared),
        ui.inputs(FORM_FIELDS, ["shared"], GRAPH_FIELDS),
        ui.of(["graph_run", *GRAPH_OUTPUTS]),
        **PRIVATE,
    )

    def link(given: dict) -> str:
        values = ui.read(given)
        return page.link(request_of(values), values["layers"], values["selected"],
                         values["edits"], values["pinned"], values["max_nodes"])  # fmt: skip

    fields = ["layers", "selected", "edits", "pinned", "max_nodes"]
    ui["link_button"].click(link, ui.inputs(FORM_FIELDS, fields), ui["share"], **CHEAP).then(
        None, ui["share"], ui["share"], js=COPY_LINK_JS, **CHEAP
    )


def build(page: Page) -> gr.Blocks:
    """The page, section by section, then the events between them and the API endpoints."""
    ui = Components()
    with gr.Blocks(title="token-trace", analytics_enabled=False, fill_width=True) as demo:
        gr.HTML(
            '<div class="tt-header"><h1>token-trace</h1><p>Which SAE features — and SAE '
            "error terms — carry a language model's prediction, at which token positions and "
            "layers, and by how much.</p></div>"
        )
        gr.HTML(render.banner_html(page.offline, page.presets, page.start), elem_id="tt-banner")
        form_section(ui, page)
        results_section(ui)
        table_section(ui)
        charts_section(ui)
        checks_section(ui)
        graph_section(ui)
        what_if_section(ui)
        for name in ("run", "graph_run", "selected", "shared", "shared_node"):
            ui.add(name, gr.State())
        wire_run(ui, page)
        wire_table(ui, page)
        wire_graph(ui, page)
        wire_checks(ui, page)
        wire_what_if(ui, page)
        wire_links(ui, page, demo)
        add_endpoints(page, user_errors)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=64)
    return demo


def create_app(offline: bool | None = None, max_tokens: int | None = None) -> gr.Blocks:
    """The app for this deployment; `offline` is probed (quickly) and `max_tokens` read from the
    environment unless given."""
    if offline is None:
        offline = not hub_reachable()
    if max_tokens is None:
        max_tokens = max_tokens_from_env()
    default_backend()  # a bad $TOKEN_TRACE_BACKEND stops the app here, naming the variable
    if offline:
        go_offline()
    service = Service(max_tokens, online_labels=not offline, max_generate=max_generate_from_env())
    page = Page(offline, service, EXAMPLES_DIR)
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
