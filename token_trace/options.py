"""The options of a request, each default and each check written once.

Three frozen records travel from the front ends (library keywords, the app's form and API, both
commands) down to the engine:

- `PromptSpec`: what to score on one prompt (its text, answer, contrast and counterfactual);
- `TraceOptions`: how to attribute it (metric, method, integrated-gradient steps, SAE dtype,
  device, model dtype, backend), shared by every prompt of a call;
- `GraphOptions`: which graph to keep (max nodes, node and edge thresholds).

Each record checks its own values when it is made, so a bad option is refused with one message
wherever it comes from, before anything is loaded. Field metadata (`help`, `flag`) is what the
command-line parsers are built from (`add_arguments`), so a new option is one declaration here plus
its widgets. This module imports nothing heavy: `token-trace --help` reads it.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Literal, Union, get_args

#: The model used when a caller names none, and the one that ships inside the package.
DEFAULT_MODEL = "gpt2-small"
BUNDLED_MODEL = "ioi-demo"

Method = Literal["atp", "ig"]
#: Each attribution method and its name in words.
METHODS: Mapping[str, str] = {
    "atp": "Attribution patching (AtP)",
    "ig": "Integrated gradients (IG)",
}
Baseline = Literal["zero", "counterfactual"]
NodeType = Literal["embedding", "feature", "error", "metric"]
#: The kinds of node a graph holds, in layer order (a trace's table holds features and errors).
NODE_TYPES: tuple[str, ...] = get_args(NodeType)
#: Quadrature rules for integrated gradients' average over the path (`attribution.quadrature`).
IGRule = Literal["riemann", "gauss-legendre"]
IG_RULES: tuple[str, ...] = get_args(IGRule)
SAEDtype = Literal["float32", "bfloat16", "float16"]
SAE_DTYPES: tuple[str, ...] = get_args(SAEDtype)
#: The model's precision; "auto" is bfloat16 on a GPU that has it and float32 elsewhere
#: (`token_trace.loading.model_dtype`). The engine accumulates nodes and edges in float32 either
#: way; the README's "bf16 models" measures what bfloat16 changes.
ModelDtype = Literal["auto", "float32", "bfloat16"]
MODEL_DTYPES: tuple[str, ...] = get_args(ModelDtype)
#: Which TransformerLens class runs a model loaded by name (`token_trace.backend`):
#: `HookedTransformer` (TransformerLens's own implementation, deprecated in TransformerLens 3 and
#: gone in 4) or `TransformerBridge` (the Hugging Face model, hooked, with HookedTransformer's
#: weight processing applied by `enable_compatibility_mode`).
Backend = Literal["hooked", "bridge"]
BACKENDS: tuple[str, ...] = get_args(Backend)
#: HookedTransformer while SAELens pins transformer-lens < 4; the variable below overrides it.
DEFAULT_BACKEND = "hooked"
#: The environment variable that picks the backend when a call names none (the app reads it too).
BACKEND_ENV = "TOKEN_TRACE_BACKEND"
#: Named metrics; a callable from logits `[batch, pos, d_vocab]` to one value per row also works.
MetricName = Literal["logprob", "logit_diff", "loss"]
METRIC_NAMES: tuple[str, ...] = get_args(MetricName)
MetricArgument = Union[str, Callable[..., Any], None]  # noqa: UP007 (a runtime alias on 3.10)
Answer = Union[str, int, Sequence[int]]  # noqa: UP007

#: `answer=TOP_PREDICTION` scores the model's own most likely next token after the text (found by
#: one forward pass): "what the model predicts", as the app scores an empty answer.
TOP_PREDICTION = "<top prediction>"

#: Integrated gradients unless told: 8 Gauss-Legendre points (8 passes per layer). On the bundled
#: model's IOI prompts their layer totals are 10x closer to the real whole-layer patch than the
#: 10-step Riemann sum's (9 passes) with a counterfactual, and closer with the zero baseline too
#: (benchmarks/bench_ig_rules.py; README).
DEFAULT_IG_STEPS = 8
DEFAULT_IG_RULE = "gauss-legendre"
#: Graph defaults chosen by measured faithfulness (benchmarks/bench_faithfulness.py, README): on
#: the bundled model's held-out IOI prompts the graph these give keeps about 190 SAE nodes that
#: recover 79% of the logit difference (mean; median 85%), where 200 / 0.8 without baseline
#: sources kept 38 that recovered none of it.
DEFAULT_MAX_NODES = 500
DEFAULT_NODE_THRESHOLD = 0.9
DEFAULT_EDGE_THRESHOLD = 0.98
#: Whether pruning keeps features that only the counterfactual switches on (`Graph.prune`).
DEFAULT_BASELINE_SOURCES = True


def option(default: Any, help: str, *, flag: str | None = None, **cli: Any) -> Any:
    """A record field with its command-line help (and flag, when not `--field-name`)."""
    return field(default=default, metadata={"help": help, "flag": flag, **cli})


# --------------------------------------------------------------------------- checks


def whole_number(value: Any, name: str, low: int, high: int | None = None) -> int:
    """`value` as an int in [low, high], or a ValueError naming `name`. Strings of digits and
    integral floats (a form's numbers) pass; NaN, 2.5, "abc" and booleans do not."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text) if text else math.nan
        except ValueError:
            value = math.nan
    span = f"at least {low}" if high is None else f"between {low} and {high}"
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value != int(value)
        or not low <= value <= (math.inf if high is None else high)
    ):
        raise ValueError(f"{name} must be a whole number {span}, got {value!r}.")
    return int(value)


def share(value: Any, name: str, *, optional: bool = False) -> float | None:
    """`value` as a number in [0, 1] (None passes when `optional`), or a ValueError."""
    if value is None and optional:
        return None
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
    if (
        isinstance(number, bool)
        or not isinstance(number, numbers.Real)
        or not 0.0 <= float(number) <= 1.0
    ):
        none = " (or None)" if optional else ""
        raise ValueError(f"{name} must lie between 0 and 1{none}, got {value!r}.")
    return float(number)


def one_of(value: Any, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}: use one of {', '.join(map(repr, allowed))}.")
    return value


def default_backend() -> str:
    """The backend of calls that name none: `$TOKEN_TRACE_BACKEND` when set, else "hooked"."""
    chosen = os.environ.get(BACKEND_ENV, "").strip()
    return one_of(chosen, f"backend in ${BACKEND_ENV}", BACKENDS) if chosen else DEFAULT_BACKEND


def check_metric(metric: Any) -> None:
    """A metric is None (the default log-probability), a name, or a callable."""
    if not (metric is None or callable(metric) or metric in METRIC_NAMES):
        raise ValueError(
            f"Unknown metric {metric!r}: use 'logprob', 'logit_diff', 'loss' or a callable."
        )


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PromptSpec:
    """What to score on one prompt (checked against the model's tokenizer by `prepare_prompt`)."""

    text: Any = None  # str, or a `1 x T` tensor of token ids (taken as is)
    answer: Answer | None = option(
        None, "score log p(answer | prompt); a leading space is part of the token (' Mary')"
    )
    contrast: Answer | None = option(
        None, "with --answer, score logit(answer) - logit(contrast); one token each"
    )
    counterfactual: Any = option(
        None,
        "a counterfactual prompt of the same token length: nodes are patched to their value on "
        "it instead of to zero",
        aliases=("--baseline",),
    )


@dataclass(frozen=True)
class TraceOptions:
    """How a call attributes its prompts (the same for every prompt of the call)."""

    metric: MetricArgument = option(
        None, "score the prompt's mean next-token loss", flag="--loss", const="loss"
    )
    method: Method = option("atp", "attribution patching (atp) or integrated gradients (ig)")
    ig_steps: int = option(DEFAULT_IG_STEPS, "integrated-gradient steps (with --method ig)")
    ig_rule: IGRule = option(DEFAULT_IG_RULE, "integrated gradients' quadrature over the path")
    sae_dtype: SAEDtype = option(
        "float32", "load the SAEs at this precision; half precision is for GPUs"
    )
    device: str | None = option(None, "cpu or cuda (default: cuda when present)")
    model_dtype: ModelDtype = option(
        "auto", "load named models at this precision; auto: bfloat16 on a GPU, float32 on a CPU"
    )
    backend: Backend | None = option(
        None,
        "load named models as TransformerLens HookedTransformer or TransformerBridge "
        f"(default: ${BACKEND_ENV}, else {DEFAULT_BACKEND})",
    )

    def __post_init__(self) -> None:
        one_of(self.method, "method", tuple(METHODS))
        if self.backend is None:
            object.__setattr__(self, "backend", default_backend())
        one_of(self.backend, "backend", BACKENDS)
        # Only integrated gradients takes steps; AtP ignores the field (and compares equal).
        steps = whole_number(self.ig_steps, "ig_steps", 1) if self.method == "ig" else None
        object.__setattr__(self, "ig_steps", steps or DEFAULT_IG_STEPS)
        one_of(self.ig_rule, "ig_rule", IG_RULES)
        one_of(self.sae_dtype, "SAE dtype", SAE_DTYPES)
        one_of(self.model_dtype, "model dtype", MODEL_DTYPES)
        check_metric(self.metric)

    @property
    def scores_tokens(self) -> bool:
        """Whether the metric reads a few tokens' logits (not the loss over every position)."""
        return self.metric != "loss"

    def check_graphable(self) -> None:
        """Graphs are built from attribution patching of a token metric: refuse anything else."""
        if self.method != "atp" or not self.scores_tokens:
            raise ValueError(
                "Graphs are built from attribution patching (method 'atp') of a token metric "
                "(not the loss)."
            )


@dataclass(frozen=True)
class GraphOptions:
    """Which graph to keep: the `max_nodes` nodes of largest |attribution| (None: all), pruned
    to those carrying `node_threshold` / `edge_threshold` of the influence (None: no pruning)."""

    max_nodes: int | None = option(
        DEFAULT_MAX_NODES, "graph: the nodes of largest |attribution| that edges are computed for"
    )
    node_threshold: float | None = option(
        DEFAULT_NODE_THRESHOLD, "graph: keep the nodes carrying this share of the influence"
    )
    edge_threshold: float | None = option(
        DEFAULT_EDGE_THRESHOLD, "graph: keep the edges carrying this share of the influence"
    )
    baseline_sources: bool = option(
        DEFAULT_BASELINE_SOURCES,
        "graph: keep features that only the counterfactual switches on, though nothing feeds them",
    )

    def __post_init__(self) -> None:
        if self.max_nodes is not None:
            object.__setattr__(self, "max_nodes", whole_number(self.max_nodes, "max_nodes", 1))
        for name in ("node_threshold", "edge_threshold"):
            object.__setattr__(self, name, share(getattr(self, name), name, optional=True))
        if not isinstance(self.baseline_sources, bool):
            raise ValueError(
                f"baseline_sources must be True or False, got {self.baseline_sources!r}."
            )


def split_options(
    options: Mapping[str, Any], *records: type
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Keyword options sorted into each record's fields, and whatever is left over."""
    left = dict(options)
    parts = []
    for record in records:
        names = {f.name for f in fields(record)}
        parts.append({name: left.pop(name) for name in list(left) if name in names})
    return parts, left


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser, record: type) -> None:
    """One flag per field of `record` that has help, with its default, type and choices."""
    hints = typing.get_type_hints(record)
    for spec in fields(record):
        if "help" not in spec.metadata:
            continue
        meta = spec.metadata
        flags = [meta.get("flag") or "--" + spec.name.replace("_", "-"), *meta.get("aliases", ())]
        help_text = meta["help"] + _default_note(spec)
        if "const" in meta:
            parser.add_argument(
                *flags, dest=spec.name, action="store_const", const=meta["const"],
                default=spec.default, help=help_text,
            )  # fmt: skip
            continue
        if hints[spec.name] is bool:
            parser.add_argument(
                *flags, dest=spec.name, action=argparse.BooleanOptionalAction,
                default=spec.default, help=help_text,
            )  # fmt: skip
            continue
        choices = _choices(hints[spec.name])
        parser.add_argument(
            *flags, dest=spec.name, default=spec.default, choices=choices,
            type=None if choices else _scalar_type(hints[spec.name]), help=help_text,
        )  # fmt: skip


def arguments_for(record: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed values of the flags `add_arguments` made for `record`'s fields."""
    return {f.name: getattr(args, f.name) for f in fields(record) if "help" in f.metadata}


def from_arguments(record: type, args: argparse.Namespace) -> Any:
    """The record made from parsed arguments (its checks run here, before anything loads)."""
    return record(**arguments_for(record, args))


def _default_note(spec: Field) -> str:
    default = spec.default
    if default is MISSING or default is None or isinstance(default, bool):
        return ""
    return f" (default: {default})"


def _choices(hint: Any) -> list[str] | None:
    for arg in (hint, *get_args(hint)):
        if typing.get_origin(arg) is Literal:
            return list(get_args(arg))
    return None


def _scalar_type(hint: Any) -> Callable[[str], Any] | None:
    """The converter for a flag's text: int or float fields are parsed by the record's own
    checks (so `--max-nodes 0` and `--max-nodes x` get the same message), others stay text."""
    for kind in (int, float):
        if hint is kind or kind in get_args(hint):
            return _number
    return None


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text  # the record's check names the option and refuses it
