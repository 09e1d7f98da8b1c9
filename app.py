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
from token_trace.app.page import FILTERED_OUTPUTS, OUTPUTS, Filters, Page
from token_trace.app.requests import (
    MAX_IG_STEPS,
    METHOD_LABELS,
    PRESETS,
    RequestFields,
    default_model,
    default_release,
    max_tokens_from_env,
)
from token_trace.app.service import Service, go_offline, hub_reachable, preload, user_errors
from token_trace.app.theme import CSS
from token_trace.loading import BUNDLED_MODEL, release_sae_ids

logger = logging.getLogger("token_trace.app")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
#: Attribution events run at most this many at once (the library runs one per model at a time).
CONCURRENCY = 4
THEME = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")
PRIVATE = {"api_visibility": "private"}


def layer_choices(release: str) -> gr.CheckboxGroup:
    ids = release_sae_ids(release)
    return gr.CheckboxGroup(choices=ids, value=ids, label="SAEs to attribute to")


def build(page: Page) -> gr.Blocks:
    """The page: inputs, examples, tokens + predictions, table + feature panel, charts."""
    start = default_release(page.offline)
    with gr.Blocks(title="token-trace", analytics_enabled=False, fill_width=True) as demo:
        gr.HTML(
            '<div class="tt-header"><h1>token-trace</h1><p>Which SAE features — and SAE '
            "error terms — carry a language model's prediction, at which token positions and "
            "layers, and by how much.</p></div>"
        )
        gr.HTML(render.banner_html(page.offline), elem_id="tt-banner")
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
                    choices=[(preset.label, preset.release) for preset in PRESETS],
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
        state = gr.State()

        named = {
            "run": state, "summary": summary, "tokens": tokens, "predictions": predictions,
            "table": table, "heatmap": heatmap, "layer_plot": layer_plot, "scatter": scatter,
            "links": links, "panel": panel, "csv": csv, "parquet": parquet,
            "trace_file": trace_file, "settings_json": settings_json, "text": text,
            "release": release, "answer": answer, "contrast": contrast,
            "counterfactual": counterfactual, "method": method, "features_only": features_only,
            "hide_bos": hide_bos, "query": query,
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

        def run(
            text, release, layers, answer, contrast, method, ig_steps, counterfactual,
            features_only, hide_bos, query, progress=gr.Progress(),  # noqa: B008
        ):  # fmt: skip
            request = RequestFields(
                text=text, release=release, answer=answer, contrast=contrast, method=method,
                ig_steps=ig_steps, counterfactual=counterfactual,
            )  # fmt: skip
            filters = Filters(features_only, hide_bos, query)
            return to_components(page.run(request, layers, filters, progress))

        def run_example(text, release, answer, contrast, counterfactual, progress=gr.Progress()):  # noqa: B008
            # All of the preset's layers: the layer boxes may still be catching up with it.
            request = RequestFields(
                text=text, release=release, answer=answer, contrast=contrast,
                counterfactual=counterfactual,
            )  # fmt: skip
            return to_components(page.run(request, None, Filters(), progress))

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

        def select(run, features_only, hide_bos, query, event: gr.SelectData) -> str:
            index = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
            return page.select(run, Filters(features_only, hide_bos, query), index, event.row_value)

        table.select(select, [state, *filters], panel, **cheap)
        api(page)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=64)
    return demo


def api(page: Page) -> None:
    """`/attribute` and `/summary`: the request's fields as plain parameters, JSON out."""
    defaults = {"model": default_model(page.offline)}
    endpoints = {
        "attribute": (page.attribute, list[dict], [parameter("top_k", float, 0)]),
        "summary": (page.summary, dict, []),
    }
    for name, (handler, returns, extra) in endpoints.items():
        fn = endpoint(
            handler,
            name=name,
            doc=handler.__doc__ or "",
            returns=returns,
            defaults=defaults,
            extra=extra,
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
        logger.warning("Hugging Face hub unreachable: starting offline on %s", BUNDLED_MODEL)
        go_offline()
    elif os.environ.get("SPACE_ID"):
        # On a Space, load the default weights at startup, as ZeroGPU expects, so the first
        # visitor does not wait for a download.
        preload(default_release(offline))
    return build(Page(offline, Service(max_tokens), EXAMPLES_DIR))


def launch(demo: gr.Blocks, **options: Any) -> Any:
    """`demo.launch` with the page's theme and CSS (Gradio 6 takes them at launch).

    Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, which Gradio reads itself.
    """
    return demo.launch(theme=THEME, css=CSS, **options)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    launch(create_app(), show_error=True)
