"""Metrics: the scalar whose dependence on each node we measure.

A metric reads logits at a few positions only. The engine exploits that: it runs the model up to the
final residual stream and unembeds just those positions, which saves the largest matrix product of
GPT-2 (d_model x 50257) at every other position, forward and backward.

Every metric is batched (logits `[batch, n_positions, d_vocab]` in, values `[batch]` out) so that
integrated gradients can evaluate all interpolation steps in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

MetricFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Metric:
    """A batched scalar function of the logits at `positions` (all positions when None).

    `token_ids` are the vocabulary ids it reads (the targets of `logprob`, answer and contrast of
    `logit_diff`), so that `rebuild` can make the same metric again from a saved trace.
    """

    name: str
    description: str
    positions: tuple[int, ...] | None
    fn: MetricFn
    token_ids: tuple[int, ...] = ()

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        values = self.fn(logits)
        if values.ndim == 0:
            values = values.reshape(1)
        if values.shape != logits.shape[:1]:
            raise ValueError(
                f"The metric {self.name!r} must return one value per batch row "
                f"(shape [{logits.shape[0]}]), got shape {list(values.shape)}."
            )
        return values


def token_logprob(targets: Sequence[int], positions: Sequence[int], description: str) -> Metric:
    """Summed log-probability of `targets[j]` as the next token after `positions[j]`."""
    target_ids = torch.tensor(list(targets), dtype=torch.long)

    def fn(logits: torch.Tensor) -> torch.Tensor:
        logprobs = logits.log_softmax(dim=-1)
        index = target_ids.to(logits.device).expand(logits.shape[0], -1).unsqueeze(-1)
        return logprobs.gather(-1, index).squeeze(-1).sum(-1)

    return Metric("logprob", description, tuple(positions), fn, tuple(targets))


def logit_difference(position: int, answer: int, contrast: int, description: str) -> Metric:
    """logit(answer) - logit(contrast) at one position: the IOI-style metric, free of softmax."""

    def fn(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0, answer] - logits[:, 0, contrast]

    return Metric("logit_diff", description, (position,), fn, (answer, contrast))


def mean_loss(tokens: torch.Tensor) -> Metric:
    """Mean next-token cross-entropy over the prompt (positive attribution = raises the loss)."""
    n_tokens = tokens.shape[-1]
    targets = tokens.reshape(-1)[1:]

    def fn(logits: torch.Tensor) -> torch.Tensor:
        logprobs = logits.log_softmax(dim=-1)
        index = targets.to(logits.device).expand(logits.shape[0], -1).unsqueeze(-1)
        return -logprobs.gather(-1, index).squeeze(-1).mean(-1)

    return Metric("loss", "mean next-token loss of the prompt", tuple(range(n_tokens - 1)), fn)


def custom(fn: MetricFn) -> Metric:
    """A user's callable over the full logits `[batch, pos, d_vocab]`."""
    name = getattr(fn, "__name__", "custom")
    return Metric("custom", f"custom metric {name}", None, fn)


def target_probability(
    name: str, token_ids: Sequence[int], value: float, last_logits: torch.Tensor
) -> float | None:
    """The model's probability of what a token metric scores, from the run's own numbers.

    `logprob`: exp(metric), the probability of all its target tokens together (one token: the
    softmax at the last position). `logit_diff`: the softmax of the answer at the last position
    (`last_logits`, the metric's own position). None for the loss and custom metrics, which score
    no one token.
    """
    if name == "logprob":
        return math.exp(value)
    if name == "logit_diff":
        return float(last_logits.float().softmax(-1)[token_ids[0]])
    return None


def rebuild(
    name: str,
    description: str,
    positions: Sequence[int] | None,
    token_ids: Sequence[int],
    tokens: torch.Tensor,
) -> Metric:
    """The metric a trace recorded (`MetricRecord`), for the model input `tokens` (`[1, T]`).

    A custom callable cannot be rebuilt from a record: pass it again where it is needed.
    """
    if name == "logprob":
        return token_logprob(token_ids, positions or (), description)
    if name == "logit_diff":
        (position,), (answer, contrast) = positions, token_ids
        return logit_difference(position, answer, contrast, description)
    if name == "loss":
        return mean_loss(tokens)
    raise ValueError(f"A {name!r} metric cannot be rebuilt from a trace; pass the metric itself.")
