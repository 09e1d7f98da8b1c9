"""The page's handlers: from what the form and the API send to what each output shows.

Handlers return dicts keyed by output name (`OUTPUTS`); `app.py` maps names to its components.
Nothing here knows the layout, and nothing in `app.py` knows how a result is drawn.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from token_trace.app import exports, plots, render
from token_trace.app.requests import Example, RequestFields, load_examples, make_settings
from token_trace.app.service import Run, Service
from token_trace.demo import feature_card

EXPORT_DIR = Path(tempfile.gettempdir()) / "token-trace-exports"

#: Every output a run fills, by name.
OUTPUTS = (
    "run",
    "summary",
    "tokens",
    "predictions",
    "table",
    "heatmap",
    "layer_plot",
    "scatter",
    "links",
    "panel",
    "csv",
    "parquet",
    "trace_file",
    "settings_json",
)
#: The outputs that follow the table's filters (no recomputation).
FILTERED_OUTPUTS = ("table", "heatmap", "layer_plot", "scatter", "links")


@dataclass(frozen=True)
class Filters:
    """The table's filters; every view of a run shares them."""

    features_only: bool = False
    hide_bos: bool = True
    query: str = ""


class Page:
    """The handlers of one deployment (offline or not, its token cap, its examples)."""

    def __init__(self, offline: bool, service: Service, examples_dir: Path) -> None:
        self.offline = offline
        self.service = service
        self.examples: list[Example] = load_examples(examples_dir, offline)

    # ----------------------------------------------------------------------- runs

    def run(
        self,
        request: RequestFields,
        layers: list[str] | None,
        filters: Filters,
        progress: Callable[..., Any] | None = None,
    ) -> dict[str, Any]:
        """Every output of the request's run."""
        run = self.service.obtain(make_settings(request, layers), progress)
        paths = exports.write_exports(run.settings, run.trace, EXPORT_DIR)
        return {
            "run": run,
            "summary": render.summary_html(run.trace, run.seconds),
            "tokens": render.tokens_html(run.trace),
            "predictions": render.predictions(run.trace),
            **self.views(run, filters),
            "panel": render.PANEL_HINT,
            "csv": str(paths["csv"]),
            "parquet": str(paths["parquet"]),
            "trace_file": str(paths["trace"]),
            "settings_json": str(paths["json"]),
        }

    @staticmethod
    def failed() -> dict[str, Any]:
        """The outputs after a failed request: cleared, so nothing stale looks current."""
        return {
            "run": None,
            "summary": render.stale_summary_html(),
            "tokens": "",
            "predictions": None,
            "table": render.empty_table(),
            "heatmap": None,
            "layer_plot": None,
            "scatter": None,
            "links": "",
            "panel": render.PANEL_HINT,
            "csv": None,
            "parquet": None,
            "trace_file": None,
            "settings_json": None,
        }

    def views(self, run: Run | None, filters: Filters) -> dict[str, Any]:
        """Table, charts and quick-list links under the current filters."""
        if run is None:
            return {name: None for name in FILTERED_OUTPUTS} | {
                "table": render.empty_table(),
                "links": "",
            }
        result = run.trace
        shown = render.filtered(result, filters.features_only, filters.hide_bos)
        return {
            "table": self.table(run, filters),
            "heatmap": plots.layer_position_heatmap(result, shown),
            "layer_plot": plots.layer_totals_figure(
                result.layer_totals(exclude_bos=filters.hide_bos)
            ),
            "scatter": plots.attribution_scatter(render.filtered(result, True, filters.hide_bos)),
            "links": render.quick_links_html(result, filters.hide_bos),
        }

    @staticmethod
    def table(run: Run | None, filters: Filters) -> pd.DataFrame:
        if run is None:
            return render.empty_table()
        return render.table_view(run.trace, filters.features_only, filters.hide_bos, filters.query)

    def select(
        self, run: Run | None, filters: Filters, index: int | None, row: list | Mapping | None
    ) -> str:
        """The feature panel for a clicked row (found by its `node` id, whatever the sort)."""
        if run is None:
            return render.PANEL_HINT
        node = render.node_from_row(row, index, self.table(run, filters))
        return render.feature_panel_html(run.trace, node, card=feature_card, offline=self.offline)

    def example(self, index: int) -> dict[str, Any]:
        """Example `index` as input values, with AtP and the filters at their defaults."""
        example = self.examples[index]
        return {
            "text": example.text,
            "release": example.release,
            "answer": example.answer or "",
            "contrast": example.contrast or "",
            "counterfactual": example.counterfactual or "",
            "method": "atp",
            "features_only": False,
            "hide_bos": True,
            "query": "",
        }

    # ----------------------------------------------------------------------- API

    def attribute(self, request: RequestFields, top_k: float = 0) -> list[dict]:
        """The node table as JSON records with the library's column names: every row in the
        table's order (`top_k` 0), or the `top_k` largest by |attribution|."""
        if top_k < 0 or top_k != int(top_k):
            raise ValueError(
                f"top_k must be 0 (every node) or a positive whole number, not {top_k}."
            )
        result = self.service.obtain(make_settings(request)).trace
        table = result.top_nodes(int(top_k)) if top_k else result.nodes
        return exports.records(table)

    def summary(self, request: RequestFields) -> dict:
        """The run's metadata: tokens, metric and value, top predictions, per-token totals, and
        warnings (e.g. words the model's vocabulary does not know)."""
        return exports.summary(self.service.obtain(make_settings(request)).trace)
