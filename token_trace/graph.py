"""Circuits: edges between SAE nodes, their influence on the metric, and a pruned token-flow graph.

SAE hooks are ordered by residual depth (`blocks.L.hook_resid_pre` is L, `blocks.L.hook_resid_post`
is L + 1). Each residual hook is a complete cut of the model, so edges between *consecutive* SAE
hooks carry every path from the prompt to the metric. For consecutive hooks u -> d, with the clean
run's metric gradient `g_d = dm/dx_d`:

- a downstream feature j at position t seeds `v = (d_j . g_d[t]) * df_j/dx_d[t]` (the encoder's
  local derivative, by autograd through `sae.encode`, so any SAE architecture is exact);
- a downstream error node at t seeds `v = g_d[t]^T (I - dxhat/dx_d[t])`, `xhat = decode(encode(x))`;
- the edge to an upstream node is `w(u -> d) = (d(v . x_d[t]) / dx_u) . delta_u`, with
  `delta_u = (f_i - f_i') d_i` for a feature i at position s and `e_s - e_s'` for an error (primes:
  the baseline, zero or the counterfactual prompt);
- the last hook's nodes have an edge to the metric equal to their attribution.

Because `sum_j d_j df_j/dx + de/dx = I`, a node's outgoing edges to every node of the next hook
sum exactly to its attribution (attribution patching). Below the first SAE hook sit the prompt's
token embeddings (the input of block 0), one node per position with `delta = x_emb - x_emb'`.

The pull-back runs only the blocks between two hooks, only up to the last seed position, with one
batched backward (`is_grads_batched`) for many seeds. Influence on the metric and pruning follow
circuit-tracer's rule (row-normalised |weights|, influence summed over paths from the metric;
keep the nodes, then the edges, that carry `node_threshold` / `edge_threshold` of it), applied to
this layered graph.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from sae_lens import SAE
from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES

from token_trace import backend
from token_trace.attribution import AttributionRun, Batch, CapturedPass, capture_pass
from token_trace.backend import Model
from token_trace.files import write_text
from token_trace.hook_names import is_residual, residual_depth
from token_trace.hooks import hooked, model_lock, run_blocks
from token_trace.metrics import target_probability
from token_trace.neuronpedia_upload import UPLOAD_TIMEOUT
from token_trace.node_refs import node_ids
from token_trace.nodes import COLUMNS, LABEL_COLUMN, error_share
from token_trace.options import (
    DEFAULT_BASELINE_SOURCES,
    DEFAULT_EDGE_THRESHOLD,
    DEFAULT_MAX_NODES,
    DEFAULT_MODEL,
    DEFAULT_NODE_THRESHOLD,
    NODE_TYPES,
    Answer,
    Backend,
    GraphOptions,
    MetricArgument,
    ModelDtype,
    PromptSpec,
    SAEDtype,
    TraceOptions,
)
from token_trace.pipeline import Loaded, SAEArgument, either, resolve, run_traces
from token_trace.prompts import TextOrTokens
from token_trace.records import Trace
from token_trace.replay import model_and_saes, replay

if TYPE_CHECKING:
    from token_trace.circuit import Faithfulness, MeanActivations
    from token_trace.explanations import Neuronpedia

#: SAE architectures whose features are linear in the input where they fire (SAELens names).
LINEAR_WHERE_ACTIVE = frozenset({"standard", "topk", "jumprelu", "batchtopk"})
#: Seeds (downstream nodes) per batched backward: bounds memory at `SEED_BATCH x T x d_model`.
SEED_BATCH = 64
GRAPH_COLUMNS = ["node_id", *COLUMNS, LABEL_COLUMN, "influence"]
EDGE_COLUMNS = [
    "source",
    "target",
    "weight",
    "source_layer",
    "target_layer",
    "source_position",
    "target_position",
    "source_type",
    "target_type",
]


@dataclass(frozen=True, eq=False)
class Graph:
    """A trace's nodes and the edges between them, pruned by influence on the metric.

    `nodes`: the node table's columns plus `node_id` (stable: `{layer}_{feature}_{position}`,
    errors `{layer}_-1_{position}`, token embeddings `E_{token id}_{position}`, the metric
    `{last layer + 1}_{token id}_{position}`) and `influence` (summed over all paths to the metric,
    from row-normalised |weights|). Token nodes have `node_type` "embedding" and layer -1; the
    metric node "metric" and the layer above the last SAE. `edges`: `source`, `target` (node ids),
    `weight`, and the layers, positions and types of both ends.

    `candidate_nodes` / `candidate_edges` hold everything computed before pruning (the
    `max_nodes` nodes of largest |attribution|, all their edges); `prune` re-prunes from them
    without another backward pass.

    `baseline_sources`: whether pruning kept features active only on the counterfactual (clean
    activation 0) although nothing feeds them (see `prune`).
    """

    trace: Trace
    nodes: pd.DataFrame
    edges: pd.DataFrame
    candidate_nodes: pd.DataFrame
    candidate_edges: pd.DataFrame
    max_nodes: int | None
    node_threshold: float | None
    edge_threshold: float | None
    baseline_sources: bool = DEFAULT_BASELINE_SOURCES

    @property
    def error_share(self) -> float:
        """Share of the kept SAE nodes' influence carried by error nodes: how much of the flow
        the SAEs leave unexplained."""
        return error_share(self.nodes)

    def prune(
        self,
        node_threshold: float | None,
        edge_threshold: float | None,
        *,
        baseline_sources: bool | None = None,
        keep: Collection[str] = (),
    ) -> Graph:
        """The same graph pruned at other thresholds (None keeps all); no recomputation.

        Pruning drops features that nothing kept feeds. A feature active only on the
        counterfactual has no incoming edge at all (its encoder's derivative at the clean
        activation is 0), yet its switching on is part of the effect, like a token's change:
        `baseline_sources=True` (the default, `GraphOptions`; None: as this graph was pruned)
        keeps such features as sources. On the bundled model's IOI prompts with names swapped
        this took the kept nodes' faithfulness (every other node at its counterfactual value)
        from about 0 to 0.88 at node_threshold 0.9 (benchmarks/bench_faithfulness.py).

        `keep`: node ids kept whatever their influence (pinned nodes), each one of the graph's
        candidate nodes (a ValueError names any other).
        """
        if baseline_sources is None:
            baseline_sources = self.baseline_sources
        nodes, edges = _pruned(
            self.candidate_nodes,
            self.candidate_edges,
            node_threshold,
            edge_threshold,
            baseline_sources,
            self._candidates_named(keep),
        )
        return replace(
            self,
            nodes=nodes,
            edges=edges,
            node_threshold=node_threshold,
            edge_threshold=edge_threshold,
            baseline_sources=baseline_sources,
        )

    def _candidates_named(self, node_ids: Collection[str]) -> np.ndarray:
        """A mask over the candidate nodes of `node_ids`, every one of which must be there."""
        known = self.candidate_nodes["node_id"]
        missing = sorted(set(node_ids) - set(known))
        if missing:
            raise ValueError(
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}: not among this "
                f"graph's {len(known)} computed nodes (compute more with a larger max_nodes)."
            )
        return known.isin(list(node_ids)).to_numpy()

    def faithfulness(
        self,
        *,
        model: Model | None = None,
        saes: Mapping[str, SAE] | None = None,
        device: str | None = None,
        means: MeanActivations | None = None,
    ) -> Faithfulness:
        """The faithfulness of the kept SAE nodes as a circuit, and of their complement
        (`token_trace.faithfulness`: every other SAE node at its baseline, or with `means` at
        its mean over a set of prompts; real reruns)."""
        from token_trace.circuit import faithfulness

        kept = self.nodes[self.nodes["node_type"].isin(["feature", "error"])]
        return faithfulness(
            self.trace, kept["node_id"].tolist(), model=model, saes=saes, device=device,
            means=means,
        )  # fmt: skip

    def _repr_html_(self) -> str:
        """In a notebook: the flow graph with its legend and labels, drawn offline."""
        from token_trace.notebook import graph_html

        return graph_html(self)

    def with_labels(self, *, online: bool = False, neuronpedia: Neuronpedia | None = None) -> Graph:
        """This graph with a `label` column on its nodes and candidate nodes (see
        `token_trace.labels_for`; "" for tokens, errors, the metric and unknown features). The
        Neuronpedia export then writes the labels as the features' `clerp`."""
        from token_trace.labels import labels_for

        labels = labels_for(
            self.candidate_nodes, self.trace.saes, online=online, neuronpedia=neuronpedia
        )
        by_id = pd.Series(labels.to_numpy(), index=self.candidate_nodes["node_id"])
        kept = self.nodes["node_id"].map(by_id).fillna("").astype("str")
        return replace(
            self,
            nodes=_in_order(self.nodes.assign(**{LABEL_COLUMN: kept})),
            candidate_nodes=_in_order(self.candidate_nodes.assign(**{LABEL_COLUMN: labels})),
        )

    def to_neuronpedia(
        self,
        slug: str | None = None,
        *,
        pinned: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Neuronpedia's attribution-graph JSON (`metadata`, `qParams`, `nodes`, `links`), with
        the kept `pinned` node ids pinned and `labels` (node id -> text) as feature labels; see
        `token_trace.neuronpedia_graph`. Holds no NaN: `json.dumps(..., allow_nan=False)` takes it.
        """
        from token_trace.neuronpedia_graph import graph_json

        return graph_json(self, slug, pinned=pinned, labels=labels)

    def save_neuronpedia(
        self,
        path: str | os.PathLike[str],
        slug: str | None = None,
        *,
        pinned: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
    ) -> Path:
        """Write `to_neuronpedia()` as strict JSON (the viewer's `JSON.parse` reads it), through a
        temporary name (never half a file). The slug defaults to the file's name."""
        from token_trace.neuronpedia_graph import dumps, file_slug

        document = self.to_neuronpedia(slug or file_slug(path), pinned=pinned, labels=labels)
        return write_text(path, dumps(document))

    def upload_to_neuronpedia(
        self,
        api_key: str | None = None,
        *,
        slug: str | None = None,
        pinned: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        base_url: str | None = None,
        timeout: float = UPLOAD_TIMEOUT,
    ) -> str:
        """Upload `to_neuronpedia()` to Neuronpedia and return the graph's page there.

        The key comes from `api_key` or `NEURONPEDIA_API_KEY`, the site from `base_url` or
        `TOKEN_TRACE_NEURONPEDIA_URL` (default https://www.neuronpedia.org). Without a `slug`
        the graph is named by its content (`token-trace-<hash>`), so two graphs never take each
        other's name. Raises `token_trace.neuronpedia_upload.UploadError` when Neuronpedia
        refuses or cannot be reached; see that module.
        """
        from token_trace.neuronpedia_graph import content_slug, dumps
        from token_trace.neuronpedia_upload import upload_graph

        document = self.to_neuronpedia(slug, pinned=pinned, labels=labels)
        if slug is None:
            document["metadata"]["slug"] = content_slug(document)
        return upload_graph(dumps(document), api_key, base_url=base_url, timeout=timeout)


def compute_graph(
    text: TextOrTokens,
    model: str | Model = DEFAULT_MODEL,
    saes: SAEArgument = None,
    *,
    answer: Answer | None = None,
    contrast: Answer | None = None,
    counterfactual: TextOrTokens | None = None,
    metric: MetricArgument = None,
    max_nodes: int | None = DEFAULT_MAX_NODES,
    node_threshold: float | None = DEFAULT_NODE_THRESHOLD,
    edge_threshold: float | None = DEFAULT_EDGE_THRESHOLD,
    baseline_sources: bool = DEFAULT_BASELINE_SOURCES,
    device: str | None = None,
    sae_dtype: SAEDtype = "float32",
    backend: Backend | None = None,
    baseline_text: TextOrTokens | None = None,
    model_dtype: ModelDtype = "auto",
) -> Graph:
    """Attribute `text` (attribution patching) and compute the graph of its top nodes.

    Arguments as `token_trace.trace`; `max_nodes` keeps the nodes of largest |attribution|
    (features and errors; None keeps all) before any edge is computed, and the thresholds prune
    by influence on the metric (None switches that pruning off); `baseline_sources` as
    `Graph.prune`.
    """
    prompt = PromptSpec(text, answer, contrast, either(counterfactual, baseline_text))
    options = TraceOptions(
        metric=metric, device=device, sae_dtype=sae_dtype, model_dtype=model_dtype,
        backend=backend,
    )  # fmt: skip
    chosen = GraphOptions(max_nodes, node_threshold, edge_threshold, baseline_sources)
    return graph_of(prompt, resolve(model, saes, options), options, chosen)


def graph_of(
    prompt: PromptSpec, loaded: Loaded, options: TraceOptions, graph: GraphOptions
) -> Graph:
    """`compute_graph` on records: one AtP run, then the graph from its captured passes."""
    options.check_graphable()
    (result,), run = run_traces([prompt], loaded, options)
    return graph_from_run(result, run, graph)


def graph_from_trace(
    result: Trace,
    *,
    model: Model | None = None,
    saes: Mapping[str, SAE] | None = None,
    max_nodes: int | None = DEFAULT_MAX_NODES,
    node_threshold: float | None = DEFAULT_NODE_THRESHOLD,
    edge_threshold: float | None = DEFAULT_EDGE_THRESHOLD,
    baseline_sources: bool = DEFAULT_BASELINE_SOURCES,
    device: str | None = None,
) -> Graph:
    """The graph of a finished attribution-patching trace (see the module docstring): the
    model is run again on the trace's inputs to capture what the edges need."""
    options = GraphOptions(max_nodes, node_threshold, edge_threshold, baseline_sources)
    _check_graphable(result)
    model, saes = model_and_saes(result, model, saes, device)
    return _graph(result, capture(result, model, saes), model, saes, options)


def graph_from_run(result: Trace, run: AttributionRun, options: GraphOptions) -> Graph:
    """The graph of a trace the caller has just made, from its engine run (`run_traces`): its
    captured activations and gradients, model and SAEs are reused, nothing runs twice."""
    _check_graphable(result)
    if len(run.results) != 1:
        raise ValueError("Graphs are built one prompt at a time: run the prompt alone.")
    return _graph(result, Passes(run.clean, run.baseline), run.model, run.saes, options)


def _check_graphable(result: Trace) -> None:
    if result.method != "atp":
        raise ValueError("Graphs are built from attribution-patching traces (method='atp').")


def _graph(
    result: Trace,
    passes: Passes,
    model: Model,
    saes: Mapping[str, SAE],
    options: GraphOptions,
) -> Graph:
    """Candidates, their edges layer by layer and to the metric, influence, then pruning.

    A trace saved before `MetricRecord.target_probability` was recorded gets it from the passes
    (the graph's `trace` then holds it; everything else is the trace given).
    """
    if result.metric.target_probability is None:
        metric = result.metric
        probability = target_probability(
            metric.name, metric.token_ids, metric.value, passes.clean.last_logits[0]
        )
        result = replace(result, metric=replace(metric, target_probability=probability))
    candidates = _candidate_nodes(result, options.max_nodes)
    last_hook = _ordered_hooks(result)[-1].hook_name
    edges = [
        *_layer_edges(result, passes, model, saes, candidates),
        _metric_edges(candidates, last_hook),
    ]
    all_edges = _edge_table(pd.concat(edges, ignore_index=True), candidates)
    candidates = candidates.assign(influence=_influence(candidates, all_edges))
    nodes, kept_edges = _pruned(
        candidates, all_edges, options.node_threshold, options.edge_threshold,
        options.baseline_sources,
    )  # fmt: skip
    return Graph(
        trace=result,
        nodes=nodes,
        edges=kept_edges,
        candidate_nodes=candidates,
        candidate_edges=all_edges,
        max_nodes=options.max_nodes,
        node_threshold=options.node_threshold,
        edge_threshold=options.edge_threshold,
        baseline_sources=options.baseline_sources,
    )


# --------------------------------------------------------------------------- passes


@dataclass(frozen=True)
class Passes:
    """One prompt's captured clean pass (activations, gradients, block-0 input) and baseline."""

    clean: CapturedPass
    base: CapturedPass | None


def capture(result: Trace, model: Model, saes: Mapping[str, SAE]) -> Passes:
    """Run the model again on a trace's inputs, capturing what the edges need."""
    hook_names = [record.hook_name for record in result.saes]
    inputs = replay(result, model)
    batch = Batch.of([inputs.tokens], [inputs.metric])
    clean = capture_pass(model, batch, batch.tokens, hook_names, with_grads=True, input_blocks={0})
    base = None
    if inputs.baseline_tokens is not None:
        base = capture_pass(
            model, batch, inputs.baseline_tokens, hook_names, with_grads=False, input_blocks={0}
        )
    return Passes(clean, base)


# --------------------------------------------------------------------------- edges


def _layer_edges(
    result: Trace,
    passes: Passes,
    model: Model,
    saes: Mapping[str, SAE],
    candidates: pd.DataFrame,
) -> list[pd.DataFrame]:
    """The edges into each SAE layer's candidates from the layer below (tokens below the first).

    Each layer's candidates seed one batched pull-back through the blocks between the two hooks.
    """
    clean, base = passes.clean, passes.base
    layers = _ordered_hooks(result)
    features = result.nodes[result.nodes["node_type"] == "feature"]
    tables = {name: rows for name, rows in features.groupby("hook_name", observed=True)}
    empty = features.iloc[:0]
    edges = []
    # The layer below the first SAE: the token embeddings entering block 0.
    upstream = _embedding_directions(clean, base)
    upstream_ids = candidates.loc[candidates["node_type"] == "embedding", "node_id"].to_numpy()
    upstream_pos = np.arange(len(upstream_ids))
    upstream_act, upstream_depth = clean.block_inputs[0][0], 0
    for record in layers:
        sae = saes[record.hook_name]
        x = clean.acts[record.hook_name][0].flatten(1)
        g = clean.grads[record.hook_name][0].flatten(1)
        x_base = None if base is None else base.acts[record.hook_name][0].flatten(1)
        nodes = candidates[candidates["hook_name"] == record.hook_name]
        active = tables.get(record.hook_name, empty)
        position = torch.as_tensor(nodes["position"].to_numpy(copy=True), device=x.device)
        if len(nodes):
            seeds = _seeds(sae, x, g, nodes, active)
            weights = _pull_back(
                model,
                upstream_act,
                upstream_depth,
                residual_depth(record.hook_name),
                seeds,
                position,
                upstream,
                torch.as_tensor(upstream_pos, device=x.device),
            )
            target, source = weights.nonzero(as_tuple=True)
            edges.append(
                pd.DataFrame(
                    {
                        "source": upstream_ids[source.cpu().numpy()],
                        "target": nodes["node_id"].to_numpy()[target.cpu().numpy()],
                        "weight": weights[target, source].cpu().numpy().astype(np.float64),
                    }
                )
            )
        upstream = _node_directions(sae, x, x_base, nodes, active)
        upstream_ids, upstream_pos = nodes["node_id"].to_numpy(), position.cpu().numpy()
        upstream_act = clean.acts[record.hook_name][0]
        upstream_depth = residual_depth(record.hook_name)
    return edges


def _metric_edges(candidates: pd.DataFrame, last_hook: str) -> pd.DataFrame:
    """The last SAE layer's nodes feed the metric with weight = their attribution."""
    metric_id = candidates["node_id"].iloc[-1]
    last = candidates[candidates["hook_name"] == last_hook]
    return pd.DataFrame(
        {
            "source": last["node_id"].to_numpy(),
            "target": metric_id,
            "weight": last["attribution"].to_numpy().astype(np.float64),
        }
    )


# --------------------------------------------------------------------------- nodes


def _ordered_hooks(result: Trace) -> list:
    """The trace's SAE records by residual depth; graphs need residual hooks at distinct depths."""
    for record in result.saes:
        if not is_residual(record.hook_name):
            raise ValueError(
                f"Graphs need SAEs on the residual stream; {record.hook_name!r} is not a "
                "blocks.L.hook_resid_pre/post hook (only those are complete cuts of the model)."
            )
    ordered = sorted(result.saes, key=lambda record: record.layer)
    depths = [record.layer for record in ordered]
    if len(set(depths)) != len(depths):
        raise ValueError(f"Two SAEs read the same residual depth ({depths}); keep one per depth.")
    return ordered


def _candidate_nodes(result: Trace, max_nodes: int | None) -> pd.DataFrame:
    """SAE nodes of largest |attribution|, then one node per token, then the metric."""
    table = result.nodes
    chosen = table if max_nodes is None else result.top_nodes(max_nodes)
    sae_nodes = chosen.sort_index().reset_index(drop=True)
    sae_nodes = sae_nodes.assign(
        node_id=node_ids(sae_nodes["layer"], sae_nodes["feature"], sae_nodes["position"])
    )
    tokens = result.prompt.tokens
    ids = np.asarray(result.prompt.token_ids)
    positions = np.arange(len(tokens))
    embeddings = pd.DataFrame(
        {
            "node_id": [f"E_{token}_{p}" for token, p in zip(ids, positions)],
            "layer": -1,
            "position": positions,
            "token": list(tokens),
            "feature": -1,
        }
    )
    last = len(tokens) - 1
    target_id = result.metric.token_ids[0] if result.metric.token_ids else -1
    top_layer = int(table["layer"].max()) + 1
    metric = pd.DataFrame(
        {
            "node_id": [f"{top_layer}_{target_id}_{last}"],
            "layer": top_layer,
            "position": last,
            "token": [result.prompt.target or result.metric.description],
            "feature": target_id,
            "attribution": result.metric.value,
        }
    )
    out = pd.concat(
        [
            sae_nodes.assign(node_type=sae_nodes["node_type"].astype(str)),
            embeddings.assign(node_type="embedding"),
            metric.assign(node_type="metric"),
        ],
        ignore_index=True,
    )
    out["node_type"] = pd.Categorical(out["node_type"], categories=NODE_TYPES)
    if LABEL_COLUMN in out.columns:  # a labelled trace: tokens and the metric have no label
        out[LABEL_COLUMN] = out[LABEL_COLUMN].fillna("").astype("str")
    return _in_order(out)


def _in_order(nodes: pd.DataFrame) -> pd.DataFrame:
    """The graph node columns in `GRAPH_COLUMNS` order (those the frame has)."""
    return nodes[[c for c in GRAPH_COLUMNS if c in nodes.columns]]


def _embedding_directions(clean, base) -> torch.Tensor:
    """Per position, the embedding minus its baseline (zero, or the counterfactual's), in at
    least float32 like every other node's delta (edges are accumulated in it)."""
    emb = clean.block_inputs[0][0].flatten(1)
    dtype = torch.promote_types(emb.dtype, torch.float32)
    emb = emb.to(dtype)
    return emb if base is None else emb - base.block_inputs[0][0].flatten(1).to(dtype)


@torch.no_grad()
def _node_directions(
    sae: SAE,
    x: torch.Tensor,
    x_base: torch.Tensor | None,
    nodes: pd.DataFrame,
    active: pd.DataFrame,
) -> torch.Tensor:
    """Each node's `delta`: `(f_i - f_i') d_i` for a feature, `e_s - e_s'` for an error.

    Both from the trace's own values: an error's delta is the activation's change minus its
    features' (`e = x - f W_dec - b_dec`, so `e - e' = (x - x') - (f - f') W_dec`), with no encode.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    decoder = sae.W_dec.to(dtype)
    feature = torch.as_tensor(nodes["feature"].to_numpy(copy=True), device=x.device)
    position = torch.as_tensor(nodes["position"].to_numpy(copy=True), device=x.device)
    change = nodes["activation"].to_numpy() - nodes["baseline_activation"].to_numpy()
    change = torch.as_tensor(change, device=x.device, dtype=dtype).unsqueeze(1)
    directions = change * decoder[feature.clamp_min(0)]
    is_error = feature < 0
    if is_error.any():
        features_change = active["activation"].to_numpy() - active["baseline_activation"].to_numpy()
        explained = torch.zeros_like(x, dtype=dtype).index_add_(
            0,
            torch.as_tensor(active["position"].to_numpy(copy=True), device=x.device),
            torch.as_tensor(features_change, device=x.device, dtype=dtype).unsqueeze(1)
            * decoder[torch.as_tensor(active["feature"].to_numpy(copy=True), device=x.device)],
        )
        reference = sae.b_dec.to(dtype) if x_base is None else x_base.to(dtype)
        errors = x.to(dtype) - reference - explained
        directions[is_error] = errors[position[is_error]]
    return directions


def _seeds(
    sae: SAE, x: torch.Tensor, g: torch.Tensor, nodes: pd.DataFrame, active: pd.DataFrame
) -> torch.Tensor:
    """Each downstream node's seed `v` at its own position (see the module docstring).

    For SAEs whose active features are linear in the input where they fire (ReLU, TopK,
    JumpReLU: `df_j/dx = W_enc[:, j]` for an active j, 0 otherwise), the seeds are written from
    the encoder's columns and the trace's own active features and gradients, with no pass over
    the SAE's full width; other architectures go through autograd on `sae.encode`.
    """
    position = torch.as_tensor(nodes["position"].to_numpy(copy=True), device=x.device)
    feature = torch.as_tensor(nodes["feature"].to_numpy(copy=True), device=x.device)
    if sae.cfg.architecture() not in LINEAR_WHERE_ACTIVE:
        return _seeds_by_autograd(sae, x, g, position, feature)
    with torch.no_grad():
        return _linear_seeds(sae, g, nodes, active, position, feature)


def _linear_seeds(
    sae: SAE,
    g: torch.Tensor,
    nodes: pd.DataFrame,
    active: pd.DataFrame,
    position: torch.Tensor,
    feature: torch.Tensor,
) -> torch.Tensor:
    """`_seeds` for SAEs in `LINEAR_WHERE_ACTIVE`, from encoder columns."""
    dtype = torch.promote_types(g.dtype, torch.float32)
    grad_rows = g[position].to(dtype)
    is_feature = feature >= 0
    index = feature.clamp_min(0)
    fires = torch.as_tensor(nodes["activation"].to_numpy(copy=True) > 0, device=g.device)
    coefficient = (sae.W_dec.to(dtype)[index] * grad_rows).sum(1, keepdim=True)
    feature_seeds = coefficient * fires.unsqueeze(1) * sae.W_enc.T[index].to(dtype)
    # J_xhat^T g at each position: sum over the features firing there of W_enc[:, j] (d_j . g).
    on = active[active["activation"] > 0]
    columns = torch.as_tensor(on["feature"].to_numpy(copy=True), device=g.device)
    at = torch.as_tensor(on["position"].to_numpy(copy=True), device=g.device)
    weights = torch.as_tensor(on["gradient"].to_numpy(copy=True), device=g.device, dtype=dtype)
    pulled = torch.zeros_like(g, dtype=dtype).index_add_(
        0, at, sae.W_enc.T[columns].to(dtype) * weights.unsqueeze(1)
    )
    error_seeds = grad_rows - pulled[position]
    return torch.where(is_feature.unsqueeze(1), feature_seeds, error_seeds)


def _seeds_by_autograd(
    sae: SAE, x: torch.Tensor, g: torch.Tensor, position: torch.Tensor, feature: torch.Tensor
) -> torch.Tensor:
    """`_seeds` for any SAE: the encoder's local derivative by autograd through `sae.encode`."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    rows = x[position].to(dtype).detach().requires_grad_(True)
    grad_rows = g[position].to(dtype)
    is_feature = feature >= 0
    index = feature.clamp_min(0)
    with torch.enable_grad():
        codes = sae.encode(rows.to(sae.dtype))
        chosen = codes.gather(1, index.unsqueeze(1)).squeeze(1)
        (feature_jacobian,) = torch.autograd.grad(
            chosen.where(is_feature, torch.zeros_like(chosen)).sum(), rows, retain_graph=True
        )
        reconstruction = sae.decode(codes).to(dtype)
        (error_pull,) = torch.autograd.grad((reconstruction * grad_rows).sum(), rows)
    coefficient = (sae.W_dec.to(dtype)[index] * grad_rows).sum(1, keepdim=True)
    return torch.where(
        is_feature.unsqueeze(1),
        coefficient * feature_jacobian,
        grad_rows - error_pull,
    ).detach()


def _pull_back(
    model: Model,
    upstream_act: torch.Tensor,
    start_depth: int,
    end_depth: int,
    seeds: torch.Tensor,
    seed_position: torch.Tensor,
    upstream_directions: torch.Tensor,
    upstream_position: torch.Tensor,
) -> torch.Tensor:
    """`[seeds, upstream nodes]` edge weights: each seed pulled back through the blocks between
    the two hooks and dotted with each upstream `delta`.

    Seeds are taken in position order, at most `SEED_BATCH` per batched backward, and each batch
    runs the blocks only up to its last seed position (attention is causal), so a seed at the BOS
    costs a one-position pass.
    """
    weights = torch.zeros(len(seeds), len(upstream_position), device=seeds.device)
    order = torch.argsort(seed_position, stable=True)
    columns = torch.arange(len(upstream_position), device=seeds.device)
    last_block = _row_mlp_block(model, start_depth, end_depth)
    with model_lock(model), torch.enable_grad():
        for chunk in order.split(SEED_BATCH):
            length = int(seed_position[chunk].max()) + 1
            x_in = upstream_act[:length].detach().unsqueeze(0).requires_grad_(True)
            rows = torch.unique(seed_position[chunk])
            with hooked(model, _mlp_at_rows_only(model, last_block, end_depth, rows, length)):
                out = run_blocks(model, x_in, start_depth, end_depth)
            grad_out = out.new_zeros((len(chunk), *out.shape))
            rows = torch.arange(len(chunk), device=out.device)
            grad_out[rows, 0, seed_position[chunk]] = seeds[chunk].to(out.dtype)
            if start_depth == end_depth:  # no block between (the embedding under resid_pre 0)
                pulled = grad_out
            else:
                (pulled,) = torch.autograd.grad(
                    out, x_in, grad_outputs=grad_out, is_grads_batched=True
                )
            pulled = pulled[:, 0].to(upstream_directions.dtype)  # [chunk, length, d_model]
            # weight[k, n] = pulled[k, s_n] . delta_n, without a [chunk, nodes, d_model] tensor
            reachable = upstream_position < length
            at = upstream_position.clamp_max(length - 1)
            products = torch.einsum("ktd,nd->ktn", pulled, upstream_directions)
            weights[chunk] = products[:, at, columns] * reachable
    return weights


def _row_mlp_block(model: Model, start_depth: int, end_depth: int) -> Any | None:
    """The last block between two hooks when `_mlp_at_rows_only` applies to it, else None:
    pre-norm blocks with a separate MLP (not parallel attention, not post-norm)."""
    if end_depth <= start_depth:
        return None
    cfg = model.cfg
    if (
        cfg.attn_only
        or cfg.parallel_attn_mlp
        or f"blocks.{end_depth - 1}.ln2.hook_normalized" not in model.hook_dict
        or backend.architecture(model) in POST_NORM_ARCHITECTURES
    ):
        return None
    return model.blocks[end_depth - 1]


def _mlp_at_rows_only(
    model: Model, block: Any | None, end_depth: int, rows: torch.Tensor, length: int
) -> list[tuple[str, Any]]:
    """Hooks that keep the autograd graph of the last block's MLP at the seed positions only.

    A seed at position t enters the last block's output at t alone, and that block's MLP acts on
    each position separately, so the MLP's backward at any other position only multiplies zeros;
    yet the batched backward would run its products over every position (about three quarters of
    a GPT-2 block's work). The hooks run the MLP over all positions without a graph and recompute
    it, with one, at `rows`. Exact: the gradients are the same. Only for the blocks
    `_row_mlp_block` gives, and when the rows are not all positions.
    """
    if block is None or len(rows) >= length:
        return []
    name = f"blocks.{end_depth - 1}"
    stash: dict[str, torch.Tensor] = {}

    def keep_mid(act: torch.Tensor, name: str) -> torch.Tensor:
        if act.shape[1] == length:  # not the recomputation (a bridge's ln2 input is this hook)
            stash["mid"] = act
        return act

    def without_graph(act: torch.Tensor, name: str) -> torch.Tensor:
        # The full pass (every position) runs without a graph; the recomputation at `rows` keeps it.
        return act.detach() if act.shape[1] == length else act

    def rows_with_graph(act: torch.Tensor, name: str) -> torch.Tensor:
        if act.shape[1] != length:  # the recomputation's own pass through this hook
            return act
        recomputed = backend.mlp(model, block, stash["mid"][:, rows])
        return act.detach().index_copy(1, rows, recomputed.to(act.dtype))

    return [
        (f"{name}.hook_resid_mid", keep_mid),
        (f"{name}.ln2.hook_normalized", without_graph),
        (f"{name}.hook_mlp_out", rows_with_graph),
    ]


# --------------------------------------------------------------------------- influence, pruning


def _edge_table(edges: pd.DataFrame, nodes: pd.DataFrame) -> pd.DataFrame:
    """Edges with the layers, positions and types of both ends."""
    by_id = nodes.set_index("node_id")
    out = edges.copy()
    for end in ("source", "target"):
        ends = by_id.loc[out[end]]
        out[f"{end}_layer"] = ends["layer"].to_numpy()
        out[f"{end}_position"] = ends["position"].to_numpy()
        out[f"{end}_type"] = pd.Categorical(ends["node_type"].astype(str), categories=NODE_TYPES)
    return out[EDGE_COLUMNS]


def _matrix(nodes: pd.DataFrame, edges: pd.DataFrame) -> np.ndarray:
    """Dense |weight| matrix `[target, source]` over the candidate nodes (at most max_nodes SAE
    nodes, the tokens and the metric)."""
    index = pd.Index(nodes["node_id"])
    matrix = np.zeros((len(nodes), len(nodes)))
    matrix[index.get_indexer(edges["target"]), index.get_indexer(edges["source"])] = np.abs(
        edges["weight"].to_numpy()
    )
    return matrix


def _normalised(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1e-10)


def _path_sums(normalised: np.ndarray, start: np.ndarray) -> np.ndarray:
    """`start @ (A + A^2 + ...)`: the graph is layered, so the series ends within its depth."""
    total = np.zeros_like(start)
    current = start @ normalised
    for _ in range(len(start)):
        if not current.any():
            return total
        total += current
        current = current @ normalised
    raise RuntimeError("The graph has a cycle: influence does not converge.")


def _metric_weights(nodes: pd.DataFrame) -> np.ndarray:
    return (nodes["node_type"] == "metric").to_numpy(dtype=float)


def _influence(nodes: pd.DataFrame, edges: pd.DataFrame) -> np.ndarray:
    """Each node's influence on the metric: summed over paths, row-normalised |weights|."""
    return _path_sums(_normalised(_matrix(nodes, edges)), _metric_weights(nodes))


def _cut(scores: np.ndarray, share: float) -> float:
    """The smallest score among those that, largest first, carry `share` of the total."""
    ordered = np.sort(scores[scores > 0])[::-1]
    if not len(ordered):
        return np.inf
    cumulative = np.cumsum(ordered) / ordered.sum()
    return float(ordered[min(int(np.searchsorted(cumulative, share)), len(ordered) - 1)])


def _pruned(
    nodes: pd.DataFrame,
    edges: pd.DataFrame,
    node_threshold: float | None,
    edge_threshold: float | None,
    baseline_sources: bool,
    pinned: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Nodes, then edges, by influence; then drop SAE nodes left without outgoing edges and
    features left without incoming ones (but, with `baseline_sources`, those off on the clean
    prompt), until nothing changes. Tokens, the metric and the `pinned` mask's nodes stay."""
    fixed = nodes["node_type"].isin(["embedding", "metric"]).to_numpy()
    if pinned is not None:
        fixed = fixed | pinned
    influence = nodes["influence"].to_numpy()
    keep = np.ones(len(nodes), dtype=bool)
    if node_threshold is not None:
        keep = (influence >= _cut(influence, node_threshold)) | fixed
    matrix = _matrix(nodes, edges)
    matrix[~keep] = 0
    matrix[:, ~keep] = 0
    normalised = _normalised(matrix)
    weights = _metric_weights(nodes)
    scores = normalised * (_path_sums(normalised, weights) + weights)[:, None]
    edge_keep = scores > 0
    if edge_threshold is not None:
        edge_keep &= scores >= _cut(scores.ravel(), edge_threshold)
    is_feature = (nodes["node_type"] == "feature").to_numpy()
    if baseline_sources:
        is_feature = is_feature & (nodes["activation"].to_numpy() != 0)
    while True:
        before = keep.copy()
        edge_keep[~keep] = False
        edge_keep[:, ~keep] = False
        keep &= fixed | edge_keep.any(axis=0)  # every SAE node feeds something kept
        keep &= ~is_feature | edge_keep.any(axis=1)  # every feature is fed by something kept
        if (keep == before).all():
            break
    index = pd.Index(nodes["node_id"])
    targets = index.get_indexer(edges["target"])
    sources = index.get_indexer(edges["source"])
    kept_edges = edges[edge_keep[targets, sources]].reset_index(drop=True)
    return nodes[keep].reset_index(drop=True), kept_edges
