"""What matters across a dataset: per-(SAE, feature) and per-error-layer totals, and one graph.

Aggregation runs shard by shard in two steps, so a run of any size needs only one shard in memory
and the per-shard step can run anywhere (in this process, or as Ray tasks):

1. `shard_partial`: a shard's node rows -> per-prompt totals (a feature active at several
   positions counts once per prompt, with its attributions summed) -> per-key sums over the
   shard's prompts, and the shard's top prompts per key.
2. `combine`: all partials -> sums over the whole run -> means, shares and the top prompts.

Every prompt lies wholly inside one shard, so per-prompt totals are exact in step 1.

Columns of `features.parquet` (one row per SAE feature that was active somewhere, and one per SAE
error layer, `node_type` "error", `feature` -1), sorted by `mean_abs_attribution`:
- `n_prompts_active`, `frac_prompts_active`: in how many of the run's successful prompts it fired;
- `mean_attribution`: mean over all successful prompts of its per-prompt total (0 where inactive,
  as Marks et al. average over a dataset); `mean_attribution_when_active`: over the prompts where
  it fired; `mean_abs_attribution`: mean of |per-prompt total|;
- `share_of_total`: its share of the summed |per-prompt totals| of all features and errors;
- `top_prompt_ids`, `top_attributions`: the prompts where |its total| is largest;
- `label`: the feature's readable label (`token_trace.labels`; "" where none), added by
  `run_dataset` after combining.

With graphs, the aggregate graph keys nodes without their position (`{layer}_{feature}`, errors
`{layer}_-1`, token embeddings `E_{token id}`, and one `metric` node) and sums each prompt's edges
and influences over positions before averaging over prompts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from token_trace.datasets.layout import RunDir

TOP_PROMPTS = 5
FEATURE_KEYS = ["hook_name", "sae_id", "layer", "node_type", "feature"]
GRAPH_NODE_KEYS = ["node", "node_type", "layer", "feature"]
GRAPH_EDGE_KEYS = ["source", "target", "source_type", "target_type"]
PARTIAL_KINDS = ("features", "graph_nodes", "graph_edges")


def shard_partial(run_dir: RunDir, kind: str, shard: int, exclude_bos: bool) -> pd.DataFrame:
    """Step 1 for one shard: sums per key over the shard's prompts (see the module docstring)."""
    if kind == "features":
        nodes = pd.read_parquet(
            run_dir.shard("nodes", shard),
            columns=["prompt_id", *FEATURE_KEYS, "position", "attribution", "neuronpedia_url"],
        )
        if exclude_bos:
            nodes = _without_bos(nodes, run_dir, shard)
        per_prompt = _per_prompt(nodes, FEATURE_KEYS, ["attribution"], first=["neuronpedia_url"])
        return _summed(per_prompt, FEATURE_KEYS, ["attribution"], top_k=TOP_PROMPTS)
    if kind == "graph_nodes":
        nodes = pd.read_parquet(run_dir.shard("graph_nodes", shard))
        nodes["node"] = position_free(nodes["node_id"], nodes["node_type"])
        per_prompt = _per_prompt(nodes, GRAPH_NODE_KEYS, ["influence", "attribution"])
        return _summed(per_prompt, GRAPH_NODE_KEYS, ["influence", "attribution"], top_k=0)
    if kind == "graph_edges":
        edges = pd.read_parquet(run_dir.shard("graph_edges", shard))
        edges["source"] = position_free(edges["source"], edges["source_type"])
        edges["target"] = position_free(edges["target"], edges["target_type"])
        per_prompt = _per_prompt(edges, GRAPH_EDGE_KEYS, ["weight"])
        return _summed(per_prompt, GRAPH_EDGE_KEYS, ["weight"], top_k=0)
    raise ValueError(f"Unknown partial {kind!r}: use one of {PARTIAL_KINDS}.")


def combine_features(partials: Iterable[pd.DataFrame], n_prompts: int) -> pd.DataFrame:
    """Step 2 for `features.parquet`: `n_prompts` is the number of successful prompts."""
    table = _combined(list(partials), FEATURE_KEYS, ["attribution"], top_k=TOP_PROMPTS)
    n = max(n_prompts, 1)
    active = table["n_prompts"].to_numpy()
    total = table["sum_attribution"].to_numpy()
    total_abs = table["sum_abs_attribution"].to_numpy()
    result = table[FEATURE_KEYS].assign(
        n_prompts_active=active,
        frac_prompts_active=active / n,
        mean_attribution=total / n,
        mean_attribution_when_active=total / np.maximum(active, 1),
        mean_abs_attribution=total_abs / n,
        share_of_total=total_abs / max(float(total_abs.sum()), np.finfo(float).tiny),
        top_prompt_ids=table["top_prompt_ids"],
        top_attributions=table["top_values"],
        neuronpedia_url=table["neuronpedia_url"],
    )
    return _sorted(result, "mean_abs_attribution")


def combine_graph(
    node_partials: Iterable[pd.DataFrame], edge_partials: Iterable[pd.DataFrame], n_graphs: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Step 2 for the aggregate graph: mean influence per node and mean weight per edge over the
    `n_graphs` prompts that have a graph (0 where a node or edge was pruned away)."""
    n = max(n_graphs, 1)
    nodes = _combined(list(node_partials), GRAPH_NODE_KEYS, ["influence", "attribution"], top_k=0)
    nodes = nodes[GRAPH_NODE_KEYS].assign(
        n_prompts=nodes["n_prompts"],
        mean_influence=nodes["sum_influence"] / n,
        mean_attribution=nodes["sum_attribution"] / n,
    )
    edges = _combined(list(edge_partials), GRAPH_EDGE_KEYS, ["weight"], top_k=0)
    edges = edges[GRAPH_EDGE_KEYS].assign(
        n_prompts=edges["n_prompts"],
        mean_weight=edges["sum_weight"] / n,
        mean_abs_weight=edges["sum_abs_weight"] / n,
    )
    return _sorted(nodes, "mean_influence"), _sorted(edges, "mean_abs_weight")


def position_free(node_id: pd.Series, node_type: pd.Series) -> pd.Series:
    """A graph node id without its position (`3_17_5` -> `3_17`); every metric node -> `metric`."""
    key = node_id.astype(str).str.rsplit("_", n=1).str[0]
    return key.where(node_type.astype(str).to_numpy() != "metric", "metric")


def partials_of_batch(batch: pd.DataFrame, root: str, kind: str, exclude_bos: bool) -> pd.DataFrame:
    """A Ray task: the partials of the shards in `batch` (an empty shard gives no rows). It lives
    here because this module imports no torch, so Ray's task workers start in a moment."""
    frames = [shard_partial(RunDir(root), kind, int(s), exclude_bos) for s in batch["shard"]]
    frames = [frame for frame in frames if len(frame)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --------------------------------------------------------------------------- steps


def _without_bos(nodes: pd.DataFrame, run_dir: RunDir, shard: int) -> pd.DataFrame:
    prompts = pd.read_parquet(
        run_dir.shard("prompts", shard), columns=["prompt_id", "bos_position"]
    )
    bos = prompts.set_index("prompt_id")["bos_position"]
    at_bos = nodes["position"].to_numpy() == nodes["prompt_id"].map(bos).to_numpy()
    return nodes[~at_bos]


def _per_prompt(
    rows: pd.DataFrame, keys: Sequence[str], values: Sequence[str], first: Sequence[str] = ()
) -> pd.DataFrame:
    """Rows summed over positions: one row per (key, prompt)."""
    rows = rows.assign(**{key: rows[key].astype(str) for key in keys if rows[key].dtype != "int64"})
    grouped = rows.groupby([*keys, "prompt_id"], sort=False, dropna=False)
    spec = {value: (value, "sum") for value in values} | {col: (col, "first") for col in first}
    per_prompt = grouped.agg(**spec).reset_index()
    for value in values:
        per_prompt[value] = per_prompt[value].astype(np.float64)
    return per_prompt


def _summed(
    per_prompt: pd.DataFrame, keys: Sequence[str], values: Sequence[str], top_k: int
) -> pd.DataFrame:
    """Per key: prompt count, sum and sum of |.| of each value, first of the other columns, and
    (top_k > 0) the top_k prompts by |first value|."""
    work = per_prompt.assign(**{f"abs_{v}": per_prompt[v].abs() for v in values})
    spec: dict[str, tuple[str, str]] = {"n_prompts": ("prompt_id", "size")}
    for value in values:
        spec[f"sum_{value}"] = (value, "sum")
        spec[f"sum_abs_{value}"] = (f"abs_{value}", "sum")
    extra = [c for c in per_prompt.columns if c not in {*keys, "prompt_id", *values}]
    spec |= {column: (column, "first") for column in extra}
    sums = work.groupby(list(keys), sort=False, dropna=False).agg(**spec).reset_index()
    if top_k:
        tops = _top(work, keys, values[0], top_k, "prompt_id", values[0])
        sums = sums.merge(tops, on=list(keys), how="left")
    return sums


def _combined(
    partials: list[pd.DataFrame], keys: Sequence[str], values: Sequence[str], top_k: int
) -> pd.DataFrame:
    partials = [p for p in partials if len(p)]
    if not partials:
        columns = [*keys, "n_prompts"]
        for value in values:
            columns += [f"sum_{value}", f"sum_abs_{value}"]
        if top_k:
            columns += ["top_prompt_ids", "top_values", "neuronpedia_url"]
        return pd.DataFrame(columns=columns)
    stacked = pd.concat(partials, ignore_index=True)
    numeric = ["n_prompts"] + [f"{kind}_{v}" for v in values for kind in ("sum", "sum_abs")]
    extra = [
        c for c in stacked.columns if c not in {*keys, *numeric, "top_prompt_ids", "top_values"}
    ]
    spec = {c: (c, "sum") for c in numeric} | {c: (c, "first") for c in extra}
    table = stacked.groupby(list(keys), sort=False, dropna=False).agg(**spec).reset_index()
    if top_k:
        candidates = stacked[[*keys, "top_prompt_ids", "top_values"]].explode(
            ["top_prompt_ids", "top_values"]
        )
        candidates = candidates.dropna(subset=["top_values"])
        candidates["top_values"] = candidates["top_values"].astype(np.float64)
        candidates["abs"] = candidates["top_values"].abs()
        tops = _top(candidates, keys, "top_values", top_k, "top_prompt_ids", "top_values")
        table = table.merge(tops, on=list(keys), how="left")
    return table


def _top(
    rows: pd.DataFrame, keys: Sequence[str], by: str, k: int, id_column: str, value_column: str
) -> pd.DataFrame:
    """Per key, the ids and values of the k rows of largest |by|, largest first, as lists."""
    order = rows.assign(_abs=rows[by].abs()).sort_values("_abs", ascending=False, kind="stable")
    best = order.groupby(list(keys), sort=False, dropna=False).head(k)
    lists = best.groupby(list(keys), sort=False, dropna=False).agg(
        top_prompt_ids=(id_column, list), top_values=(value_column, list)
    )
    return lists.reset_index()


def _sorted(table: pd.DataFrame, by: str) -> pd.DataFrame:
    return table.sort_values(by, ascending=False, kind="stable", key=np.abs).reset_index(drop=True)
