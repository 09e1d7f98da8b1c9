"""One worker of a dataset run: attribute the prompts of a shard and write the shard's files.

The same class serves both engines: the local engine makes one and feeds it every shard; the Ray
engine makes one per Ray actor (so the model and SAEs load once per worker) and Ray feeds it
shards. A worker never stops on a bad record: a prompt the library refuses (empty, too long, an
answer of several tokens) or one that does not fit in memory becomes an error row, and the rest of
its batch runs without it.
"""

from __future__ import annotations

import json
import os
import resource
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from token_trace.attribution import AttributionRun
from token_trace.circuit import Faithfulness, MeanActivations, mean_activations
from token_trace.datasets.layout import RunDir, write_table
from token_trace.datasets.settings import DatasetSettings
from token_trace.files import write_atomically
from token_trace.graph import EDGE_COLUMNS, Graph, graph_from_run
from token_trace.nodes import COLUMNS
from token_trace.options import PromptSpec
from token_trace.pipeline import PromptError, UnknownWordsWarning, resolve, run_traces
from token_trace.prompts import tokenizer_length
from token_trace.records import Trace

_CATEGORY = pa.dictionary(pa.int32(), pa.string())
_NODE_FIELDS = [
    ("layer", pa.int64()),
    ("hook_name", _CATEGORY),
    ("sae_id", _CATEGORY),
    ("position", pa.int64()),
    ("token", pa.string()),
    ("node_type", _CATEGORY),
    ("feature", pa.int64()),
    ("activation", pa.float32()),
    ("baseline_activation", pa.float32()),
    ("gradient", pa.float32()),
    ("attribution", pa.float32()),
    ("neuronpedia_url", pa.string()),
]
assert [name for name, _ in _NODE_FIELDS] == COLUMNS, "the node schema follows nodes.COLUMNS"

#: Every shard's files have these schemas, so the shards of a folder read as one table.
NODE_SCHEMA = pa.schema([("prompt_id", pa.string()), *_NODE_FIELDS])
PROMPT_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("row", pa.int64()),
        ("shard", pa.int64()),
        ("status", pa.string()),  # "ok" or "error"
        ("error", pa.string()),
        ("text", pa.string()),
        ("answer", pa.string()),
        ("contrast", pa.string()),
        ("counterfactual", pa.string()),
        ("n_tokens", pa.int64()),
        ("tokens", pa.list_(pa.string())),
        ("bos_position", pa.int64()),
        ("target", pa.string()),
        ("metric", pa.string()),
        ("metric_value", pa.float64()),
        ("baseline_metric_value", pa.float64()),
        ("n_nodes", pa.int64()),
        ("total_attribution", pa.float64()),
        ("error_attribution", pa.float64()),  # the part the SAEs leave unexplained
        ("top_prediction", pa.string()),
        ("top_probability", pa.float64()),
        ("warnings", pa.list_(pa.string())),
        ("graph_nodes", pa.int64()),
        ("graph_edges", pa.int64()),
        ("graph_error_share", pa.float64()),
        ("graph_faithfulness", pa.float64()),  # m(graph) vs m(empty) and m(all): 1 explains all
        ("graph_complement_faithfulness", pa.float64()),  # the rest alone: near 0 when complete
    ]
)
GRAPH_NODE_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("node_id", pa.string()),
        ("node_type", pa.string()),
        ("layer", pa.int64()),
        ("feature", pa.int64()),
        ("position", pa.int64()),
        ("token", pa.string()),
        ("attribution", pa.float64()),
        ("influence", pa.float64()),
    ]
)
GRAPH_EDGE_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("source", pa.string()),
        ("target", pa.string()),
        ("weight", pa.float64()),
        ("source_layer", pa.int64()),
        ("target_layer", pa.int64()),
        ("source_position", pa.int64()),
        ("target_position", pa.int64()),
        ("source_type", pa.string()),
        ("target_type", pa.string()),
    ]
)
assert GRAPH_EDGE_SCHEMA.names[1:] == EDGE_COLUMNS, "the edge schema follows graph.EDGE_COLUMNS"


@dataclass(frozen=True)
class Shard:
    """Consecutive records of the prompt table; shard `index` holds rows index*size onwards.

    `records` are rows of `inputs.read_prompts`'s table as plain JSON values, so a shard travels
    to a Ray worker as one JSON string.
    """

    index: int
    records: list[dict]

    @classmethod
    def of(cls, index: int, prompts: pd.DataFrame) -> Shard:
        return cls(index, json.loads(prompts.to_json(orient="records", force_ascii=False)))

    def to_row(self) -> dict[str, object]:
        return {"shard": self.index, "records": json.dumps(self.records, ensure_ascii=False)}


@dataclass(frozen=True)
class _Outcome:
    """What became of one record: a trace (and graph), or the reason it has none."""

    record: dict
    trace: Trace | None = None
    graph: Graph | None = None
    faithfulness: Faithfulness | None = None
    error: str | None = None


class ShardWorker:
    """Holds the model and SAEs of a run and turns shards into finished shard files."""

    def __init__(self, settings: DatasetSettings, out_dir: str | Path) -> None:
        self.settings = settings
        self.out = RunDir(out_dir)
        build = settings.build()
        if build is None:
            # Loaded once, here, and reused by every batch of the run.
            self.loaded = resolve(settings.model, settings.saes, settings.trace)
        else:
            model, saes = build(settings.device)
            self.loaded = resolve(model, saes, settings.trace)
        self.model = self.loaded.model
        self._means: MeanActivations | None = None

    @property
    def means(self) -> MeanActivations | None:
        """The dataset means faithfulness holds outside nodes at (None: the prompt's baseline),
        read once from the run folder, where `write_means` put them before any shard ran."""
        if self.settings.faithfulness_baseline != "mean":
            return None
        if self._means is None:
            self._means = MeanActivations(**torch.load(self.out.means, map_location="cpu"))
        return self._means

    def write_means(self, records: Sequence[dict]) -> None:
        """The SAEs' mean features and errors over the records' prompts (those the run can
        attribute: not empty, not too long), for mean-ablation faithfulness."""
        texts = [r["text"] for r in records if self._averaged(r)]
        means = mean_activations(self.model, self.loaded.saes, texts)
        write_atomically(self.out.means, lambda path: torch.save(vars(means), path))

    def run(self, shard: Shard) -> dict[str, object]:
        """Attribute the shard, write its files (prompts last), and say how it went."""
        start = time.perf_counter()
        outcomes = self._attribute(shard.records)
        self._write(shard.index, outcomes)
        return {
            "shard": shard.index,
            "n_prompts": len(outcomes),
            "n_ok": sum(o.error is None for o in outcomes),
            "seconds": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": (
                torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
            ),
            "device": str(self.model.cfg.device),
            "pid": os.getpid(),
        }

    def __call__(self, shards: pd.DataFrame) -> pd.DataFrame:
        """Ray Data's entry point: a batch of `Shard.to_row()` rows in, one summary row per shard
        out (the shard files themselves are written here)."""
        return pd.DataFrame(
            [
                self.run(Shard(int(index), json.loads(records)))
                for index, records in zip(shards["shard"], shards["records"])
            ]
        )

    # ------------------------------------------------------------------ attribution

    def _attribute(self, records: list[dict]) -> list[_Outcome]:
        outcomes: dict[int, _Outcome] = {}
        runnable = []
        for slot, record in enumerate(records):
            problem = record.get("problem") or self._too_long(record)
            if problem:
                outcomes[slot] = _Outcome(record, error=problem)
            else:
                runnable.append(slot)
        if self.settings.graph is not None:
            batches = [[slot] for slot in runnable]  # graphs are built one prompt at a time
        else:
            batches = self._batches(records, runnable)
        for batch in batches:
            outcomes.update(self._run_batch(records, batch))
        return [outcomes[slot] for slot in range(len(records))]

    def _averaged(self, record: dict) -> bool:
        """Whether a record's prompt counts in the dataset means: one the run can attribute."""
        if record.get("problem") or not record.get("text") or self._too_long(record):
            return False
        n_tokens = tokenizer_length(self.model, record["text"])
        return n_tokens is None or n_tokens <= self.model.cfg.n_ctx

    def _too_long(self, record: dict) -> str | None:
        limit = self.settings.max_tokens
        if limit is None:
            return None
        n_tokens = tokenizer_length(self.model, record["text"])
        if n_tokens is not None and n_tokens > limit:
            return f"The prompt is {n_tokens} tokens; this run attributes at most {limit}."
        return None

    def _batches(self, records: list[dict], slots: list[int]) -> list[list[int]]:
        """Batches of similar lengths (less padding), with and without counterfactuals apart
        (a batch has a counterfactual for every prompt or for none)."""
        size = self.settings.batch_size
        lengths = {slot: len(records[slot]["text"]) for slot in slots}
        batches = []
        for with_baseline in (False, True):
            group = [s for s in slots if _has_baseline(records[s]) == with_baseline]
            group.sort(key=lengths.__getitem__)
            batches += [group[i : i + size] for i in range(0, len(group), size)]
        return batches

    def _run_batch(self, records: list[dict], slots: list[int]) -> dict[int, _Outcome]:
        """Run one batch; set aside the prompts the library refuses and halve a batch that runs
        out of memory, until every prompt has a trace or an error."""
        done: dict[int, _Outcome] = {}
        pending = list(slots)
        while pending:
            chosen = [records[slot] for slot in pending]
            try:
                traces, run = self._trace(chosen)
            except PromptError as refused:
                slot = pending.pop(refused.index)
                done[slot] = _Outcome(records[slot], error=refused.reason)
                continue
            except (torch.cuda.OutOfMemoryError, MemoryError):
                _free_memory()
                if len(pending) == 1:
                    done[pending[0]] = _Outcome(
                        records[pending[0]],
                        error="Out of memory on this prompt alone; lower max_tokens or use a "
                        "device with more memory.",
                    )
                    return done
                half = len(pending) // 2
                done.update(self._run_batch(records, pending[:half]))
                done.update(self._run_batch(records, pending[half:]))
                return done
            for slot, result, record in zip(pending, traces, chosen):
                chosen_graph = self.settings.graph
                graph = None if chosen_graph is None else graph_from_run(result, run, chosen_graph)
                check = None
                if graph is not None and self.settings.faithfulness:
                    check = graph.faithfulness(model=run.model, saes=run.saes, means=self.means)
                done[slot] = _Outcome(record, trace=result, graph=graph, faithfulness=check)
            return done
        return done

    def _trace(self, records: Sequence[dict]) -> tuple[list[Trace], AttributionRun]:
        prompts = [
            PromptSpec(r["text"], r.get("answer"), r.get("contrast"), r.get("counterfactual"))
            for r in records  # counterfactuals all or none: see `_batches`
        ]
        with warnings.catch_warnings():
            # Unknown words go into each trace's `warnings` and the prompt row; no console noise.
            warnings.simplefilter("ignore", UnknownWordsWarning)
            return run_traces(prompts, self.loaded, self.settings.trace)

    # ------------------------------------------------------------------ files

    def _write(self, index: int, outcomes: list[_Outcome]) -> None:
        ok = [o for o in outcomes if o.trace is not None]
        node_frames = [o.trace.nodes.assign(prompt_id=o.record["prompt_id"]) for o in ok]
        write_table(_frame(node_frames, NODE_SCHEMA), self.out.shard("nodes", index), NODE_SCHEMA)
        if self.settings.graph is not None:
            graphs = [o for o in ok if o.graph is not None]
            nodes = [o.graph.nodes.assign(prompt_id=o.record["prompt_id"]) for o in graphs]
            edges = [o.graph.edges.assign(prompt_id=o.record["prompt_id"]) for o in graphs]
            write_table(
                _frame(nodes, GRAPH_NODE_SCHEMA),
                self.out.shard("graph_nodes", index),
                GRAPH_NODE_SCHEMA,
            )
            write_table(
                _frame(edges, GRAPH_EDGE_SCHEMA),
                self.out.shard("graph_edges", index),
                GRAPH_EDGE_SCHEMA,
            )
        rows = pd.DataFrame([_prompt_row(index, o) for o in outcomes], columns=PROMPT_SCHEMA.names)
        write_table(rows, self.out.shard("prompts", index), PROMPT_SCHEMA)  # last: marks it done


def _frame(frames: list[pd.DataFrame], schema: pa.Schema) -> pd.DataFrame:
    """The frames stacked in the schema's column order (an empty frame when there are none)."""
    if not frames:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in schema.names})
    stacked = pd.concat(frames, ignore_index=True)
    for name in schema.names:
        if pa.types.is_string(schema.field(name).type) and isinstance(
            stacked[name].dtype, pd.CategoricalDtype
        ):
            stacked[name] = stacked[name].astype(object)
    return stacked[schema.names]


def _prompt_row(shard: int, outcome: _Outcome) -> dict[str, object]:
    record = outcome.record
    row: dict[str, object] = dict.fromkeys(PROMPT_SCHEMA.names)
    row |= {
        "prompt_id": record["prompt_id"],
        "row": int(record["row"]),
        "shard": shard,
        "status": "ok" if outcome.error is None else "error",
        "error": outcome.error,
        **{name: record.get(name) for name in ("text", "answer", "contrast", "counterfactual")},
    }
    result = outcome.trace
    if result is None:
        return row
    attribution = result.nodes["attribution"].to_numpy(dtype=np.float64)
    is_error = (result.nodes["node_type"] == "error").to_numpy()
    top = result.top_predictions[0] if result.top_predictions else None
    row.update(
        n_tokens=len(result.prompt.tokens),
        tokens=list(result.prompt.tokens),
        bos_position=result.prompt.bos_position,
        target=result.prompt.target,
        metric=result.metric.description,
        metric_value=result.metric.value,
        baseline_metric_value=result.metric.baseline_value,
        n_nodes=len(result.nodes),
        total_attribution=float(attribution.sum()),
        error_attribution=float(attribution[is_error].sum()),
        top_prediction=None if top is None else top.token,
        top_probability=None if top is None else top.probability,
        warnings=list(result.warnings),
    )
    if outcome.graph is not None:
        row.update(
            graph_nodes=len(outcome.graph.nodes),
            graph_edges=len(outcome.graph.edges),
            graph_error_share=outcome.graph.error_share,
        )
    if outcome.faithfulness is not None:
        row.update(
            graph_faithfulness=outcome.faithfulness.faithfulness,
            graph_complement_faithfulness=outcome.faithfulness.complement_faithfulness,
        )
    return row


def _has_baseline(record: dict) -> bool:
    return record.get("counterfactual") is not None


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
