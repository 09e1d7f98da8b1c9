"""token-trace's web app: which SAE features carry a prediction, in one Gradio page.

Runs as a Hugging Face ZeroGPU Space, locally (`python app.py`), or behind `gradio_client`
(endpoints `/attribute` and `/summary`). This file holds layout, events and the `@spaces.GPU`
handler only; request checking, caching and exports live in `token_trace.app_support`, rendering in
`token_trace.app_views` and `token_trace.plots`.

ZeroGPU: weights are loaded in the main process, outside the GPU handler (the default preset's at
startup on a Space, others on first use), where ZeroGPU keeps them and hands them to each GPU
worker; only the attribution itself runs under `@spaces.GPU`, which is a no-op anywhere else.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import spaces

from token_trace import app_support as support
from token_trace import app_views as views
from token_trace import compute_node_attribution, layer_totals, plots, top_nodes
from token_trace.loading import BUNDLED_MODEL, release_sae_ids

logger = logging.getLogger("token_trace.app")

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"
EXPORT_DIR = Path(tempfile.gettempdir()) / "token-trace-exports"
#: Attribution events run at most this many at once (the library runs one per model at a time).
CONCURRENCY = 4
RESULTS = support.ResultCache()

CSS = """
.tt-header h1 { margin: 0; font-size: 1.6rem; letter-spacing: -0.01em; }
.tt-header p { margin: 0.15rem 0 0; color: var(--body-text-color-subdued); }
.tt-banner { padding: 0.6rem 0.9rem; border-radius: 8px; background: #fff4e0;
  border: 1px solid #f0c36d; color: #5c4300; }
.dark .tt-banner { background: #3a2f12; border-color: #7a5d1a; color: #f5dfa8; }
.tt-summary { font-size: 0.92rem; padding: 0.2rem 0; }
.tt-tokens { padding: 0.4rem 0.2rem; }
.tt-row { display: flex; flex-wrap: wrap; gap: 4px 2px; align-items: flex-end; }
.tt-tok { display: inline-flex; flex-direction: column; align-items: center; padding: 2px 3px;
  border-radius: 4px; border: 1px solid transparent; }
.tt-text { white-space: pre; font-family: ui-monospace, SFMono-Regular, Menlo, monospace;
  font-size: 0.95rem; }
.tt-val { font-size: 0.66rem; color: var(--body-text-color-subdued);
  font-variant-numeric: tabular-nums; }
.tt-strong, .tt-strong .tt-val { color: #fff; }
.tt-bos { background: var(--background-fill-secondary); opacity: 0.7; }
.tt-last { border-color: var(--body-text-color); }
.tt-target { border: 1px dashed var(--color-accent); }
.tt-arrow { align-self: center; padding: 0 4px; color: var(--body-text-color-subdued); }
.tt-legend { display: flex; flex-wrap: wrap; gap: 1rem; margin-top: 0.5rem; font-size: 0.75rem;
  color: var(--body-text-color-subdued); }
.tt-legend i { display: inline-block; width: 0.8rem; height: 0.8rem; border-radius: 2px;
  margin-right: 0.3rem; vertical-align: -0.1rem; }
.tt-panel { font-size: 0.9rem; }
.tt-node-head { padding-bottom: 0.4rem; border-bottom: 1px solid var(--border-color-primary);
  margin-bottom: 0.4rem; }
.tt-np { width: 100%; height: 560px; border: 1px solid var(--border-color-primary);
  border-radius: 6px; }
.tt-muted { color: var(--body-text-color-subdued); }
.tt-links { font-size: 0.88rem; }
.tt-card p { margin: 0.35rem 0; }
.tt-card ol { margin: 0.2rem 0 0 1.2rem; padding: 0; }
.tt-chip { display: inline-block; padding: 1px 6px; margin: 2px; border-radius: 10px;
  background: var(--background-fill-secondary); font-family: ui-monospace, monospace; }
.tt-context { white-space: pre-wrap; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.tt-context mark { background: rgba(202, 62, 54, 0.35); border-radius: 3px; padding: 0 1px; }
"""
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
"""
THEME = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate")


# --------------------------------------------------------------------------- compute


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show every error as a `gr.Error` (in the page and to API clients) and keep serving.

    Applied inside the GPU handler too: ZeroGPU forwards only `gr.Error` messages from its worker.
    Messages are escaped because Gradio renders them as HTML, and they may quote the prompt.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:
            message = support.user_message(error)
            if support.is_out_of_memory(error):
                support.release_memory()
            expected = message is not None
            if not expected:
                logger.exception("token-trace request failed")
                message = f"token-trace failed unexpectedly ({type(error).__name__}: {error})."
            quiet = _supported(gr.Error.__init__, print_exception=not expected)
            raise gr.Error(html.escape(message, quote=False), **quiet) from error

    return wrapper


@spaces.GPU(duration=support.gpu_seconds)
@user_errors
def attribute_on_gpu(settings: support.Settings) -> pd.DataFrame:
    """The one step that needs the accelerator: the library's attribution run."""
    with support.model_locked(settings):
        return compute_node_attribution(**settings.library_kwargs())


class TokenTraceApp:
    """The page and its handlers, for one deployment's options (offline? token cap?)."""

    def __init__(self, offline: bool, max_tokens: int, examples_dir: Path = EXAMPLES_DIR) -> None:
        self.offline = offline
        self.max_tokens = max_tokens
        self.examples = support.load_examples(examples_dir, offline)

    def obtain(self, settings: support.Settings, progress: gr.Progress) -> support.Run:
        """The run for `settings`: from the cache, or loaded, checked and computed now."""
        run = RESULTS.get(settings)
        if run is None:
            progress(0.05, desc=f"Loading {settings.model} and its SAEs")
            support.load_and_check(settings, self.max_tokens)
            progress(0.35, desc=f"Attributing over {len(settings.sae_ids)} SAEs")
            start = time.perf_counter()
            df = attribute_on_gpu(settings)
            run = support.Run(settings, df, time.perf_counter() - start)
            RESULTS.put(run)
        progress(0.9, desc="Drawing")
        return run

    # ----------------------------------------------------------------------- UI handlers

    def results(self, run: support.Run, features_only: bool, hide_bos: bool, query: str) -> tuple:
        """Every output of a run, in the order of `outputs` in `build`."""
        paths = support.write_exports(run.settings, run.df, EXPORT_DIR)
        return (
            run,
            views.summary_html(run.df, run.seconds),
            views.tokens_html(run.df),
            views.predictions(run.df),
            *self.filtered_views(run, features_only, hide_bos, query),
            views.feature_panel_html(run.df, None, card=self.card, offline=self.offline),
            str(paths["csv"]),
            str(paths["parquet"]),
            str(paths["json"]),
        )

    def run_ui(
        self,
        text: str,
        release: str,
        layers: list[str],
        answer: str,
        contrast: str,
        method: str,
        ig_steps: float,
        counterfactual: str,
        features_only: bool,
        hide_bos: bool,
        query: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for progress)
    ) -> tuple:
        settings = support.make_settings(
            text, None, release, layers, answer, contrast, method, ig_steps, counterfactual
        )
        return self.results(self.obtain(settings, progress), features_only, hide_bos, query)

    def fill_example(self, index: int) -> tuple:
        """Put example `index` into the inputs, with AtP and the filters at their defaults."""
        example = self.examples[index]
        return (
            example.text,
            example.release,
            example.answer or "",
            example.contrast or "",
            example.counterfactual or "",
            "atp",
            False,
            True,
            "",
        )

    def run_example(
        self,
        text: str,
        release: str,
        answer: str,
        contrast: str,
        counterfactual: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple:
        """Run a just-filled example on all of its preset's layers (the layer boxes may still be
        catching up with the new preset)."""
        settings = support.make_settings(
            text, None, release, None, answer, contrast, "atp", None, counterfactual
        )
        return self.results(self.obtain(settings, progress), False, True, "")

    def filtered_views(
        self, run: support.Run | None, features_only: bool, hide_bos: bool, query: str
    ) -> tuple:
        """Table, charts and quick-list links under the current filters (no recomputation)."""
        if run is None:
            return (None, None, None, None, "")
        df = run.df
        shown = views.filtered(df, features_only, hide_bos)
        return (
            views.table_view(df, features_only, hide_bos, query),
            plots.layer_position_heatmap(shown),
            plots.layer_totals_figure(layer_totals(df, exclude_bos=hide_bos)),
            plots.attribution_scatter(views.filtered(df, True, hide_bos)),
            views.quick_links_html(df, hide_bos),
        )

    def search(self, run: support.Run | None, features_only: bool, hide_bos: bool, query: str):
        if run is None:
            return None
        return views.table_view(run.df, features_only, hide_bos, query)

    def select_row(
        self,
        run: support.Run | None,
        features_only: bool,
        hide_bos: bool,
        query: str,
        event: gr.SelectData,
    ) -> str:
        """The feature panel for the clicked row (found by its `node` id, whatever the sort)."""
        if run is None:
            return ""
        index = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        row = getattr(event, "row_value", None)  # Gradio >= 5; older versions give the index only
        view = views.table_view(run.df, features_only, hide_bos, query)
        node = views.node_from_row(row, index, view)
        return views.feature_panel_html(run.df, node, card=self.card, offline=self.offline)

    def card(self, hook_name: str, feature: int) -> dict | None:
        from token_trace import demo  # the bundled model's cards; loaded only when asked for

        return demo.feature_card(hook_name, feature)

    @staticmethod
    def layer_choices(release: str) -> gr.CheckboxGroup:
        ids = release_sae_ids(release)
        return gr.CheckboxGroup(choices=ids, value=ids, label="SAEs to attribute to")

    # ----------------------------------------------------------------------- API handlers

    def attribute(
        self,
        text: str,
        model: str,
        release: str = "",
        layers: str = "",
        answer: str = "",
        contrast: str = "",
        method: str = "atp",
        ig_steps: float = 10,
        counterfactual: str = "",
        top_k: float = 0,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> list[dict]:
        """The node table as JSON records with the library's column names (all rows, or the
        `top_k` largest by |attribution|). `layers`: comma-separated SAE ids, empty for all."""
        settings = support.make_settings(
            text, model, release, layers, answer, contrast, method, ig_steps, counterfactual
        )
        df = self.obtain(settings, progress).df
        if top_k and top_k > 0:
            df = top_nodes(df, int(top_k))
        return support.records(df)

    def summary(
        self,
        text: str,
        model: str,
        release: str = "",
        layers: str = "",
        answer: str = "",
        contrast: str = "",
        method: str = "atp",
        ig_steps: float = 10,
        counterfactual: str = "",
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> dict:
        """The run's metadata: tokens, metric and value, top predictions, per-token totals."""
        settings = support.make_settings(
            text, model, release, layers, answer, contrast, method, ig_steps, counterfactual
        )
        return support.summary(self.obtain(settings, progress).df)

    # ----------------------------------------------------------------------- layout

    def build(self) -> gr.Blocks:
        """The page: inputs, examples, tokens + predictions, table + feature panel, charts."""
        start = support.default_release(self.offline)
        blocks_options = _supported(
            gr.Blocks.__init__, theme=THEME, css=CSS, analytics_enabled=False, fill_width=True
        )
        with gr.Blocks(title="token-trace", **blocks_options) as demo:
            gr.HTML(
                '<div class="tt-header"><h1>token-trace</h1><p>Which SAE features — and SAE '
                "error terms — carry a language model's prediction, at which token positions and "
                "layers, and by how much.</p></div>"
            )
            gr.HTML(views.banner_html(self.offline), elem_id="tt-banner")
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
                            placeholder="' Mary' — empty: score the prompt's last token",
                        )
                        contrast = gr.Textbox(
                            label="Contrast answer (optional)",
                            placeholder="' John' — gives logit(answer) − logit(contrast)",
                        )
                    counterfactual = gr.Textbox(
                        label="Counterfactual prompt (optional, same number of tokens)",
                        placeholder="Patch nodes to their value on this prompt instead of zero",
                    )
                with gr.Column(scale=2):
                    release = gr.Dropdown(
                        label="Model · SAE release",
                        choices=[(preset.label, preset.release) for preset in support.PRESETS],
                        value=start,
                    )
                    method = gr.Radio(
                        label="Method",
                        choices=[(label, key) for key, label in support.METHOD_LABELS.items()],
                        value="atp",
                    )
                    ig_steps = gr.Slider(
                        1, support.MAX_IG_STEPS, value=10, step=1, label="IG steps", visible=False
                    )
                    with gr.Accordion("Layers (SAEs)", open=False):
                        layers = self.layer_choices(start)
                    run_button = gr.Button("Trace", variant="primary", elem_id="tt-run")
            example_fields = [text, release, answer, contrast, counterfactual]
            examples = gr.Dataset(
                components=example_fields,
                samples=[
                    [e.text, e.release, e.answer or "", e.contrast or "", e.counterfactual or ""]
                    for e in self.examples
                ],
                type="index",
                label="Examples — click one to run it",
                visible=bool(self.examples),
                elem_id="tt-examples",
                **_supported(gr.Dataset.__init__, sample_labels=[e.label for e in self.examples]),
            )

            with gr.Accordion("How to read the results", open=False):
                gr.Markdown(GUIDE)
            with gr.Row(equal_height=False):
                with gr.Column(scale=4):
                    summary = gr.HTML(elem_id="tt-summary")
                    tokens = gr.HTML(elem_id="tt-tokens")
                with gr.Column(scale=1, min_width=240):
                    predictions = gr.Label(label="Top next-token predictions", num_top_classes=6)

            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    with gr.Row():
                        features_only = gr.Checkbox(label="Features only", value=False)
                        hide_bos = gr.Checkbox(label="Hide BOS", value=True)
                        query = gr.Textbox(
                            label="Search",
                            placeholder="token, feature id or SAE name",
                            scale=2,
                        )
                    table = gr.Dataframe(
                        label=f"Top {views.TABLE_ROWS} nodes by |attribution| — click a row",
                        interactive=False,
                        wrap=False,
                        elem_id="tt-table",
                        **_supported(gr.Dataframe.__init__, max_height=520, height=520),
                    )
                    links = gr.HTML(elem_id="tt-links")
                    with gr.Row():
                        csv = gr.DownloadButton("Nodes (CSV)", size="sm")
                        parquet = gr.DownloadButton("Nodes (Parquet)", size="sm")
                        settings_json = gr.DownloadButton("Settings (JSON)", size="sm")
                with gr.Column(scale=2):
                    panel = gr.HTML(views.PANEL_HINT, elem_id="tt-panel")

            heatmap = gr.Plot(label="Layer × position", elem_id="tt-heatmap")
            with gr.Row():
                layer_plot = gr.Plot(label="Features vs error", elem_id="tt-layers")
                scatter = gr.Plot(label="Attribution vs activation", elem_id="tt-scatter")

            state = gr.State()
            outputs = [state, summary, tokens, predictions, table, heatmap, layer_plot, scatter]
            outputs += [links, panel, csv, parquet, settings_json]
            filters = [features_only, hide_bos, query]
            private = _supported(gr.Button.click, api_visibility="private", show_api=False)

            inputs = [text, release, layers, answer, contrast, method, ig_steps, counterfactual]
            for trigger in (run_button.click, text.submit):
                trigger(user_errors(self.run_ui), inputs + filters, outputs, **private)
            examples.click(
                self.fill_example, examples, [*example_fields, method, *filters], **private
            ).then(user_errors(self.run_example), example_fields, outputs, **private)
            release.change(self.layer_choices, release, layers, **private)
            method.change(
                lambda chosen: gr.Slider(visible=chosen == "ig"), method, ig_steps, **private
            )
            cheap = {"concurrency_limit": None, **private}
            for checkbox in (features_only, hide_bos):
                checkbox.input(
                    self.filtered_views,
                    [state, *filters],
                    [table, heatmap, layer_plot, scatter, links],
                    **cheap,
                )
            query.input(self.search, [state, *filters], table, **cheap)
            table.select(self.select_row, [state, *filters], panel, **cheap)

            self._api()
        demo.queue(default_concurrency_limit=CONCURRENCY, max_size=64)
        return demo

    def _api(self) -> None:
        """`/attribute` and `/summary`: plain parameters for `gradio_client`, JSON out.

        Built from hidden components (not `gr.api`) so that they work on Gradio 4 as well.
        """
        with gr.Column(visible=False):
            params = [
                gr.Textbox(label="text"),
                gr.Textbox(support.default_model(self.offline), label="model"),
                gr.Textbox("", label="release"),
                gr.Textbox("", label="layers"),
                gr.Textbox("", label="answer"),
                gr.Textbox("", label="contrast"),
                gr.Textbox("atp", label="method"),
                gr.Number(10, label="ig_steps", precision=0),
                gr.Textbox("", label="counterfactual"),
            ]
            top_k = gr.Number(0, label="top_k", precision=0)
            nodes, meta = gr.JSON(label="nodes"), gr.JSON(label="summary")
            attribute_button, summary_button = gr.Button(), gr.Button()
        attribute_button.click(
            user_errors(self.attribute), [*params, top_k], nodes, api_name="attribute"
        )
        summary_button.click(user_errors(self.summary), params, meta, api_name="summary")


def _supported(fn: Callable[..., Any], **options: Any) -> dict[str, Any]:
    """The options the installed Gradio's `fn` accepts by name.

    Spaces may run Gradio 4, 5 or 6, which moved `theme`/`css` from `Blocks()` to `launch()`,
    renamed `show_api` and `height`; passing only what exists keeps one code path for all.
    """
    parameters = inspect.signature(fn).parameters
    return {name: value for name, value in options.items() if name in parameters}


def create_app(offline: bool | None = None, max_tokens: int | None = None) -> gr.Blocks:
    """The app for this deployment; `offline` is probed (quickly) and `max_tokens` read from the
    environment unless given."""
    if offline is None:
        offline = not support.hub_reachable()
    if max_tokens is None:
        max_tokens = support.max_tokens_from_env()
    if offline:
        logger.warning("Hugging Face hub unreachable: starting offline on %s", BUNDLED_MODEL)
        support.go_offline()
    elif os.environ.get("SPACE_ID"):
        # On a Space, load the default weights at startup, as ZeroGPU expects, so the first
        # visitor does not wait for a download.
        support.preload(support.default_release(offline))
    return TokenTraceApp(offline, max_tokens).build()


def launch(demo: gr.Blocks, **options: Any) -> Any:
    """`demo.launch` with the page's theme and CSS wherever this Gradio version takes them.

    Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, which Gradio reads itself.
    """
    look = _supported(demo.launch, theme=THEME, css=CSS)
    return demo.launch(**look, **options)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    launch(create_app(), show_error=True)
