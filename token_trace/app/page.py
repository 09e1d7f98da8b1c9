"""The page's handlers: from what the form and the API send to what each output shows.

Handlers return dicts keyed by output name (`OUTPUTS`); `app.py` maps names to its components.
Nothing here knows the layout, and nothing in `app.py` knows how a result is drawn.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from token_trace.app import exports, plots, render
from token_trace.app.requests import (
    MAX_GRAPH_NODES,
    REQUEST_FIELDS,
    Example,
    Preset,
    RequestFields,
    Settings,
    available_presets,
    default_release,
    load_examples,
    make_settings,
    parse_edits,
    parse_pins,
    request_from_query,
    share_query,
    toggle_pin,
)
from token_trace.app.service import Run, Service
from token_trace.flow_view import flow_figure
from token_trace.graph import Graph
from token_trace.node_refs import node_ids
from token_trace.options import (
    DEFAULT_EDGE_THRESHOLD,
    DEFAULT_MAX_NODES,
    DEFAULT_NODE_THRESHOLD,
    GraphOptions,
    whole_number,
)

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
#: The flow graph's outputs, and the checks'.
GRAPH_OUTPUTS = ("graph_plot", "graph_summary", "graph_file", "graph_card")
FAITH_OUTPUTS = ("faith_summary", "faith_plot")
VERIFY_OUTPUTS = ("verify_summary", "verify_scatter", "verify_layers")
DEFAULT_VERIFY_NODES, MAX_VERIFY_NODES = 20, 200
#: The request fields the form has a widget for (the model follows the release; the layers are
#: checkboxes, read apart), in `RequestFields` order.
FORM_FIELDS = tuple(name for name in REQUEST_FIELDS if name not in ("model", "layers"))
#: The form fields an example fills.
EXAMPLE_FIELDS = ("text", "release", "answer", "contrast", "counterfactual")


@dataclass(frozen=True)
class GraphChoice:
    """How the flow graph is drawn: its thresholds, whether error nodes show, the pinned nodes
    (kept whatever the thresholds) and whether they are shown on their own."""

    node_threshold: float = DEFAULT_NODE_THRESHOLD
    edge_threshold: float = DEFAULT_EDGE_THRESHOLD
    show_errors: bool = True
    pinned: tuple[str, ...] = ()
    pinned_only: bool = False

    def pruned(self, graph: Graph) -> Graph:
        """`graph` pruned at these thresholds, its pinned nodes kept."""
        return graph.prune(self.node_threshold, self.edge_threshold, keep=self.pinned)

    @property
    def only(self) -> tuple[str, ...] | None:
        """The nodes a view is restricted to (the pinned subgraph), or None for all."""
        return self.pinned if self.pinned_only else None

    def figure(self, graph: Graph, selected: str | None = None) -> Any:
        return flow_figure(graph, self.show_errors, selected, self.pinned, self.pinned_only)


@dataclass(frozen=True)
class GraphRun:
    """A computed (unpruned) graph and the request it belongs to."""

    settings: Settings
    graph: Graph


@dataclass(frozen=True)
class Filters:
    """The table's filters; every view of a run shares them."""

    features_only: bool = False
    hide_bos: bool = True
    query: str = ""


class Page:
    """The handlers of one deployment (offline or not, its token cap, its examples)."""

    def __init__(
        self,
        offline: bool,
        service: Service,
        examples_dir: Path,
        presets: Sequence[Preset] | None = None,
    ) -> None:
        """`presets` are the ones this deployment can run; by default all of them online and,
        offline, those with every file in the local Hugging Face cache (looked up once, here)."""
        self.offline = offline
        self.service = service
        self.presets: tuple[Preset, ...] = tuple(
            available_presets(offline) if presets is None else presets
        )
        #: The preset the page opens on (and the API's default model).
        self.start = default_release(offline, self.presets)
        self.examples: list[Example] = load_examples(examples_dir, self.presets, self.start)

    def settings(self, request: RequestFields, layers: Sequence[str] | None = None) -> Settings:
        """`make_settings`, with this deployment's opening preset for requests naming no model."""
        return make_settings(request, layers, default_release=self.start)

    # ----------------------------------------------------------------------- runs

    def run(
        self,
        request: RequestFields,
        layers: list[str] | None,
        filters: Filters,
        progress: Callable[..., Any] | None = None,
    ) -> dict[str, Any]:
        """Every output of the request's run."""
        run = self.service.obtain(self.settings(request, layers), progress)
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
    ) -> dict[str, Any]:
        """The feature panel for a clicked row (found by its `node` index, whatever the sort),
        and the node's id (for shareable links)."""
        if run is None:
            return {"panel": render.PANEL_HINT, "selected": None}
        node = render.node_from_row(row, index, self.table(run, filters))
        panel = render.feature_panel_html(run.trace, node, offline=self.offline)
        selected = None
        if node is not None and node in run.trace.nodes.index:
            chosen = run.trace.nodes.loc[[node]]
            selected = str(node_ids(chosen["layer"], chosen["feature"], chosen["position"])[0])
        return {"panel": panel, "selected": selected}

    def open_node(self, run: Run | None, node_id: str | None) -> str:
        """The panel of a node given by id (a shared link's selection)."""
        if run is None or not node_id:
            return render.PANEL_HINT
        return render.graph_node_panel_html(run.trace, node_id, offline=self.offline)

    def from_link(self, params: Mapping[str, str]) -> dict[str, Any]:
        """Input values from a shareable link's query (nothing for a plain visit)."""
        shared = request_from_query(params)
        if shared is None:
            return {"shared_node": None, "shared": False}
        request, node = shared.request, shared.node
        settings = self.settings(request)
        return {
            "text": request.text,
            "release": settings.release,
            "answer": request.answer,
            "contrast": request.contrast,
            "counterfactual": request.counterfactual,
            "method": settings.options.method,
            "ig_steps": settings.options.ig_steps,
            "layers": list(settings.sae_ids),
            "edits": shared.edits or "",
            "pinned": ", ".join(shared.pinned),
            "max_nodes": shared.max_nodes,
            "shared_node": node,
            "shared": True,
        }

    @staticmethod
    def link(
        request: RequestFields,
        layers: list[str] | None,
        node: str | None,
        edits: str = "",
        pinned: str = "",
        max_nodes: float = DEFAULT_MAX_NODES,
    ) -> str:
        """The query string of a shareable link to this request, selection, edits and pins."""
        nodes = whole_number(max_nodes, "max_nodes", 1, MAX_GRAPH_NODES)
        return share_query(request, layers, node, edits, parse_pins(pinned), nodes)

    def example_rows(self) -> list[list[str]]:
        """The examples as the example table's rows (`EXAMPLE_FIELDS` order)."""
        return [
            [e.text, e.release, e.answer or "", e.contrast or "", e.counterfactual or ""]
            for e in self.examples
        ]

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

    # ----------------------------------------------------------------------- graph, checks

    def graph(
        self,
        request: RequestFields,
        layers: list[str] | None,
        max_nodes: float,
        choice: GraphChoice,
        progress: Callable[..., Any] | None = None,
    ) -> dict[str, Any]:
        """The flow graph of the request's `max_nodes` largest nodes, pruned as chosen."""
        settings = self.settings(request, layers)
        nodes = whole_number(max_nodes, "max_nodes", 1, MAX_GRAPH_NODES)
        graph_run = GraphRun(settings, self.service.graph(settings, nodes, progress))
        return {"graph_run": graph_run, **self.redraw(graph_run, choice)}

    @staticmethod
    def redraw(graph_run: GraphRun | None, choice: GraphChoice) -> dict[str, Any]:
        """The graph at other thresholds, or with errors hidden: re-pruned, no new backward."""
        if graph_run is None:
            return {"graph_plot": None, "graph_summary": "", "graph_file": None,
                    "graph_card": render.GRAPH_CARD_HINT}  # fmt: skip
        graph = choice.pruned(graph_run.graph)
        method = graph_run.settings.options.method
        path = exports.write_graph(graph_run.settings, graph, EXPORT_DIR, choice.pinned)
        return {
            "graph_plot": choice.figure(graph),
            "graph_summary": render.graph_summary_html(
                graph, method, choice.show_errors, choice.only
            ),
            "graph_file": str(path),
            "graph_card": render.GRAPH_CARD_HINT,
        }

    def pin(self, graph_run: GraphRun | None, node: str | None, choice: GraphChoice) -> dict:
        """The selected node pinned (or unpinned when it was), and the graph redrawn."""
        if graph_run is None:
            raise ValueError("Build the graph first: pins are nodes of the graph.")
        pinned = toggle_pin(choice.pinned, node)
        return {
            "pinned": ", ".join(pinned),
            **self.redraw(graph_run, replace(choice, pinned=pinned)),
        }

    @staticmethod
    def upload(graph_run: GraphRun | None, choice: GraphChoice, api_key: str) -> str:
        """The drawn graph (its pins included) uploaded to Neuronpedia with the visitor's own
        key, which goes in that one request's header and nowhere else (never the deployment's
        `NEURONPEDIA_API_KEY`: a visitor cannot upload in the deployer's name)."""
        if graph_run is None:
            raise ValueError("Build the graph first: the upload sends the graph drawn here.")
        if not (api_key or "").strip():
            raise ValueError(
                "Paste your Neuronpedia API key first (neuronpedia.org, Settings, API key)."
            )
        url = choice.pruned(graph_run.graph).upload_to_neuronpedia(
            api_key=api_key.strip(), pinned=choice.pinned
        )
        return render.upload_html(url)

    def graph_click(
        self, graph_run: GraphRun | None, node_id: str, choice: GraphChoice
    ) -> dict[str, Any]:
        """A clicked graph node: its edges lit in the figure, its inputs and outputs in the card
        beside the graph, its panel, and its id (for shareable links)."""
        if graph_run is None or not node_id:
            return {"panel": render.PANEL_HINT, "selected": None}
        graph = choice.pruned(graph_run.graph)
        return {
            "panel": render.graph_node_panel_html(graph.trace, node_id, offline=self.offline),
            "selected": node_id,
            "graph_card": render.graph_card_html(graph, node_id, pinned=node_id in choice.pinned),
            "graph_plot": choice.figure(graph, selected=node_id),
        }

    def verify(
        self,
        request: RequestFields,
        layers: list[str] | None,
        k: float,
        progress: Callable[..., Any] | None = None,
    ) -> dict[str, Any]:
        """Estimates against real ablations: the top `k` nodes and every whole layer."""
        check = self.service.verify(
            self.settings(request, layers), whole_number(k, "top_k", 1, MAX_VERIFY_NODES), progress
        )
        scatter, bars = plots.verification_figures(check)
        return {
            "verify_summary": render.verification_html(check),
            "verify_scatter": scatter,
            "verify_layers": bars,
        }

    def faithfulness(self, graph_run: GraphRun | None, choice: GraphChoice) -> dict[str, Any]:
        """How much of the metric the drawn graph recovers, and the curve over sizes."""
        if graph_run is None:
            raise ValueError("Build the graph first: faithfulness is measured on its nodes.")
        graph = choice.pruned(graph_run.graph)
        key = (graph_run.graph.max_nodes, choice.node_threshold, choice.edge_threshold,
               choice.pinned)  # fmt: skip
        curve, kept = self.service.faithfulness(graph_run.settings, graph, key)
        return {
            "faith_summary": render.faithfulness_html(kept, curve),
            "faith_plot": plots.faithfulness_figure(curve, kept.n_nodes),
        }

    def what_if(
        self,
        request: RequestFields,
        layers: list[str] | None,
        edits: str,
        generate: int = 0,
        progress: Callable[..., Any] | None = None,
    ) -> dict[str, Any]:
        """The prompt rerun with the edits: metric, predictions and continuation, before and
        after."""
        settings = self.settings(request, layers)
        chosen = parse_edits(edits)
        n = whole_number(generate, "generate", 0, self.service.max_generate)
        metric = self.service.obtain(settings, progress).trace.metric.description
        result = self.service.intervene(settings, chosen, n, progress)
        return {"whatif_summary": render.intervention_html(result, metric)}

    @staticmethod
    def add_edits(
        edits: str, nodes: Sequence[str], action: str, value: float, everywhere: bool
    ) -> str:
        """The edits box with an edit of each SAE node appended (`EDITS_HELP`'s syntax): the
        selected node, or the pinned ones (token nodes and the metric cannot be edited)."""
        chosen = [node for node in nodes if node and not node.startswith("E_")]
        if not chosen:
            raise ValueError(
                "Select an SAE node first (a row of the table or a feature or error node of the "
                "graph), or pin some in the graph."
            )
        spelled = {"ablate": "ablate", "scale": f"x{value:g}", "set": f"={value:g}",
                   "baseline": "baseline"}[action]  # fmt: skip
        added = [
            f"{node.rsplit('_', 1)[0] + '_*' if everywhere else node}:{spelled}" for node in chosen
        ]
        return ", ".join(part for part in (edits.strip(), *added) if part)

    # ----------------------------------------------------------------------- API

    def intervene_json(self, request: RequestFields, edits: str = "", generate: int = 0) -> dict:
        """Rerun the prompt with SAE nodes edited (`edits`: comma-separated NODE:ACTION, ACTION
        ablate, xK, =V or baseline; NODE a graph node id, `*` as its position for every
        position) and report the metric, top predictions, the target's logit change and, with
        `generate`, the greedy continuations before and after."""
        settings = self.settings(request)
        chosen = parse_edits(edits)
        n = whole_number(generate, "generate", 0, self.service.max_generate)
        result = self.service.intervene(settings, chosen, n)
        return asdict(result)

    def attribute(self, request: RequestFields, top_k: float = 0) -> list[dict]:
        """The node table as JSON records with the library's column names: every row in the
        table's order (`top_k` 0), or the `top_k` largest by |attribution|."""
        try:
            top_k = whole_number(top_k, "top_k", 0)
        except ValueError:
            raise ValueError(
                f"top_k must be 0 (every node) or a positive whole number, not {top_k!r}."
            ) from None
        result = self.service.obtain(self.settings(request)).trace
        table = result.top_nodes(top_k) if top_k else result.nodes
        return exports.records(table)

    def summary(self, request: RequestFields) -> dict:
        """The run's metadata: tokens, metric and value, top predictions, per-token totals, and
        warnings (e.g. words the model's vocabulary does not know)."""
        return exports.summary(self.service.obtain(self.settings(request)).trace)

    def graph_json(
        self,
        request: RequestFields,
        max_nodes: int = DEFAULT_MAX_NODES,
        node_threshold: float = DEFAULT_NODE_THRESHOLD,
        edge_threshold: float = DEFAULT_EDGE_THRESHOLD,
        pinned: str = "",
    ) -> dict:
        """The request's attribution graph as Neuronpedia's graph JSON (`metadata`, `qParams`,
        `nodes`, `links`): the `max_nodes` nodes of largest |attribution| and the edges between
        consecutive SAE layers, pruned to those carrying `node_threshold` / `edge_threshold` of
        the influence on the metric (each between 0 and 1); `pinned` node ids (comma-separated)
        are kept whatever the thresholds and listed in `qParams.pinnedIds`."""
        chosen = GraphOptions(
            whole_number(max_nodes, "max_nodes", 1, MAX_GRAPH_NODES), node_threshold, edge_threshold
        )
        pins = parse_pins(pinned)
        settings = self.settings(request)
        graph = self.service.graph(settings, chosen.max_nodes).prune(
            chosen.node_threshold, chosen.edge_threshold, keep=pins
        )
        return graph.to_neuronpedia(slug=f"token-trace-{settings.key()}", pinned=pins)

    def verify_json(self, request: RequestFields, top_k: float = DEFAULT_VERIFY_NODES) -> dict:
        """Estimates against real ablations: for the `top_k` nodes of largest |attribution| (BOS
        excluded) each node's `attribution` and `real` effect, for every SAE layer its summed
        `estimate` and the `real` effect of ablating the whole layer, the sign agreement and
        Spearman rank correlation over the nodes, and the layers whose estimate has the wrong
        sign."""
        check = self.service.verify(
            self.settings(request), whole_number(top_k, "top_k", 1, MAX_VERIFY_NODES)
        )
        return {
            "nodes": exports.records(check.nodes),
            "layers": exports.records(check.layers),
            "sign_agreement": check.sign_agreement,
            "rank_correlation": check.rank_correlation,
            "layers_with_wrong_sign": check.layers_with_wrong_sign,
        }
