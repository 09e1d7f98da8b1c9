"""`trace`: from a prompt and names (or ready objects) to a typed `Trace`, in one call.

`compute_node_attribution` is the same call returning the node table as a DataFrame.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from sae_lens import SAE

from token_trace import loading
from token_trace.attribution import Attribution, AttributionRun, Batch, attribute
from token_trace.backend import Model, backend_of
from token_trace.hook_names import residual_depth
from token_trace.hooks import model_lock
from token_trace.metrics import target_probability
from token_trace.nodes import node_frame
from token_trace.options import (
    DEFAULT_IG_RULE,
    DEFAULT_IG_STEPS,
    DEFAULT_MODEL,
    Answer,
    Backend,
    IGRule,
    Method,
    MetricArgument,
    ModelDtype,
    PromptSpec,
    SAEDtype,
    TraceOptions,
)
from token_trace.prompts import (
    Prompt,
    TextOrTokens,
    prepare_baseline,
    prepare_prompt,
    space_warnings,
    str_tokens,
    unknown_words,
    unknown_words_warning,
)
from token_trace.records import MetricRecord, Prediction, PromptRecord, SAERecord, Trace

SAEArgument = str | Sequence[tuple[str, str]] | Mapping[str, SAE] | None
N_TOP_PREDICTIONS = 10


@dataclass(frozen=True, eq=False)
class Loaded:
    """A request's model and SAEs, resolved from names (or taken as given) once."""

    model: Model
    name: str
    saes: dict[str, SAE]
    records: tuple[SAERecord, ...]


def resolve(model: str | Model, saes: SAEArgument, options: TraceOptions | None = None) -> Loaded:
    """The model object, its name, the SAEs by hook, and the record of each SAE."""
    options = options or TraceOptions()
    device, sae_dtype, model_dtype = options.device, options.sae_dtype, options.model_dtype
    given = None if isinstance(model, str) else model
    if given is not None:
        backend_of(given)  # a model object of a class token-trace runs, or a clear TypeError
    model_name = model if given is None else given.cfg.model_name
    if isinstance(saes, Mapping):
        model_obj = (
            given
            if given is not None
            else loading.load_model(model_name, device, dtype=model_dtype, backend=options.backend)
        )
        sae_dict = dict(saes)
        origins = {
            hook: (sae.cfg.metadata.get("sae_id") or hook, sae.cfg.metadata.get("release"))
            for hook, sae in sae_dict.items()
        }
    else:
        specs = loading.resolve_sae_specs(saes, model_name)
        loading.check_release_matches_model(specs, model_name)
        model_obj = (
            given
            if given is not None
            else loading.load_model(
                model_name,
                device,
                release=specs[0].release,
                dtype=model_dtype,
                backend=options.backend,
            )
        )
        sae_dict = loading.load_saes(specs, device=str(model_obj.cfg.device), dtype=sae_dtype)
        origins = {hook: (spec.sae_id, spec.release) for hook, spec in zip(sae_dict, specs)}
    loading.check_saes_fit_model(sae_dict, model_obj)
    model_device = torch.device(model_obj.cfg.device).type
    for hook, sae in sae_dict.items():
        if sae.W_dec.device.type != model_device:
            raise ValueError(
                f"The SAE at {hook!r} is on {sae.W_dec.device} but the model is on "
                f"{model_obj.cfg.device}; move one of them."
            )
    records = tuple(
        SAERecord(
            hook_name=hook,
            sae_id=origins[hook][0],
            release=origins[hook][1],
            layer=residual_depth(hook),
            neuronpedia_id=sae.cfg.metadata.get("neuronpedia_id"),
        )
        for hook, sae in sae_dict.items()
    )
    return Loaded(model_obj, model_name, sae_dict, records)


def trace(
    text: TextOrTokens,
    model: str | Model = DEFAULT_MODEL,
    saes: SAEArgument = None,
    *,
    answer: Answer | None = None,
    contrast: Answer | None = None,
    counterfactual: TextOrTokens | None = None,
    metric: MetricArgument = None,
    method: Method = "atp",
    ig_steps: int = DEFAULT_IG_STEPS,
    ig_rule: IGRule = DEFAULT_IG_RULE,
    device: str | None = None,
    sae_dtype: SAEDtype = "float32",
    backend: Backend | None = None,
    baseline_text: TextOrTokens | None = None,
    model_dtype: ModelDtype = "auto",
) -> Trace:
    """Attribute a metric on `text` to every active SAE feature and SAE error node.

    Args:
        text: the prompt, or a `1 x T` tensor of token ids (taken as is, no BOS added).
        model: a TransformerLens model name (loaded with the processing its SAEs expect), the
            bundled offline model `"ioi-demo"`, or a ready `HookedTransformer` or
            `TransformerBridge`.
        saes: None (the model's default SAE release), a SAELens release name, a list of
            `(release, sae_id)` pairs, or a ready `{hook_name: SAE}` dict.
        answer: score log p(answer | text) instead of the last token of `text`.
        contrast: with `answer`, score logit(answer) - logit(contrast) (one token each).
        counterfactual: a counterfactual prompt of the same token length; nodes are patched to
            their value on it instead of to zero (`baseline_text` is the older name).
        metric: "logprob" (default), "loss" (mean next-token loss), or a callable mapping logits
            `[batch, pos, d_vocab]` to one value per batch row.
        method: "atp" (attribution patching, one forward and one backward pass) or "ig"
            (integrated gradients per SAE layer, `ig_steps` steps).
        ig_rule: IG's quadrature over the path: "gauss-legendre" (default, `ig_steps` points)
            or "riemann" (the left sum of Sparse Feature Circuits, `ig_steps - 1` passes).
        device: where to load named models and SAEs (CUDA when present by default).
        sae_dtype: "bfloat16" or "float16" loads named SAEs at half precision (half the memory,
            faster encodes on a GPU); only the encodes run in it.
        model_dtype: the precision a named model is loaded in: "auto" (bfloat16 on a GPU,
            float32 on a CPU), "float32" or "bfloat16". Nodes and edges are accumulated in
            float32 either way.
        backend: the TransformerLens class a named model is loaded as: "hooked"
            (HookedTransformer) or "bridge" (TransformerBridge in compatibility mode); None reads
            $TOKEN_TRACE_BACKEND, else "hooked" (see `token_trace.backend`).

    Returns:
        A `Trace`: the node table (`trace.nodes`, one row per node; `attribution` estimates
        `metric(clean) - metric(node set to its baseline)`) and the run's typed metadata.

    Words the tokenizer does not know are read as its unknown token: in an answer or contrast that
    is an error; in a prompt it is an `UnknownWordsWarning` and an entry of `trace.warnings`.
    """
    prompt = PromptSpec(text, answer, contrast, either(counterfactual, baseline_text))
    options = TraceOptions(
        metric=metric, method=method, ig_steps=ig_steps, ig_rule=ig_rule,
        sae_dtype=sae_dtype, device=device, model_dtype=model_dtype, backend=backend,
    )  # fmt: skip
    (result,), _ = run_traces([prompt], resolve(model, saes, options), options)
    return result


def trace_batch(
    texts: Sequence[TextOrTokens],
    model: str | Model = DEFAULT_MODEL,
    saes: SAEArgument = None,
    *,
    answers: Sequence[Answer] | None = None,
    contrasts: Sequence[Answer] | None = None,
    counterfactuals: Sequence[TextOrTokens] | None = None,
    metric: MetricArgument = None,
    method: Method = "atp",
    ig_steps: int = DEFAULT_IG_STEPS,
    ig_rule: IGRule = DEFAULT_IG_RULE,
    device: str | None = None,
    sae_dtype: SAEDtype = "float32",
    backend: Backend | None = None,
    baseline_texts: Sequence[TextOrTokens] | None = None,
    model_dtype: ModelDtype = "auto",
) -> list[Trace]:
    """`trace` for several prompts at once: one `Trace` per prompt.

    The prompts (of any lengths) run as one padded batch, so a batch costs one forward and one
    backward pass; on a GPU that is little more than one prompt's. `answers`, `contrasts` and
    `counterfactuals` (older name: `baseline_texts`), when given, hold one entry per prompt;
    `metric` applies to all. Each trace equals what `trace` returns for its prompt alone (up to
    float rounding).
    """
    prompts = prompt_specs(texts, answers, contrasts, either(counterfactuals, baseline_texts))
    options = TraceOptions(
        metric=metric, method=method, ig_steps=ig_steps, ig_rule=ig_rule,
        sae_dtype=sae_dtype, device=device, model_dtype=model_dtype, backend=backend,
    )  # fmt: skip
    return run_traces(prompts, resolve(model, saes, options), options)[0]


def either(value: Any, older: Any) -> Any:
    """A value given under its name or under its older spelling (not both)."""
    if value is not None and older is not None:
        raise ValueError("Give the counterfactual prompt once (counterfactual= or baseline_text=).")
    return older if value is None else value


def prompt_specs(
    texts: Sequence[TextOrTokens],
    answers: Sequence[Answer | None] | None = None,
    contrasts: Sequence[Answer | None] | None = None,
    counterfactuals: Sequence[TextOrTokens | None] | None = None,
) -> list[PromptSpec]:
    """One `PromptSpec` per text from per-prompt lists (each None or one entry per text)."""
    texts = list(texts)
    if not texts:
        raise ValueError("No prompts given.")
    per_prompt = {"answers": answers, "contrasts": contrasts, "counterfactuals": counterfactuals}
    for name, values in per_prompt.items():
        if values is not None and len(values) != len(texts):
            raise ValueError(f"{name} has {len(values)} entries for {len(texts)} prompts.")
    return [
        PromptSpec(
            text,
            None if answers is None else answers[index],
            None if contrasts is None else contrasts[index],
            None if counterfactuals is None else counterfactuals[index],
        )
        for index, text in enumerate(texts)
    ]


def run_traces(
    prompts: Sequence[PromptSpec], loaded: Loaded, options: TraceOptions
) -> tuple[list[Trace], AttributionRun]:
    """The traces of `prompts` and the engine run behind them (graphs go on from its passes).

    Counterfactuals are all or none: one batch is patched to zero or to its counterfactuals.
    """
    if not prompts:
        raise ValueError("No prompts given.")
    if len({p.counterfactual is None for p in prompts}) > 1:
        raise ValueError("Give a counterfactual for every prompt of a batch, or for none.")
    model_obj = loaded.model
    # TransformerLens tokenises by briefly changing the model's defaults (prepend_bos), so
    # tokenising holds the model's lock too: a concurrent request must never lose its BOS.
    with model_lock(model_obj):
        prepared, baselines, notes = [], [], []
        for index, spec in enumerate(prompts):
            with _naming_prompt(index, len(prompts)):
                prompt = prepare_prompt(
                    model_obj, spec.text, spec.answer, spec.contrast, options.metric
                )
                prepared.append(prompt)
                if spec.counterfactual is not None:
                    baselines.append(prepare_baseline(model_obj, spec.counterfactual, prompt))
                notes.append(_warnings(model_obj, prompt, spec.counterfactual, index, len(prompts)))
    batch = Batch.of([p.tokens for p in prepared], [p.metric for p in prepared])
    run = attribute(
        model_obj,
        loaded.saes,
        batch,
        options,
        baseline_tokens=Batch.of(baselines, batch.metrics).tokens if baselines else None,
    )
    traces = [
        _trace_record(
            loaded, options, spec, prompt, result, note, baselines[row] if baselines else None
        )
        for row, (spec, prompt, result, note) in enumerate(
            zip(prompts, prepared, run.results, notes)
        )
    ]
    return traces, run


def _trace_record(
    loaded: Loaded,
    options: TraceOptions,
    spec: PromptSpec,
    prompt: Prompt,
    result: Attribution,
    notes: list[str],
    baseline_tokens: torch.Tensor | None,
) -> Trace:
    """One prompt's engine result with everything a reader needs to interpret it."""
    return Trace(
        nodes=node_frame(result, loaded.records, prompt.str_tokens),
        prompt=PromptRecord(
            text=spec.text if isinstance(spec.text, str) else None,
            tokens=tuple(prompt.str_tokens),
            token_ids=tuple(prompt.tokens[0].tolist()),
            bos_position=_bos_position(loaded.model, prompt),
            target=prompt.target,
            unknown_words=prompt.unknown_words,
        ),
        metric=MetricRecord(
            name=prompt.metric.name,
            description=prompt.metric.description,
            value=result.metric_value,
            baseline_value=result.baseline_metric_value,
            positions=prompt.metric.positions,
            token_ids=prompt.metric.token_ids,
            target_probability=target_probability(
                prompt.metric.name, prompt.metric.token_ids, result.metric_value, result.last_logits
            ),
        ),
        saes=loaded.records,
        model=loaded.name,
        method=options.method,
        ig_steps=options.ig_steps if options.method == "ig" else None,
        baseline="zero" if baseline_tokens is None else "counterfactual",
        counterfactual=spec.counterfactual if isinstance(spec.counterfactual, str) else None,
        baseline_token_ids=None if baseline_tokens is None else tuple(baseline_tokens[0].tolist()),
        top_predictions=_top_predictions(loaded.model, result.last_logits),
        warnings=(*notes, *_answer_warnings(loaded.model, spec, prompt, result)),
        ig_rule=options.ig_rule if options.method == "ig" else None,
        backend=backend_of(loaded.model),
    )


def compute_node_attribution(
    text: TextOrTokens,
    model: str | Model = DEFAULT_MODEL,
    saes: SAEArgument = None,
    **options: Any,
) -> pd.DataFrame:
    """`trace(...)` as a pandas DataFrame: the node table, with the run's metadata in `df.attrs`.

    Takes exactly `trace`'s arguments. For pandas-first work; code that passes results on should
    prefer the typed `Trace`.
    """
    return trace(text, model, saes, **options).to_frame()


def compute_node_attribution_batch(
    texts: Sequence[TextOrTokens],
    model: str | Model = DEFAULT_MODEL,
    saes: SAEArgument = None,
    **options: Any,
) -> list[pd.DataFrame]:
    """`trace_batch(...)` as DataFrames, one per prompt (see `compute_node_attribution`)."""
    return [result.to_frame() for result in trace_batch(texts, model, saes, **options)]


class UnknownWordsWarning(UserWarning):
    """A prompt has words the tokenizer reads as its unknown token; the run goes on."""


def _warnings(
    model: Model,
    prompt: Prompt,
    baseline: TextOrTokens | None,
    index: int,
    n_prompts: int,
) -> list[str]:
    """Warnings for one prompt (and its counterfactual), also raised as `UnknownWordsWarning`."""
    found = [("prompt", prompt.unknown_words)]
    if isinstance(baseline, str):
        found.append(("counterfactual prompt", tuple(unknown_words(model, baseline))))
    prefix = f"Prompt {index}: " if n_prompts > 1 else ""
    notes = [
        prefix + unknown_words_warning(words, what, model.tokenizer.unk_token)
        for what, words in found
        if words
    ]
    for note in notes:
        warnings.warn(note, UnknownWordsWarning, stacklevel=4)
    return notes


def _answer_warnings(
    model: Model, spec: PromptSpec, prompt: Prompt, result: Attribution
) -> list[str]:
    """A typed answer or contrast that is probably the wrong token (a missing or extra leading
    space), also raised as an `AnswerTokenWarning`. Single-token answers only: their probability
    is read off the run's own last-position logits."""
    one_position = {"logprob": 1, "logit_diff": 2}.get(prompt.metric.name)
    if one_position is None or len(prompt.metric.token_ids) != one_position:
        return []
    given = [("answer", spec.answer), ("contrast", spec.contrast)]
    with model_lock(model):  # tokenising changes the model's defaults for a moment
        notes = space_warnings(model, given, result.last_logits)
    for note in notes:
        warnings.warn(note, AnswerTokenWarning, stacklevel=4)
    return notes


class AnswerTokenWarning(UserWarning):
    """A typed answer is unlikely while the same word with(out) a leading space is likely."""


def _bos_position(model: Model, prompt: Prompt) -> int | None:
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else None
    return 0 if bos is not None and int(prompt.tokens[0, 0]) == bos else None


def _top_predictions(model: Model, last_logits: torch.Tensor) -> tuple[Prediction, ...]:
    probs = last_logits.float().softmax(-1)
    top = probs.topk(min(N_TOP_PREDICTIONS, probs.shape[0]))
    tokens = str_tokens(model, top.indices)
    return tuple(Prediction(t, float(p)) for t, p in zip(tokens, top.values.tolist()))


class PromptError(ValueError):
    """One prompt of a call cannot be attributed (empty, too long, an answer of several tokens...).

    `index` says which prompt of the batch, so a caller running many prompts (a dataset run) can
    set that one aside and go on with the others; `reason` is the message without the prefix.
    """

    def __init__(self, index: int, reason: str, n_prompts: int) -> None:
        super().__init__(reason if n_prompts == 1 else f"Prompt {index}: {reason}")
        self.index = index
        self.reason = reason


@contextmanager
def _naming_prompt(index: int, n_prompts: int) -> Iterator[None]:
    """Say which prompt of the call a validation error is about."""
    try:
        yield
    except ValueError as error:
        raise PromptError(index, str(error), n_prompts) from error
