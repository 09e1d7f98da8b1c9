"""Metrics: the scalar whose dependence on each node we measure.

A metric reads logits at a few positions only. The engine exploits that: it runs the model up to the
final residual stream and unembeds just those positions, which saves the largest matrix product of
GPT-2 (d_model x 50257) at every other position, forward and backward.

Every metric is batched (logits `[batch, n_positions, d_vocab]` in, values `[batch]` out) so that
integrated gradients can evaluate all interpolation steps in one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

MetricFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Metric:
    """A batched scalar function of the logits at `positions` (all positions when None)."""

    name: str
    description: str
    positions: tuple[int, ...] | None
    fn: MetricFn

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

    return Metric("logprob", description, tuple(positions), fn)


def logit_difference(position: int, answer: int, contrast: int, description: str) -> Metric:
    """logit(answer) - logit(contrast) at one position: the IOI-style metric, free of softmax."""

    def fn(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0, answer] - logits[:, 0, contrast]

    return Metric("logit_diff", description, (position,), fn)


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
