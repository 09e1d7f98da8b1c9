"""Circuit faithfulness (Sparse Feature Circuits, Marks et al. 2024): how much of the metric a set
of SAE nodes carries on its own.

- `m(C)`: the trace's metric with every SAE node outside C at its baseline (zero, its value on
  the trace's counterfactual, or with `means` its mean over a set of prompts, Sparse Feature
  Circuits' mean ablation: `mean_activations`) and the nodes of C recomputed, as the model with
  every SAE spliced in computes them from what reaches them. "Outside C" is the whole
  dictionary: every feature of every SAE at every position and every error node, not only the
  trace's table, so a feature that was off on the clean prompt and that the ablation switches
  on is held at its baseline too.
- `m(M)` (every node kept) is the clean model; `m(empty)` holds every node at its baseline.
- faithfulness `(m(C) - m(empty)) / (m(M) - m(empty))`: 1 when C alone gives the model's metric.
- The complement `m(M \\ C)` holds only C at its baseline and recomputes everything else; that is
  exactly what `token_trace.ablate(result, [C])` measures (`m(M) - m(M \\ C)`, tested).
  Its faithfulness is Sparse Feature Circuits' completeness check: near 0 when nothing that
  matters was left outside C.

Relation to `ablate`, precisely: `ablate` holds its node set at the baseline and recomputes every
other node (features re-encoded from the edited activation, errors recomputed). So `m(C)` is
`m(M) - ablate(everything but C)` with "everything" the whole dictionary (tested), and the
complement is `ablate(C)` itself. An ablation that lists only the trace's table nodes outside C
would leave the switched-on features free.

The runs are rows of one batch (on a CPU a few batches of at most `CPU_CIRCUIT_TOKENS`
positions): a curve over many sizes costs one batched forward. The two reference rows `m(M)` and
`m(empty)` are computed once, and a set holding every node of the trace's table is that `m(M)` row
itself (it is the same run: nothing outside the table is active in either prompt), so the
faithfulness of all nodes is exactly 1 and of none exactly 0. Under mean ablation features
outside the table have a mean of their own, so there the table is a circuit like any other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from sae_lens import SAE

from token_trace.ablation import sae_leaves
from token_trace.backend import Model
from token_trace.hooks import final_residual, logits_at
from token_trace.node_refs import node_ids as format_node_ids
from token_trace.node_refs import resolve_node
from token_trace.records import Trace
from token_trace.replay import model_and_saes, replay
from token_trace.splice import spliced

#: Circuit sizes of a curve; "all" is every SAE node of the trace.
DEFAULT_SIZES: tuple[int | str, ...] = (10, 20, 50, 100, 200, 500, 1000, "all")
ORDERS = ("attribution", "influence", "greedy")
#: Most rows x positions one pass runs on a CPU: bounds the `[rows, T, d_sae]` tables per hook.
CPU_CIRCUIT_TOKENS = 1024
#: `max_nodes` of the graph the "influence" order builds when none is given.
INFLUENCE_NODES = 1000
#: The "greedy" order prunes from the smallest of these numbers of nodes of largest |attribution|
#: whose faithfulness reaches GREEDY_START (else the largest), dropping GREEDY_DROP of the
#: remaining nodes per round. Dropping a tenth per round collapsed circuits on the bundled model
#: (nodes that are harmless alone, backups of each other, went in the same round); a fiftieth
#: did not (benchmarks/bench_faithfulness.py).
GREEDY_POOLS = (64, 128, 256, 512)
GREEDY_START = 0.95
GREEDY_DROP = 0.02


@dataclass(frozen=True)
class MeanActivations:
    """Per SAE hook, each feature's mean activation `[d_sae]` and the mean error `[d_in]` over
    the tokens of a set of prompts (BOS positions left out): the baseline of Sparse Feature
    Circuits' mean ablation, where a node outside the circuit takes its typical value rather
    than zero."""

    features: dict[str, torch.Tensor]
    errors: dict[str, torch.Tensor]
    n_tokens: int


@torch.no_grad()
def mean_activations(
    model: Model,
    saes: Mapping[str, SAE],
    texts: Sequence[str],
    *,
    exclude_bos: bool = True,
) -> MeanActivations:
    """The SAEs' mean features and errors over `texts`' tokens (one forward per text, with every
    SAE spliced in as the faithfulness runs have them)."""
    if isinstance(texts, str) or not texts:
        raise ValueError("Give a list of at least one prompt to average over.")
    features = {hook: torch.zeros(sae.cfg.d_sae) for hook, sae in saes.items()}
    errors = {hook: torch.zeros(sae.cfg.d_in) for hook, sae in saes.items()}
    count = 0
    for text in texts:
        tokens = model.to_tokens(text)
        start = int(exclude_bos and model.tokenizer is not None
                    and tokens[0, 0].item() == model.tokenizer.bos_token_id)  # fmt: skip
        leaves_f, leaves_e = sae_leaves(model, saes, tokens)
        for hook in saes:
            features[hook] += leaves_f[hook][0, start:].float().sum(0).cpu()
            errors[hook] += leaves_e[hook][0, start:].float().sum(0).cpu()
        count += tokens.shape[1] - start
    if count == 0:
        raise ValueError("The prompts have no tokens besides BOS to average over.")
    return MeanActivations(
        {hook: total / count for hook, total in features.items()},
        {hook: total / count for hook, total in errors.items()},
        count,
    )


class Graph(Protocol):
    """What the influence order reads of a `graph.Graph` (`graph` imports this module)."""

    trace: Trace
    candidate_nodes: pd.DataFrame


@dataclass(frozen=True)
class Faithfulness:
    """A node set's faithfulness and its complement's, with the four metrics they come from."""

    n_nodes: int
    metric_circuit: float
    """`m(C)`: nodes outside the set at their baseline, the set recomputed."""
    metric_complement: float
    """`m(M \\ C)`: the set at its baseline, every other node recomputed (what `ablate` runs)."""
    metric_full: float
    """`m(M)`: the model itself."""
    metric_empty: float
    """`m(empty)`: every SAE node at its baseline."""

    @property
    def faithfulness(self) -> float:
        """`(m(C) - m(empty)) / (m(M) - m(empty))`; NaN when the model's metric equals m(empty)."""
        return _share(self.metric_circuit, self)

    @property
    def complement_faithfulness(self) -> float:
        """The same for the complement: near 0 when the set is complete."""
        return _share(self.metric_complement, self)


def _share(value: float, reference: Faithfulness) -> float:
    span = reference.metric_full - reference.metric_empty
    return (value - reference.metric_empty) / span if span != 0 else math.nan


def faithfulness(
    result: Trace,
    node_ids: Sequence[str],
    *,
    model: Model | None = None,
    saes: Mapping[str, SAE] | None = None,
    device: str | None = None,
    means: MeanActivations | None = None,
) -> Faithfulness:
    """The faithfulness of the SAE nodes `node_ids` (graph node ids) on the trace's prompt, and of
    their complement: one batched forward of four rows. With `means`, nodes outside the set
    are held at their mean (`mean_activations`) instead of the trace's baseline."""
    runner = _Runner(result, model, saes, device, means)
    nodes = runner.lookup(node_ids)
    full, empty, (circuit, complement) = runner.metrics([(True, nodes), (False, nodes)])
    return Faithfulness(len(nodes), circuit, complement, full, empty)


def faithfulness_curve(
    result: Trace,
    sizes: Sequence[int | str] = DEFAULT_SIZES,
    order: str | Sequence[str] = "attribution",
    *,
    complement: bool = False,
    graph: Graph | None = None,
    model: Model | None = None,
    saes: Mapping[str, SAE] | None = None,
    device: str | None = None,
    means: MeanActivations | None = None,
) -> pd.DataFrame:
    """Faithfulness of the first k nodes of an ordering, for each k in `sizes`, in one batch
    (with `means`, under mean ablation as `faithfulness`).

    `order`: "attribution" (largest |attribution| first), "influence" (largest influence on the
    metric in `graph`, which this order needs, then the rest by |attribution|), "greedy" (see
    `greedy_order`), or node ids in the order to take them. Sizes past the number of nodes (and
    "all") take every node of the ordering.

    Returns one row per size: `order`, `size`, `n_features`, `n_errors`, `metric` (`m(C)`),
    `faithfulness`, the reference metrics `metric_full` and `metric_empty`, and with
    `complement=True` also `metric_complement` and `complement_faithfulness` (twice the rows).
    """
    counts = _sizes(sizes)
    if isinstance(order, str) and order not in ORDERS:
        raise ValueError(f"Unknown order {order!r}: use one of {ORDERS} or a list of node ids.")
    runner = _Runner(result, model, saes, device, means)
    if isinstance(order, str):
        ordered, label = _ordering(runner, order, graph), order
    else:
        ordered, label = runner.lookup(order), "custom"
    counts = sorted({min(n, len(ordered)) for n in counts})
    sets = [ordered[:n] for n in counts]
    rows = [(True, nodes) for nodes in sets]
    rows += [(False, nodes) for nodes in sets] if complement else []
    full, empty, values = runner.metrics(rows)
    reference = Faithfulness(0, math.nan, math.nan, full, empty)
    errors = [int((runner.feature[nodes] < 0).sum()) for nodes in sets]
    curve = pd.DataFrame(
        {
            "order": label,
            "size": counts,
            "n_features": [n - n_errors for n, n_errors in zip(counts, errors)],
            "n_errors": errors,
            "metric": values[: len(sets)],
            "faithfulness": [_share(v, reference) for v in values[: len(sets)]],
            "metric_full": full,
            "metric_empty": empty,
        }
    )
    if complement:
        rest = values[len(sets) :]
        curve["metric_complement"] = rest
        curve["complement_faithfulness"] = [_share(v, reference) for v in rest]
    return curve


def smallest_faithful(curve: pd.DataFrame, target: float = 0.8) -> int | None:
    """The smallest size of a curve whose faithfulness reaches `target`; None if none does."""
    reached = curve.loc[curve["faithfulness"] >= target, "size"]
    return int(reached.min()) if len(reached) else None


def greedy_order(
    result: Trace,
    pool: int | None = None,
    drop: float = GREEDY_DROP,
    *,
    model: Model | None = None,
    saes: Mapping[str, SAE] | None = None,
    device: str | None = None,
) -> list[str]:
    """Node ids, most important first, by greedy pruning measured with real runs.

    Start from the `pool` nodes of largest |attribution| (None: the smallest of `GREEDY_POOLS`
    whose faithfulness reaches `GREEDY_START`, from one batched curve); each round runs
    `m(C minus n)` for every n in C (one batched forward) and drops the `drop` share of them
    whose removal leaves the metric closest to the model's; the order is the reverse order of
    removal, followed by the nodes outside the pool by |attribution|. Costs about `pool / drop`
    rows in all.
    """
    runner = _Runner(result, model, saes, device)
    return runner.node_ids(_greedy(runner, pool, drop))


# --------------------------------------------------------------------------- orderings


def _sizes(sizes: Sequence[int | str]) -> list[int]:
    if isinstance(sizes, str) or not len(sizes):
        raise ValueError(f"sizes must be a list of sizes, got {sizes!r}.")
    out = []
    for size in sizes:
        if size == "all":
            out.append(np.iinfo(np.int64).max)
        elif isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
            raise ValueError(
                f"Sizes are whole numbers of nodes (0 or more) or 'all', got {size!r}."
            )
        else:
            out.append(int(size))
    return out


def _ordering(runner: _Runner, order: str, graph: Graph | None) -> np.ndarray:
    """The trace's nodes (catalogue indices) in `order`, most important first."""
    by_attribution = runner.by_attribution()
    if order == "attribution":
        return by_attribution
    if order == "greedy":
        return _greedy(runner, None, GREEDY_DROP)
    result = runner.result
    if graph is None:
        raise ValueError(
            "order='influence' ranks by a graph's influence: pass graph=, e.g. "
            f"graph_from_trace(trace, max_nodes={INFLUENCE_NODES}, node_threshold=None, "
            "edge_threshold=None)."
        )
    if graph.trace is not result:
        raise ValueError("The graph was built from another trace.")
    candidates = graph.candidate_nodes
    ranked = candidates[candidates["node_type"].isin(["feature", "error"])]
    ranked = ranked.sort_values("influence", ascending=False, kind="stable")
    return _then_rest(runner.lookup(ranked["node_id"].tolist()), by_attribution)


def _then_rest(first: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """`first`, then the entries of `rest` not in it, in their order."""
    return np.concatenate([first, rest[~np.isin(rest, first)]])


def _greedy(runner: _Runner, pool: int | None, drop: float) -> np.ndarray:
    if (pool is not None and pool < 1) or not 0 < drop < 1:
        raise ValueError(f"pool must be at least 1 and drop between 0 and 1 (got {pool}, {drop}).")
    by_attribution = runner.by_attribution()
    if pool is None:
        full, empty, values = runner.metrics([(True, by_attribution[:n]) for n in GREEDY_POOLS])
        reference = Faithfulness(0, math.nan, math.nan, full, empty)
        reached = [n for n, v in zip(GREEDY_POOLS, values) if _share(v, reference) >= GREEDY_START]
        pool = reached[0] if reached else GREEDY_POOLS[-1]
    kept = by_attribution[:pool]
    removed = []
    while len(kept):
        rows = [(True, np.delete(kept, i)) for i in range(len(kept))]
        full, _, values = runner.metrics(rows)
        n_drop = max(1, math.floor(drop * len(kept)))
        least = np.argsort(np.abs(np.asarray(values) - full), kind="stable")[:n_drop]
        removed.append(kept[least])
        kept = np.delete(kept, least)
    return _then_rest(np.concatenate(removed[::-1]), by_attribution)


# --------------------------------------------------------------------------- runs


class _Runner:
    """The trace's model, SAEs, inputs and baseline values, and metric runs of node sets.

    Node sets are arrays of indices into a catalogue of nodes, `hook` (index into the trace's
    SAEs), `position` and `feature`: the trace's table first (so its nodes are the indices
    below `n_table`), then any other node a caller names.
    """

    def __init__(
        self,
        result: Trace,
        model: Model | None,
        saes: Mapping[str, SAE] | None,
        device: str | None,
        means: MeanActivations | None = None,
    ) -> None:
        self.result = result
        self.model, self.saes = model_and_saes(result, model, saes, device)
        missing = [hook for hook in result.hook_names if hook not in self.saes]
        if missing:
            raise ValueError(f"No SAE given for the trace's hooks {missing}.")
        self.inputs = replay(result, self.model)
        self.base_features = self.base_errors = None
        self.means = means
        if means is not None:
            self.base_features, self.base_errors = self._mean_leaves(means)
        elif self.inputs.baseline_tokens is not None:
            self.base_features, self.base_errors = sae_leaves(
                self.model, self.saes, self.inputs.baseline_tokens
            )
        table = result.nodes
        self.hooks = result.hook_names
        self.hook = pd.Index(self.hooks).get_indexer(table["hook_name"].astype(str))
        self.position = table["position"].to_numpy(dtype=np.int64)
        self.feature = table["feature"].to_numpy(dtype=np.int64)
        self.n_table = len(table)
        self._stride = max(self.saes[hook].cfg.d_sae for hook in self.hooks) + 1
        self._keys = pd.Index(self._key(self.hook, self.position, self.feature))

    def _mean_leaves(
        self, means: MeanActivations
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The means as every position's baseline, `[1, T, d]` per hook."""
        missing = [hook for hook in self.result.hook_names if hook not in means.features]
        if missing:
            raise ValueError(f"The means have no values for the trace's hooks {missing}.")
        length = self.inputs.tokens.shape[1]
        device = self.inputs.tokens.device

        def spread(values: torch.Tensor, hook: str) -> torch.Tensor:
            dtype = self.saes[hook].W_dec.dtype
            return values.to(device, dtype).view(1, 1, -1).expand(1, length, -1)

        hooks = self.result.hook_names
        return (
            {hook: spread(means.features[hook], hook) for hook in hooks},
            {hook: spread(means.errors[hook], hook) for hook in hooks},
        )

    def _key(self, hook: np.ndarray, position: np.ndarray, feature: np.ndarray) -> np.ndarray:
        n_pos = len(self.result.prompt.token_ids)
        return (hook * n_pos + position) * self._stride + feature + 1

    def by_attribution(self) -> np.ndarray:
        """The table's nodes, largest |attribution| first."""
        magnitude = self.result.nodes["attribution"].abs().to_numpy()
        return np.argsort(-magnitude, kind="stable")

    def node_ids(self, nodes: np.ndarray) -> list[str]:
        layers = np.array([record.layer for record in self.result.saes])[self.hook[nodes]]
        return list(format_node_ids(layers, self.feature[nodes], self.position[nodes]))

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """Catalogue indices of graph node ids (nodes outside the table are added to it)."""
        if isinstance(ids, str):
            raise ValueError("Give a list of node ids, not one string.")
        refs = [resolve_node(self.result, self.saes, node_id) for node_id in ids]
        hook = pd.Index(self.hooks).get_indexer([ref.hook_name for ref in refs])
        position = np.array([ref.position for ref in refs], dtype=np.int64)
        feature = np.array([ref.feature for ref in refs], dtype=np.int64)
        keys = self._key(hook, position, feature)
        _, first = np.unique(keys, return_index=True)
        if len(first) < len(keys):
            repeated = np.setdiff1d(np.arange(len(keys)), first)[0]
            raise ValueError(f"Node {ids[repeated]!r} is listed twice.")
        index = self._keys.get_indexer(keys)
        new = index < 0
        if new.any():
            index[new] = len(self._keys) + np.arange(int(new.sum()))
            self.hook = np.concatenate([self.hook, hook[new]])
            self.position = np.concatenate([self.position, position[new]])
            self.feature = np.concatenate([self.feature, feature[new]])
            self._keys = self._keys.append(pd.Index(keys[new]))
        return index

    def metrics(self, rows: Sequence[tuple[bool, np.ndarray]]) -> tuple[float, float, list[float]]:
        """`m(M)`, `m(empty)`, and per row: with `keep` the nodes recomputed and everything else at
        the baseline, without it the nodes at the baseline and everything else recomputed."""
        runs: list[tuple[bool, np.ndarray]] = [(False, _NONE), (True, _NONE)]  # m(M), m(empty)
        index = []
        for keep, nodes in rows:
            if len(nodes) == 0:
                index.append(1 if keep else 0)
            elif keep and self.means is None and self._covers_table(nodes):
                index.append(0)
            else:
                index.append(len(runs))
                runs.append((keep, nodes))
        per_pass = len(runs)
        if torch.device(self.model.cfg.device).type == "cpu":
            per_pass = max(1, CPU_CIRCUIT_TOKENS // self.inputs.tokens.shape[1])
        values = torch.cat(
            [self._run(runs[start : start + per_pass]) for start in range(0, len(runs), per_pass)]
        ).tolist()
        return values[0], values[1], [values[i] for i in index]

    def _covers_table(self, nodes: np.ndarray) -> bool:
        return np.unique(nodes[nodes < self.n_table]).size == self.n_table

    def _members(
        self, rows: Sequence[tuple[bool, np.ndarray]]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per hook, the `(row, position, feature)` of every node of every row's set."""
        nodes = np.concatenate([nodes for _, nodes in rows])
        row = np.repeat(np.arange(len(rows)), [len(nodes) for _, nodes in rows])
        hook = self.hook[nodes]
        device = self.inputs.tokens.device
        out = {}
        for code in np.unique(hook):
            at = hook == code
            out[self.hooks[code]] = tuple(
                torch.as_tensor(values[at], device=device)
                for values in (row, self.position[nodes], self.feature[nodes])
            )
        return out

    @torch.no_grad()
    def _run(self, rows: Sequence[tuple[bool, np.ndarray]]) -> torch.Tensor:
        device = self.inputs.tokens.device
        keep = torch.tensor([k for k, _ in rows], device=device)
        members = self._members(rows)
        base_features, base_errors = self.base_features, self.base_errors

        def edit(
            hook: str, features: torch.Tensor, error: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            base_f = 0.0 if base_features is None else base_features[hook]
            base_e = 0.0 if base_errors is None else base_errors[hook]
            read_f = torch.where(keep.view(-1, 1, 1), base_f, features)
            read_e = torch.where(keep.view(-1, 1, 1), base_e, error)
            if hook in members:
                row, position, feature = members[hook]
                on = feature >= 0
                r, p, i = row[on], position[on], feature[on]
                at_base = (
                    torch.zeros_like(features[r, p, i])
                    if base_features is None
                    else base_f[0, p, i]
                )
                read_f[r, p, i] = torch.where(keep[r], features[r, p, i], at_base)
                r, p = row[~on], position[~on]
                at_base = torch.zeros_like(error[r, p]) if base_errors is None else base_e[0, p]
                read_e[r, p] = torch.where(keep[r].unsqueeze(1), error[r, p], at_base)
            return read_f, read_e

        metric = self.inputs.metric
        tokens = self.inputs.tokens.expand(len(rows), -1)
        with spliced(self.model, self.saes, edit, keep_leaves=False):
            residual = final_residual(self.model, tokens)
            return metric(logits_at(self.model, residual, metric.positions)).float().cpu()


_NONE = np.zeros(0, dtype=np.int64)
