"""`Trace`: the typed result of one attribution run, the seam everything downstream reads.

The engine produces node tensors; `trace()` wraps them with what a reader needs to interpret them
(the prompt's tokens, the metric and its value, which SAEs, which method and baseline, the model's
own predictions) in one frozen record. The app, the CLI, the exports and later the graph and dataset
runs read these fields, never the DataFrame's `attrs`, and build Neuronpedia addresses from the
SAE records, never by parsing URLs.

Files: `Trace.save(path)` writes ONE Parquet file whose rows are the node table and whose
key-value metadata (key `token_trace`) holds every other field as JSON; `Trace.load(path)` reads
it back. `Trace.to_json()` / `Trace.from_json()` hold the nodes inside the JSON as columns. Both
round-trip exactly (float32 values included).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from token_trace.files import write_parquet
from token_trace.neuronpedia import feature_url
from token_trace.nodes import (
    COLUMNS,
    LABEL_COLUMN,
    VALUE_COLUMNS,
    layer_totals,
    node_table,
    position_totals,
    top_nodes,
)
from token_trace.options import Backend, Baseline, IGRule, Method

if TYPE_CHECKING:
    from token_trace.explanations import Neuronpedia

#: Bumped when the saved layout changes incompatibly; `load` refuses files it cannot read.
FORMAT_VERSION = 1
_PARQUET_KEY = b"token_trace"


@dataclass(frozen=True)
class SAERecord:
    """One SAE of the run, as the node table's `hook_name` / `sae_id` columns refer to it."""

    hook_name: str
    """The TransformerLens hook the SAE reads (and the `hook_name` column's value)."""
    sae_id: str
    """The SAE's id inside its release (the `sae_id` column's value)."""
    release: str | None
    """The SAELens (or bundled) release it was loaded from; None for a caller's own SAE."""
    layer: int
    """Residual depth (`token_trace.hook_names.residual_depth`), the node table's `layer`."""
    neuronpedia_id: str | None
    """Neuronpedia's id from SAELens metadata (`gpt2-small/6-res-jb`); None when it has none."""

    def feature_url(self, feature: int) -> str | None:
        """The feature's Neuronpedia page, or None for SAEs Neuronpedia does not host."""
        return None if self.neuronpedia_id is None else feature_url(self.neuronpedia_id, feature)


@dataclass(frozen=True)
class PromptRecord:
    """What the model read, position by position."""

    text: str | None
    """The prompt as given; None when token ids were passed."""
    tokens: tuple[str, ...]
    """The model's input tokens as text (BOS first for text prompts); `position` indexes these."""
    token_ids: tuple[int, ...]
    """The same tokens as ids."""
    bos_position: int | None
    """Position of the BOS token (an attention sink), or None when the input has none."""
    target: str | None
    """What the metric scores, as text (the last token, or the answer); None for loss/custom."""
    unknown_words: tuple[str, ...] = ()
    """Words of the prompt the tokenizer turned into its unknown token (the run still happened)."""


@dataclass(frozen=True)
class MetricRecord:
    """The scalar the nodes are attributed to."""

    name: str
    """`logprob`, `logit_diff`, `loss` or `custom`."""
    description: str
    """A readable formula, e.g. `logit(' Mary') - logit(' John')`."""
    value: float
    """Its value on the clean prompt."""
    baseline_value: float | None
    """Its value on the counterfactual prompt; None with the zero baseline."""
    positions: tuple[int, ...] | None
    """The positions whose logits it reads (None: all)."""
    token_ids: tuple[int, ...]
    """The vocabulary ids it reads: `logprob` targets, or answer and contrast of `logit_diff`."""
    target_probability: float | None = None
    """The model's probability of the target (`token_trace.metrics.target_probability`); None for
    loss and custom metrics, and in traces saved before it was recorded."""


@dataclass(frozen=True)
class Prediction:
    """One of the model's top next-token predictions after the prompt's last position."""

    token: str
    probability: float


@dataclass(frozen=True, eq=False)
class Trace:
    """One prompt's attribution: the node table and everything needed to read it.

    Compared with `==` field by field, the node tables exactly (values and dtypes).
    """

    nodes: pd.DataFrame
    """One row per node, columns `token_trace.nodes.COLUMNS` (see the README's table), plus
    `label` after `with_labels`."""
    prompt: PromptRecord
    metric: MetricRecord
    saes: tuple[SAERecord, ...]
    """In the run's order (the order the SAEs were given; by depth for releases)."""
    model: str
    """The model's name."""
    method: Method
    """`atp` (attribution patching) or `ig` (integrated gradients)."""
    ig_steps: int | None
    """Integrated-gradient steps; None for AtP."""
    baseline: Baseline
    """`zero` (nodes ablated to 0) or `counterfactual` (patched to their counterfactual value)."""
    counterfactual: str | None
    """The counterfactual prompt, when given as text."""
    baseline_token_ids: tuple[int, ...] | None
    """The model's input for the counterfactual, position by position aligned with the prompt's."""
    top_predictions: tuple[Prediction, ...]
    """The model's most likely next tokens after the last position, most likely first."""
    warnings: tuple[str, ...] = field(default=())
    """Things a reader should know before trusting the result (e.g. unknown words)."""
    ig_rule: IGRule | None = None
    """Integrated gradients' quadrature rule (`riemann` or `gauss-legendre`); None for AtP."""
    backend: Backend = "hooked"
    """The TransformerLens class that ran the model (`hooked`: HookedTransformer, `bridge`:
    TransformerBridge); reruns from the trace (ablations, interventions, graphs) load the same."""

    # ------------------------------------------------------------------ reading

    @property
    def baseline_text(self) -> str | None:
        """The counterfactual prompt under its older name."""
        return self.counterfactual

    @property
    def hook_names(self) -> list[str]:
        return [sae.hook_name for sae in self.saes]

    def sae(self, hook_name: str) -> SAERecord:
        """The record of the SAE at `hook_name`."""
        for record in self.saes:
            if record.hook_name == hook_name:
                return record
        raise KeyError(f"No SAE at {hook_name!r} in this trace.")

    def top_nodes(
        self, k: int = 20, *, exclude_bos: bool = False, node_type: str | None = None
    ) -> pd.DataFrame:
        """`token_trace.top_nodes` of this trace."""
        return top_nodes(self, k, exclude_bos=exclude_bos, node_type=node_type)

    def layer_totals(self, *, exclude_bos: bool = False) -> pd.DataFrame:
        """`token_trace.layer_totals` of this trace."""
        return layer_totals(self, exclude_bos=exclude_bos)

    def position_totals(self) -> pd.DataFrame:
        """`token_trace.position_totals` of this trace."""
        return position_totals(self)

    def _repr_html_(self) -> str:
        """In a notebook: the coloured tokens and the top nodes (`token_trace.notebook`)."""
        from token_trace.notebook import trace_html

        return trace_html(self)

    def with_labels(self, *, online: bool = False, neuronpedia: Neuronpedia | None = None) -> Trace:
        """This trace with a `label` column: each feature's readable label ("" where none), from
        the bundled feature cards and Neuronpedia's cached explanations; with `online`, the
        uncached explanations of the largest nodes are fetched (`token_trace.labels_for`)."""
        from token_trace.labels import labels_for

        labels = labels_for(self.nodes, self.saes, online=online, neuronpedia=neuronpedia)
        return replace(self, nodes=self.nodes.assign(**{LABEL_COLUMN: labels}))

    # ------------------------------------------------------------------ pandas

    def to_frame(self) -> pd.DataFrame:
        """The node table with the run's metadata in `df.attrs` (what `compute_node_attribution`
        returns). Pandas copies on write, so changing the frame never changes the trace."""
        frame = self.nodes.copy(deep=False)
        frame.attrs = self.attrs()
        return frame

    def attrs(self) -> dict[str, Any]:
        """The run's metadata under the flat keys `df.attrs` has always used."""
        return {
            "model": self.model,
            "saes": [sae.sae_id for sae in self.saes],
            "method": self.method,
            "ig_steps": self.ig_steps,
            "ig_rule": self.ig_rule,
            "baseline": self.baseline,
            "hook_names": self.hook_names,
            "tokens": list(self.prompt.tokens),
            "token_ids": list(self.prompt.token_ids),
            "bos_position": self.prompt.bos_position,
            "metric": self.metric.name,
            "metric_description": self.metric.description,
            "metric_value": self.metric.value,
            "target": self.prompt.target,
            "baseline_metric_value": self.metric.baseline_value,
            "top_predictions": [asdict(p) for p in self.top_predictions],
            "warnings": list(self.warnings),
        }

    # ------------------------------------------------------------------ files

    def metadata(self) -> dict[str, Any]:
        """Every field but the nodes, JSON-ready."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "nodes"}
        out = json.loads(json.dumps(out, default=_as_plain))
        return {"format_version": FORMAT_VERSION, **out}

    def to_json(self) -> str:
        """The whole trace as JSON; the nodes as `{column: [values]}` in `COLUMNS` order (and
        `label` when the table has it)."""
        names = [*COLUMNS, *([LABEL_COLUMN] if LABEL_COLUMN in self.nodes else [])]
        nodes = {name: self.nodes[name].astype(object).tolist() for name in names}
        nodes = {name: [_none_if_missing(v) for v in values] for name, values in nodes.items()}
        return json.dumps({**self.metadata(), "nodes": nodes}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Trace:
        data = json.loads(text)
        return _from_parts(data, data.pop("nodes"))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one Parquet file (nodes as rows, the rest as JSON metadata), atomically."""
        import pyarrow as pa

        table = pa.Table.from_pandas(self.nodes, preserve_index=False)
        metadata = {**(table.schema.metadata or {}), _PARQUET_KEY: json.dumps(self.metadata())}
        return write_parquet(table.replace_schema_metadata(metadata), path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        """Read a file written by `save`."""
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(_PARQUET_KEY)
        if raw is None:
            raise ValueError(f"{path} is a Parquet file but not a saved token-trace Trace.")
        columns = {
            name: table.column(name).to_numpy() for name in ("position", "feature", *VALUE_COLUMNS)
        }
        for name in ("hook_name", LABEL_COLUMN):
            if name in table.column_names:
                columns[name] = table.column(name).to_pylist()
        return _from_parts(json.loads(raw), columns)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        return self.metadata() == other.metadata() and _frames_equal(self.nodes, other.nodes)

    __hash__ = None  # type: ignore[assignment]  (holds a DataFrame)


def _as_plain(value: object) -> object:
    """JSON fallback for the records (dataclasses) inside a trace."""
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _none_if_missing(value: object) -> object:
    return None if value is None or (isinstance(value, float) and value != value) else value


def _frames_equal(left: pd.DataFrame, right: pd.DataFrame) -> bool:
    try:
        pd.testing.assert_frame_equal(left, right, check_exact=True)
    except AssertionError:
        return False
    return True


def _from_parts(meta: Mapping[str, Any], columns: Mapping[str, Sequence[Any]]) -> Trace:
    """A trace from its metadata dict and its node columns (as plain lists)."""
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"This trace was written in format {version!r}; this token-trace reads format "
            f"{FORMAT_VERSION}."
        )
    saes = tuple(SAERecord(**record) for record in meta["saes"])
    prompt = dict(meta["prompt"])
    for name in ("tokens", "token_ids", "unknown_words"):
        prompt[name] = tuple(prompt[name])
    metric = dict(meta["metric"])
    metric["token_ids"] = tuple(metric["token_ids"])
    if metric["positions"] is not None:
        metric["positions"] = tuple(metric["positions"])
    baseline_ids = meta["baseline_token_ids"]
    hook_index = pd.Index([sae.hook_name for sae in saes]).get_indexer(columns["hook_name"])
    if (hook_index < 0).any():
        raise ValueError("The trace's nodes name an SAE hook that its SAE records do not.")
    nodes = node_table(
        hook_index,
        columns["position"],
        columns["feature"],
        {name: columns[name] for name in VALUE_COLUMNS},
        saes,
        prompt["tokens"],
    )
    if LABEL_COLUMN in columns:
        nodes[LABEL_COLUMN] = pd.Series(columns[LABEL_COLUMN], index=nodes.index, dtype="str")
    return Trace(
        nodes=nodes,
        prompt=PromptRecord(**prompt),
        metric=MetricRecord(**metric),
        saes=saes,
        model=meta["model"],
        method=meta["method"],
        ig_steps=meta["ig_steps"],
        baseline=meta["baseline"],
        # Files written before the counterfactual had one name call it `baseline_text`.
        counterfactual=meta["counterfactual"]
        if "counterfactual" in meta
        else meta["baseline_text"],
        baseline_token_ids=None if baseline_ids is None else tuple(baseline_ids),
        top_predictions=tuple(Prediction(**p) for p in meta["top_predictions"]),
        warnings=tuple(meta["warnings"]),
        # Files written before the rule was recorded: their IG traces used the Riemann sum.
        ig_rule=meta.get("ig_rule", "riemann" if meta["method"] == "ig" else None),
        backend=meta.get("backend", "hooked"),  # files from before the bridge: HookedTransformer
    )
