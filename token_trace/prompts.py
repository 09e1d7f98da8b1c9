"""From what a user typed to the tokens the model reads and the metric it is scored on.

All input checking happens here, before any tensor reaches the model, so that a bad prompt or answer
is reported in the user's terms ("the answer ' Mary and' is 2 tokens") instead of as a shape error
from deep inside torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from token_trace import metrics
from token_trace.backend import Model
from token_trace.metrics import Metric
from token_trace.options import TOP_PREDICTION, check_metric

TextOrTokens = str | torch.Tensor | Sequence[int]


@dataclass(frozen=True)
class Prompt:
    """The model's input (`[1, T]` ids, on the model's device), its tokens as text, the metric."""

    tokens: torch.Tensor
    str_tokens: list[str]
    metric: Metric
    target: str | None  # what the metric predicts, as text, for display
    text_length: int  # tokens of the text itself, before the target was dropped or answers fed
    unknown_words: tuple[str, ...] = ()  # words of the text read as the unknown token


def _has_tokenizer(model: Model) -> bool:
    return model.tokenizer is not None


def str_tokens(model: Model, token_ids: torch.Tensor) -> list[str]:
    """Token strings, or the ids as strings for a model without a tokenizer."""
    ids = token_ids.reshape(-1)
    if not _has_tokenizer(model):
        return [str(int(i)) for i in ids]
    return list(model.to_str_tokens(ids))


def unknown_words(model: Model, text: str) -> list[str]:
    """The words of `text` that the model's tokenizer turns into its unknown token, in order.

    Byte-level tokenizers such as GPT-2's never produce it; word-level ones (the bundled model's)
    do for every word outside their vocabulary, and the run would then silently score or read
    `<unk>`. A literal unknown-token string typed in the text is not an unknown word.
    """
    tokenizer = model.tokenizer
    unk_id = None if tokenizer is None else tokenizer.unk_token_id
    if unk_id is None:
        return []
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    words = [
        text[start:end].strip() or text[start:end]
        for token_id, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"])
        if token_id == unk_id and text[start:end].strip() != tokenizer.unk_token
    ]
    return list(dict.fromkeys(words))


def unknown_words_warning(words: Sequence[str], what: str, unk_token: str) -> str:
    """The warning shown for a prompt with unknown words."""
    listed = ", ".join(repr(word) for word in words)
    return (
        f"The {what} has words this model's vocabulary does not know, read as {unk_token!r}: "
        f"{listed}. Results at those positions describe the unknown token, not the words."
    )


def _prompt_tokens(model: Model, text: TextOrTokens) -> torch.Tensor:
    """`[1, T]` token ids; text gets the model's BOS, tensors are taken as they are."""
    if isinstance(text, str):
        if not text.strip():
            raise ValueError("The prompt is empty: type some text to attribute.")
        if not _has_tokenizer(model):
            raise ValueError(
                "This model has no tokenizer: pass the prompt as a 1 x T tensor of ids."
            )
        tokens = model.to_tokens(text, truncate=False)
    else:
        tokens = torch.as_tensor(text)
        if tokens.ndim == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.ndim != 2 or tokens.shape[0] != 1:
            raise ValueError(f"Token input must be 1 x T, got shape {list(tokens.shape)}.")
        if tokens.numel() == 0:
            raise ValueError("The prompt is empty: the token tensor has no tokens.")
        if tokens.dtype.is_floating_point:
            raise ValueError("Token ids must be integers.")
        if int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.d_vocab:
            raise ValueError(f"Token ids must lie in [0, {model.cfg.d_vocab}).")
    return tokens.to(device=model.cfg.device, dtype=torch.long)


def _answer_ids(model: Model, answer: str | int | Sequence[int], role: str) -> list[int]:
    if isinstance(answer, str):
        if answer == "":
            raise ValueError(f"The {role} is empty.")
        if not _has_tokenizer(model):
            raise ValueError(f"This model has no tokenizer: pass the {role} as token ids.")
        unknown = unknown_words(model, answer)
        if unknown:
            raise ValueError(
                f"The {role} {answer!r} has words this model's vocabulary does not know "
                f"({', '.join(map(repr, unknown))}): it would score the unknown token "
                f"{model.tokenizer.unk_token!r}. Pick a word the model knows."
            )
        ids = model.to_tokens(answer, prepend_bos=False, truncate=False)[0].tolist()
    else:
        ids = [int(answer)] if isinstance(answer, int) else [int(i) for i in answer]
    if not ids:
        raise ValueError(f"The {role} has no tokens.")
    if min(ids) < 0 or max(ids) >= model.cfg.d_vocab:
        raise ValueError(f"The {role}'s token ids must lie in [0, {model.cfg.d_vocab}).")
    return ids


def _single_token(model: Model, answer: str | int | Sequence[int], role: str) -> int:
    ids = _answer_ids(model, answer, role)
    if len(ids) != 1:
        pieces = str_tokens(model, torch.tensor(ids))
        raise ValueError(
            f"The {role} {answer!r} is {len(ids)} tokens ({pieces}); a logit difference needs "
            "single-token answers (GPT-2 words usually start with a space, e.g. ' Mary')."
        )
    return ids[0]


def tokenizer_length(model: Model, text: str) -> int | None:
    """How many tokens the model's tokenizer makes of `text` (None when it has no tokenizer).

    A cheap pre-check of a length cap, before any run. It asks the tokenizer itself, not
    `model.to_tokens`: that one changes the model's BOS default while it runs (a race with other
    requests) and puts the tokens on the model's device, which ZeroGPU's main process lacks.
    """
    if model.tokenizer is None:
        return None
    return len(model.tokenizer(text)["input_ids"])


def _check_length(model: Model, n_tokens: int) -> None:
    if n_tokens > model.cfg.n_ctx:
        raise ValueError(
            f"The prompt is {n_tokens} tokens; {model.cfg.model_name} reads at most "
            f"{model.cfg.n_ctx}. Shorten it."
        )


def _top_next_token(model: Model, tokens: torch.Tensor) -> int:
    _check_length(model, tokens.shape[1])
    with torch.no_grad():
        return int(model(tokens, return_type="logits")[0, -1].argmax())


def prepare_prompt(
    model: Model,
    text: TextOrTokens,
    answer: str | int | Sequence[int] | None = None,
    contrast: str | int | Sequence[int] | None = None,
    metric: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Prompt:
    """Tokenise and validate a request, and pick its metric.

    - no answer: log p(last token of `text` | the tokens before it); the last token is the target,
      so the model reads the tokens before it.
    - `answer`: log p(answer tokens | text), summed over the answer's tokens (the model reads the
      text and all answer tokens but the last); `TOP_PREDICTION`: the model's top next token.
    - `answer` and `contrast`: logit(answer) - logit(contrast) after the text; one token each.
    - `metric="loss"`: mean next-token loss of the text; a callable: any function of the logits.
    """
    tokens = _prompt_tokens(model, text)
    unknown = tuple(unknown_words(model, text)) if isinstance(text, str) else ()
    if isinstance(answer, str) and answer == TOP_PREDICTION:
        answer = _top_next_token(model, tokens)
    if contrast is not None and answer is None:
        raise ValueError("A contrast answer needs an answer to compare against.")
    if callable(metric) or metric == "loss":
        if (answer, contrast) != (None, None):
            raise ValueError("answer/contrast choose the metric; do not combine them with metric=.")
        _check_length(model, tokens.shape[1])
        if metric == "loss":
            if tokens.shape[1] < 2:
                raise ValueError("The loss needs at least two tokens.")
            chosen = metrics.mean_loss(tokens)
        else:
            chosen = metrics.custom(metric)
        return Prompt(tokens, str_tokens(model, tokens), chosen, None, tokens.shape[1], unknown)
    check_metric(metric)
    if metric == "logit_diff" and contrast is None:
        raise ValueError("The logit difference needs both an answer and a contrast.")

    text_length = tokens.shape[1]
    if answer is None:
        if tokens.shape[1] < 2:
            raise ValueError("The prompt needs at least two tokens: the last one is the target.")
        target_id = int(tokens[0, -1])
        tokens = tokens[:, :-1]
        _check_length(model, tokens.shape[1])
        target = str_tokens(model, torch.tensor([target_id]))[0]
        chosen = metrics.token_logprob(
            [target_id], [tokens.shape[1] - 1], f"log p({target!r} | prompt)"
        )
        return Prompt(tokens, str_tokens(model, tokens), chosen, target, text_length, unknown)

    last = tokens.shape[1] - 1
    if contrast is not None:
        _check_length(model, tokens.shape[1])
        answer_id = _single_token(model, answer, "answer")
        contrast_id = _single_token(model, contrast, "contrast")
        if answer_id == contrast_id:
            raise ValueError("The answer and the contrast are the same token.")
        answer_str, contrast_str = str_tokens(model, torch.tensor([answer_id, contrast_id]))
        chosen = metrics.logit_difference(
            last, answer_id, contrast_id, f"logit({answer_str!r}) - logit({contrast_str!r})"
        )
        return Prompt(tokens, str_tokens(model, tokens), chosen, answer_str, text_length, unknown)

    answer_ids = _answer_ids(model, answer, "answer")
    fed = torch.tensor([answer_ids[:-1]], dtype=torch.long, device=tokens.device)
    tokens = torch.cat([tokens, fed], dim=1)
    _check_length(model, tokens.shape[1])
    answer_str = "".join(str_tokens(model, torch.tensor(answer_ids)))
    chosen = metrics.token_logprob(
        answer_ids,
        range(last, last + len(answer_ids)),
        f"log p({answer_str!r} | prompt)",
    )
    return Prompt(tokens, str_tokens(model, tokens), chosen, answer_str, text_length, unknown)


#: A typed answer this unlikely, whose twin with the leading space toggled is this likely and this
#: many times likelier, is probably the wrong token (' Mary' and 'Mary' are different tokens).
UNLIKELY, LIKELY, RATIO = 0.01, 0.05, 20.0


def space_warnings(
    model: Model,
    answers: Sequence[tuple[str, object]],
    next_logits: torch.Tensor,
) -> list[str]:
    """Warnings for typed single-token answers (`(role, answer)` pairs) that the model finds
    unlikely while the same word with the leading space toggled is likely, naming both tokens and
    their probabilities under the model's next-token distribution `next_logits`."""
    probs = next_logits.float().softmax(-1)
    notes = []
    for role, answer in answers:
        if not isinstance(answer, str) or not answer.strip() or not _has_tokenizer(model):
            continue
        twin = answer[1:] if answer.startswith(" ") else " " + answer
        try:
            (typed,), (other,) = _answer_ids(model, answer, role), _answer_ids(model, twin, role)
        except ValueError:  # several tokens or unknown words: no single twin to compare
            continue
        p_typed, p_other = float(probs[typed]), float(probs[other])
        if p_typed < UNLIKELY and p_other >= LIKELY and p_other >= RATIO * p_typed:
            typed_str, other_str = str_tokens(model, torch.tensor([typed, other]))
            notes.append(
                f"The {role} {answer!r} is the token {typed_str!r} (p = {p_typed:.2g}), but the "
                f"model gives {other_str!r} p = {p_other:.2g}: a leading space is part of a "
                f"token. Did you mean {twin!r}?"
            )
    return notes


def prepare_baseline(model: Model, baseline_text: TextOrTokens, prompt: Prompt) -> torch.Tensor:
    """The model's input for a counterfactual prompt, position by position aligned with `prompt`.

    The counterfactual text must have as many tokens as the prompt's text; it then goes through the
    same edits (target dropped, answer tokens fed), so only the text's own positions differ.
    """
    tokens = _prompt_tokens(model, baseline_text)
    if tokens.shape[1] != prompt.text_length:
        raise ValueError(
            f"The counterfactual prompt is {tokens.shape[1]} tokens but the prompt is "
            f"{prompt.text_length}; patching needs the same number of tokens at the same positions."
        )
    kept = min(prompt.text_length, prompt.tokens.shape[1])
    return torch.cat([tokens[:, :kept], prompt.tokens[:, kept:]], dim=1)
