"""Quality measures of the demo model and its SAEs, shared by the training script and the tests.

The bars they check (held-out IOI accuracy, SAE variance explained and L0, accuracy with every SAE
spliced in) are what make the bundled model worth tracing, so the tests recompute them from the
shipped weights rather than trusting the numbers the training script wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from training.corpus import IOIExample

ForwardHook = tuple[str, Callable[[torch.Tensor, HookPoint], torch.Tensor]]


def pad_tokens(model: HookedTransformer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """BOS-prefixed tokens of `texts`, right-padded into one batch, and each row's length.

    Right padding leaves every real position's activations exactly as in an unpadded run (causal
    attention never looks at the padding that follows).
    """
    assert model.tokenizer is not None
    ids = model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows = [torch.tensor([model.tokenizer.bos_token_id, *row]) for row in ids]
    tokens = torch.nn.utils.rnn.pad_sequence(
        rows, batch_first=True, padding_value=model.tokenizer.pad_token_id
    )
    lengths = torch.tensor([len(row) for row in rows])
    return tokens.to(model.cfg.device), lengths.to(model.cfg.device)


@dataclass(frozen=True)
class IOIScore:
    """Top-1 accuracy on the indirect object, and the mean logit difference IO - S."""

    accuracy: float
    logit_diff: float


@torch.no_grad()
def ioi_score(
    model: HookedTransformer, examples: Sequence[IOIExample], hooks: Sequence[ForwardHook] = ()
) -> IOIScore:
    """Score the model's next-token prediction at the end of each IOI prompt."""
    tokens, lengths = pad_tokens(model, [example.prompt for example in examples])
    logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))
    final = logits[torch.arange(len(examples)), lengths - 1]
    io = torch.tensor([model.to_single_token(e.answer) for e in examples])
    s = torch.tensor([model.to_single_token(" " + e.s_name) for e in examples])
    correct = final.argmax(dim=-1) == io
    diff = final.gather(1, io[:, None]) - final.gather(1, s[:, None])
    return IOIScore(accuracy=correct.float().mean().item(), logit_diff=diff.mean().item())


@torch.no_grad()
def next_token_accuracy(model: HookedTransformer, prompts: Sequence[tuple[str, str]]) -> float:
    """Fraction of (prompt, answer) pairs whose answer is the model's top-1 next token."""
    tokens, lengths = pad_tokens(model, [prompt for prompt, _ in prompts])
    final = model(tokens)[torch.arange(len(prompts)), lengths - 1]
    answers = torch.tensor([model.to_single_token(answer) for _, answer in prompts])
    return (final.argmax(dim=-1) == answers).float().mean().item()


def splice_hooks(saes: dict[str, SAE]) -> list[ForwardHook]:
    """Forward hooks that replace each hooked activation by its SAE reconstruction (no error
    term), so the rest of the model sees only what the features encode."""

    def replace_with(sae: SAE) -> Callable[[torch.Tensor, HookPoint], torch.Tensor]:
        return lambda activation, hook: sae.decode(sae.encode(activation))

    return [(hook_name, replace_with(sae)) for hook_name, sae in saes.items()]


@torch.no_grad()
def hook_activations(
    model: HookedTransformer,
    texts: Sequence[str],
    hook_names: Sequence[str],
    skip_bos: bool,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Activations at `hook_names` for every real token of `texts`, as [tokens, d_model] each.

    Batched so that memory stays small however many texts there are (the logits are the big part).
    """
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in hook_names}
    for start in range(0, len(texts), batch_size):
        tokens, lengths = pad_tokens(model, texts[start : start + batch_size])
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        keep = positions[None, :] < lengths[:, None]
        if skip_bos:
            keep &= positions[None, :] > 0
        _, cache = model.run_with_cache(
            tokens, names_filter=list(hook_names), stop_at_layer=_last_layer(hook_names) + 1
        )
        for name in hook_names:
            chunks[name].append(cache[name][keep])
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def _last_layer(hook_names: Sequence[str]) -> int:
    """The deepest block index among `blocks.L.*` hook names: later blocks need not run."""
    return max(int(name.split(".")[1]) for name in hook_names)


@dataclass(frozen=True)
class SAEScore:
    """Fraction of variance explained by the reconstruction, and mean number of active features."""

    fve: float
    l0: float


@torch.no_grad()
def sae_score(sae: SAE, activations: torch.Tensor) -> SAEScore:
    features = sae.encode(activations)
    reconstruction = sae.decode(features)
    residual = (activations - reconstruction).pow(2).sum()
    total = (activations - activations.mean(dim=0)).pow(2).sum()
    return SAEScore(
        fve=(1 - residual / total).item(), l0=(features > 0).float().sum(-1).mean().item()
    )


def sae_scores(
    model: HookedTransformer, saes: dict[str, SAE], texts: Sequence[str]
) -> dict[str, SAEScore]:
    """Score every SAE on `texts`, BOS excluded: BOS is one fixed, outsized vector that any SAE
    reconstructs trivially, and counting it would flatter the numbers."""
    activations = hook_activations(model, texts, list(saes), skip_bos=True)
    return {name: sae_score(sae, activations[name]) for name, sae in saes.items()}
