"""`compute_node_attribution`: from a prompt and names to the node table, in one call."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

from token_trace import loading
from token_trace.attribution import Attribution, Batch, attribute
from token_trace.hooks import model_lock
from token_trace.nodes import SAEInfo, node_frame, residual_layer
from token_trace.prompts import (
    Prompt,
    TextOrTokens,
    prepare_baseline,
    prepare_prompt,
    str_tokens,
)

SAEArgument = str | Sequence[tuple[str, str]] | Mapping[str, SAE] | None
Answer = str | int | Sequence[int]
MetricArgument = str | Callable[[torch.Tensor], torch.Tensor] | None
N_TOP_PREDICTIONS = 10


def resolve(
    model: str | HookedTransformer,
    saes: SAEArgument,
    device: str | None,
    sae_dtype: str = "float32",
) -> tuple[HookedTransformer, str, dict[str, SAE], list[SAEInfo]]:
    """The model object, its name, the SAEs by hook, and what the table says about each SAE."""
    if isinstance(model, HookedTransformer):
        model_obj, model_name = model, model.cfg.model_name
    else:
        model_name = model
    if isinstance(saes, Mapping):
        if not isinstance(model, HookedTransformer):
            model_obj = loading.load_model(model_name, device)
        sae_dict = dict(saes)
        ids = {hook: sae.cfg.metadata.get("sae_id") or hook for hook, sae in sae_dict.items()}
    else:
        specs = loading.resolve_sae_specs(saes, model_name)
        loading.check_release_matches_model(specs, model_name)
        if not isinstance(model, HookedTransformer):
            model_obj = loading.load_model(model_name, device, release=specs[0].release)
        sae_dict = loading.load_saes(specs, device=str(model_obj.cfg.device), dtype=sae_dtype)
        ids = {hook: spec.sae_id for hook, spec in zip(sae_dict, specs)}
    loading.check_saes_fit_model(sae_dict, model_obj)
    model_device = torch.device(model_obj.cfg.device).type
    for hook, sae in sae_dict.items():
        if sae.W_dec.device.type != model_device:
            raise ValueError(
                f"The SAE at {hook!r} is on {sae.W_dec.device} but the model is on "
                f"{model_obj.cfg.device}; move one of them."
            )
    infos = [
        SAEInfo(hook, ids[hook], residual_layer(hook), sae.cfg.metadata.get("neuronpedia_id"))
        for hook, sae in sae_dict.items()
    ]
    return model_obj, model_name, sae_dict, infos


def compute_node_attribution(
    text: TextOrTokens,
    model: str | HookedTransformer = loading.DEFAULT_MODEL,
    saes: SAEArgument = None,
    *,
    answer: Answer | None = None,
    contrast: Answer | None = None,
    metric: MetricArgument = None,
    method: str = "atp",
    ig_steps: int = 10,
    baseline_text: TextOrTokens | None = None,
    device: str | None = None,
    sae_dtype: str = "float32",
) -> pd.DataFrame:
    """Attribute a metric on `text` to every active SAE feature and SAE error node.

    Args:
        text: the prompt, or a `1 x T` tensor of token ids (taken as is, no BOS added).
        model: a TransformerLens model name (loaded with the processing its SAEs expect), the
            bundled offline model `"ioi-demo"`, or a ready `HookedTransformer`.
        saes: None (the model's default SAE release), a SAELens release name, a list of
            `(release, sae_id)` pairs, or a ready `{hook_name: SAE}` dict.
        answer: score log p(answer | text) instead of the last token of `text`.
        contrast: with `answer`, score logit(answer) - logit(contrast) (one token each).
        metric: "logprob" (default), "loss" (mean next-token loss), or a callable mapping logits
            `[batch, pos, d_vocab]` to one value per batch row.
        method: "atp" (attribution patching, one forward and one backward pass) or "ig"
            (integrated gradients per SAE layer, `ig_steps` steps).
        baseline_text: a counterfactual prompt of the same token length; nodes are patched to
            their value on it instead of to zero.
        device: where to load named models and SAEs (CUDA when present by default).
        sae_dtype: "bfloat16" or "float16" loads named SAEs at half precision (half the memory,
            faster encodes on a GPU); only the encodes run in it.

    Returns:
        One row per node (see `token_trace.nodes.COLUMNS`); `attribution` estimates
        `metric(clean) - metric(node set to its baseline)`. `df.attrs` holds the run's metadata.
    """
    (df,) = compute_node_attribution_batch(
        [text],
        model,
        saes,
        answers=None if answer is None else [answer],
        contrasts=None if contrast is None else [contrast],
        metric=metric,
        method=method,
        ig_steps=ig_steps,
        baseline_texts=None if baseline_text is None else [baseline_text],
        device=device,
        sae_dtype=sae_dtype,
    )
    return df


def compute_node_attribution_batch(
    texts: Sequence[TextOrTokens],
    model: str | HookedTransformer = loading.DEFAULT_MODEL,
    saes: SAEArgument = None,
    *,
    answers: Sequence[Answer] | None = None,
    contrasts: Sequence[Answer] | None = None,
    metric: MetricArgument = None,
    method: str = "atp",
    ig_steps: int = 10,
    baseline_texts: Sequence[TextOrTokens] | None = None,
    device: str | None = None,
    sae_dtype: str = "float32",
) -> list[pd.DataFrame]:
    """`compute_node_attribution` for several prompts at once: one table per prompt.

    The prompts (of any lengths) run as one padded batch, so a batch costs one forward and one
    backward pass; on a GPU that is little more than one prompt's. `answers`, `contrasts` and
    `baseline_texts`, when given, hold one entry per prompt; `metric` applies to all. Each table
    equals what `compute_node_attribution` returns for its prompt alone (up to float rounding).
    """
    texts = list(texts)
    if not texts:
        raise ValueError("No prompts given.")
    per_prompt = {"answers": answers, "contrasts": contrasts, "baseline_texts": baseline_texts}
    for name, values in per_prompt.items():
        if values is not None and len(values) != len(texts):
            raise ValueError(f"{name} has {len(values)} entries for {len(texts)} prompts.")
    model_obj, model_name, sae_dict, infos = resolve(model, saes, device, sae_dtype)
    # TransformerLens tokenises by briefly changing the model's defaults (prepend_bos), so
    # tokenising holds the model's lock too: a concurrent request must never lose its BOS.
    with model_lock(model_obj):
        prompts, baselines = [], []
        for index, text in enumerate(texts):
            with _naming_prompt(index, len(texts)):
                prompt = prepare_prompt(
                    model_obj,
                    text,
                    None if answers is None else answers[index],
                    None if contrasts is None else contrasts[index],
                    metric,
                )
                prompts.append(prompt)
                if baseline_texts is not None:
                    baselines.append(prepare_baseline(model_obj, baseline_texts[index], prompt))
    batch = Batch.of([p.tokens for p in prompts], [p.metric for p in prompts])
    results = attribute(
        model_obj,
        sae_dict,
        batch,
        method=method,
        ig_steps=ig_steps,
        baseline_tokens=Batch.of(baselines, batch.metrics).tokens if baselines else None,
    )
    run = {
        "model": model_name,
        "saes": [info.sae_id for info in infos],
        "method": method,
        "ig_steps": ig_steps if method == "ig" else None,
        "baseline": "zero" if baseline_texts is None else "counterfactual",
    }
    return [
        _prompt_frame(model_obj, result, prompt, infos, run)
        for result, prompt in zip(results, prompts)
    ]


@contextmanager
def _naming_prompt(index: int, n_prompts: int) -> Iterator[None]:
    """In a batch, say which prompt a validation error is about."""
    try:
        yield
    except ValueError as error:
        if n_prompts == 1:
            raise
        raise ValueError(f"Prompt {index}: {error}") from error


def _prompt_frame(
    model: HookedTransformer,
    result: Attribution,
    prompt: Prompt,
    infos: list[SAEInfo],
    run: dict[str, Any],
) -> pd.DataFrame:
    """One prompt's node table, with the run's metadata in `df.attrs`."""
    df = node_frame(result, infos, prompt.str_tokens)
    probs = result.last_logits.float().softmax(-1)
    top = probs.topk(min(N_TOP_PREDICTIONS, probs.shape[0]))
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else None
    df.attrs.update(
        {
            **run,
            "hook_names": result.hook_names,
            "tokens": prompt.str_tokens,
            "token_ids": prompt.tokens[0].tolist(),
            "bos_position": 0 if bos is not None and int(prompt.tokens[0, 0]) == bos else None,
            "metric": prompt.metric.name,
            "metric_description": prompt.metric.description,
            "metric_value": result.metric_value,
            "target": prompt.target,
            "baseline_metric_value": result.baseline_metric_value,
            "top_predictions": [
                {"token": token, "probability": float(p)}
                for token, p in zip(str_tokens(model, top.indices), top.values.tolist())
            ],
        }
    )
    return df
