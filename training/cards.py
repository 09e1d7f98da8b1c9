"""Offline feature cards: what each demo SAE feature responds to and what it promotes.

Neuronpedia has no pages for the demo SAEs, so the training script computes, for every feature, a
small card from held-out corpus text: its top-activating contexts (the activating token marked by
its index in the window), its density, and the output tokens its decoder direction promotes most.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

from training.evaluate import hook_activations, pad_tokens

N_CONTEXTS = 5
N_LOGITS = 5
TOKENS_BEFORE = 10
TOKENS_AFTER = 2


def _round(value: float) -> float:
    """Four significant figures: small but real activations must not round to zero."""
    return float(f"{value:.4g}")


@torch.no_grad()
def promoted_tokens(model: HookedTransformer, sae: SAE, k: int = N_LOGITS) -> list[list[Any]]:
    """Per feature, the k tokens whose logits its decoder direction raises most, with the amount.

    The final LayerNorm's gain is folded into W_U (as `fold_ln` does for GPT-2), so the numbers
    are the direct effect of a unit of the feature on the logits, up to the LayerNorm scale.
    """
    effective_unembed = model.ln_final.w[:, None] * model.W_U
    values, indices = (sae.W_dec @ effective_unembed).topk(k, dim=1)
    return [
        [[model.tokenizer.decode([i]), _round(v)] for i, v in zip(row_i.tolist(), row_v.tolist())]
        for row_i, row_v in zip(indices, values)
    ]


@torch.no_grad()
def feature_cards(
    model: HookedTransformer, sae: SAE, hook_name: str, texts: Sequence[str]
) -> dict[str, Any]:
    """Cards for every feature of `sae`, from `texts`, as one JSON-ready dict.

    BOS is left out of contexts and density (every text starts with the same BOS vector, which
    would crowd out real contexts); its activation is recorded on its own as `bos_activation`.
    """
    activations = hook_activations(model, texts, [hook_name], skip_bos=True)[hook_name]
    flat = sae.encode(activations)  # [token, feature]: texts in order, positions 1.. in each
    tokens, lengths = pad_tokens(model, texts)
    positions = torch.arange(tokens.shape[1])
    text_index, position = (
        (positions[None, :] < lengths[:, None]) & (positions[None, :] > 0)
    ).nonzero(as_tuple=True)
    bos = hook_activations(model, texts[:1], [hook_name], skip_bos=False)[hook_name][:1]
    bos_features = sae.encode(bos)[0]

    density = (flat > 0).float().mean(dim=0)
    top_values, top_rows = flat.topk(N_CONTEXTS, dim=0)  # [k, feature]
    str_tokens = [model.tokenizer.convert_ids_to_tokens(row.tolist()) for row in tokens]
    logits = promoted_tokens(model, sae)

    cards = []
    for feature in range(sae.cfg.d_sae):
        contexts = []
        for value, row in zip(top_values[:, feature].tolist(), top_rows[:, feature].tolist()):
            if value <= 0:
                break
            t, p = int(text_index[row]), int(position[row])
            start = max(1, p - TOKENS_BEFORE)
            end = min(int(lengths[t]), p + TOKENS_AFTER + 1)
            window = [
                model.tokenizer.convert_tokens_to_string([s]) for s in str_tokens[t][start:end]
            ]
            contexts.append({"tokens": window, "index": p - start, "activation": _round(value)})
        cards.append(
            {
                "density": round(density[feature].item(), 5),
                "bos_activation": _round(bos_features[feature].item()),
                "top_logits": logits[feature],
                "contexts": contexts,
            }
        )
    return {
        "hook_name": hook_name,
        "d_sae": sae.cfg.d_sae,
        "n_texts": len(texts),
        "n_tokens": len(flat),
        "features": cards,
    }
