"""What a dataset run computes: one record, checked once, saved with the run so a restart can tell
whether the files already in the output folder were made by the same settings.

The attribution and graph options are the library's own records (`token_trace.options`); this
record adds only what a run over many prompts needs beside them.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from token_trace.options import (
    DEFAULT_MODEL,
    GraphOptions,
    TraceOptions,
    one_of,
    option,
    split_options,
    whole_number,
)

ENGINES = ("local", "ray")
#: What a graph's faithfulness holds the nodes outside it at: each prompt's own baseline (zero,
#: or its counterfactual), or their mean over the dataset's prompts (`circuit.mean_activations`).
FaithfulnessBaseline = Literal["prompt", "mean"]
FAITHFULNESS_BASELINES: tuple[str, ...] = get_args(FaithfulnessBaseline)


@dataclass(frozen=True)
class DatasetSettings:
    """The settings of a dataset run (every prompt gets the same model, SAEs and method).

    Each record chooses its own metric by its fields, as `trace` does: the log-probability of the
    text's last token, of `answer`, or logit(answer) - logit(contrast); `metric="loss"` scores every
    prompt's mean loss instead. `graph` (None: no graphs) also computes each prompt's pruned graph
    (attribution patching only) and aggregates them.
    """

    model: str = option(DEFAULT_MODEL, "TransformerLens model name")
    #: A SAELens release (or the bundled one); None: the model's default release.
    saes: str | None = option(
        None, "SAELens release (default: the model's)", aliases=("--release",)
    )
    trace: TraceOptions = field(default_factory=TraceOptions)
    graph: GraphOptions | None = None
    #: Prompts per forward/backward pass; `shard_size` prompts go to one output file.
    batch_size: int = option(8, "prompts per forward/backward pass")
    shard_size: int = option(64, "prompts per output file")
    #: Records with more tokens are recorded as errors (None: the model's context length).
    max_tokens: int | None = option(None, "records with more tokens are errors")
    #: Leave BOS-position nodes out of the aggregates (they are recomputed at every finish).
    exclude_bos: bool = option(False, "aggregate without BOS nodes", const=True)
    #: With graphs: how much of each prompt's metric its pruned graph recovers
    #: (`Graph.faithfulness`), per prompt and averaged in the report, every other node at the
    #: prompt's own baseline (zero or its counterfactual) or at its mean over the dataset
    #: (Sparse Feature Circuits' mean ablation, one forward pass per prompt more beforehand).
    faithfulness: bool = option(
        False,
        "with --graph: measure each graph's faithfulness (4 more forward passes a prompt)",
        const=True,
    )
    faithfulness_baseline: FaithfulnessBaseline = option(
        "prompt",
        "with --faithfulness: nodes outside the graph at the prompt's baseline, or at their "
        "mean over the dataset",
    )
    #: "package.module:function" building the model and SAEs instead of loading them by name:
    #: `function(device)` returns `(HookedTransformer, {hook_name: SAE})`. For models the
    #: registries do not know (a local checkpoint, a fine-tune); every worker imports and calls
    #: it, so it must be importable there and build the same weights each time.
    loader: str | None = option(
        None,
        "package.module:function(device) -> (model, {hook: SAE}), for models not in the "
        "registries (importable by every worker)",
    )

    def __post_init__(self) -> None:
        if self.trace.metric not in (None, "loss"):
            raise ValueError(f"metric must be None or 'loss', got {self.trace.metric!r}.")
        for name in ("batch_size", "shard_size"):
            object.__setattr__(self, name, whole_number(getattr(self, name), name, 1))
        if self.max_tokens is not None:
            object.__setattr__(self, "max_tokens", whole_number(self.max_tokens, "max_tokens", 2))
        if self.graph is not None:
            self.trace.check_graphable()
        if self.faithfulness and self.graph is None:
            raise ValueError("faithfulness is measured on each prompt's graph: pass graph=True.")
        one_of(self.faithfulness_baseline, "faithfulness baseline", FAITHFULNESS_BASELINES)
        if self.faithfulness_baseline == "mean" and not self.faithfulness:
            raise ValueError("faithfulness_baseline='mean' applies with faithfulness=True.")
        if self.loader is not None and not re.fullmatch(r"[\w.]+:\w+", self.loader):
            raise ValueError(f"loader must be 'package.module:function', got {self.loader!r}.")

    @classmethod
    def of(cls, graph: bool = False, **settings: Any) -> DatasetSettings:
        """The settings from flat keywords (`run_dataset`'s): this record's fields, the
        `TraceOptions` fields (method, ig_steps, metric, sae_dtype, device) and, with
        `graph=True`, the `GraphOptions` fields (max_nodes, node_threshold, edge_threshold)."""
        (trace, graph_options), own = split_options(settings, TraceOptions, GraphOptions)
        flat = {f.name for f in fields(cls)} - {"trace", "graph"}
        unknown = set(own) - flat
        if unknown:
            raise ValueError(f"Unknown dataset settings: {', '.join(sorted(unknown))}.")
        if graph_options and not graph:
            raise ValueError(f"{', '.join(graph_options)} apply to graphs: pass graph=True.")
        return cls(
            trace=TraceOptions(**trace),
            graph=GraphOptions(**graph_options) if graph else None,
            **own,
        )

    @property
    def device(self) -> str | None:
        return self.trace.device

    def identity(self) -> dict[str, object]:
        """The fields that decide the shard files; a resumed run must match them. Batch size and
        device change only float rounding, and the aggregates are rebuilt at every finish, so a
        run may resume with other values of those."""
        chosen = asdict(self)
        for free in ("batch_size", "exclude_bos"):
            chosen.pop(free)
        chosen["trace"].pop("device")
        return chosen

    def build(self) -> Callable[[str | None], tuple[Any, dict[str, Any]]] | None:
        """The `loader` function, imported (None when models load by name)."""
        if self.loader is None:
            return None
        module, name = self.loader.split(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"Cannot import the loader {self.loader!r}: {error}") from error
