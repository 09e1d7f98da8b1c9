"""Train the bundled demo model and its SAEs, and write everything under `token_trace/demo/weights`.

Rerun with::

    python -m training.train              # from the repository root
    python -m training.train --out DIR    # to write elsewhere

Steps: generate the seeded corpus, build the tokenizer over its vocabulary, train the transformer,
train one SAE per hook point (every `hook_resid_pre` and the last `hook_resid_post`) on the model's
activations, compute feature cards, then measure everything on held-out data and write
`metrics.json`. Every random choice comes from `SEED` (Python `random.Random` for the corpus, torch
generators for weights and batches) and torch runs on `THREADS` CPU threads, so a rerun on the same
software versions reproduces the shipped files; on other hardware or versions, float rounding can
differ slightly, but the quality bars are met with margin (see `metrics.json`).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens import SAE
from tokenizers import Tokenizer
from transformer_lens import HookedTransformer

from token_trace.demo import WEIGHTS_DIR
from token_trace.demo.model import load_model
from token_trace.demo.tokenizer import END_OF_TEXT, load_tokenizer
from token_trace.hook_names import residual_hooks
from training import cards, corpus, evaluate
from training.sae import (
    SAESettings,
    SpliceSettings,
    finetune_spliced,
    save_sae,
    train_sae,
)
from training.transformer import demo_config, save_model
from training.word_tokenizer import build_tokenizer

SEED = 0
THREADS = 2
DEFAULT_OUT = WEIGHTS_DIR

# Evaluation and card data: IOI from the held-out split; fixed seeds distinct from training's.
N_HELDOUT_IOI = 1000
N_HELDOUT_TEXTS = 2000
N_CARD_TEXTS = 4000
N_SAE_TRAIN_TEXTS = 8000


@dataclass(frozen=True)
class ModelSettings:
    """Transformer training hyperparameters."""

    n_layers: int = 3
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    # The loss is over whole documents; the IOI answer token counts this many times more, since it
    # is the one token of an IOI sentence that needs the circuit the demo exists to show.
    answer_weight: float = 5.0


MODEL_SETTINGS = ModelSettings()
SAE_SETTINGS = SAESettings()
SPLICE_SETTINGS = SpliceSettings()


def _batches(
    tokenizer: Tokenizer, rng: random.Random, batch_size: int, answer_weight: float
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (tokens, loss weights) batches of BOS-prefixed, right-padded training documents.

    Documents are drawn 16 batches at a time and grouped by length, so little compute goes into
    padding; the order of the groups is shuffled.
    """
    bos = tokenizer.token_to_id(END_OF_TEXT)
    while True:
        documents = [corpus.corpus_document(rng) for _ in range(16 * batch_size)]
        encodings = tokenizer.encode_batch([d.text for d in documents])
        order = sorted(range(len(documents)), key=lambda i: len(encodings[i].ids))
        groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        rng.shuffle(groups)
        for group in groups:
            width = max(len(encodings[i].ids) for i in group) + 1
            tokens = torch.full((len(group), width), bos, dtype=torch.long)
            weights = torch.zeros(len(group), width - 1)
            for row, i in enumerate(group):
                ids = encodings[i].ids
                tokens[row, 1 : len(ids) + 1] = torch.tensor(ids)
                weights[row, : len(ids)] = 1.0
                if documents[i].pattern == "ioi":  # column k scores ids[k]; ids[-2] is the name
                    weights[row, len(ids) - 2] = answer_weight
            yield tokens, weights


def train_model(tokenizer: Tokenizer, settings: ModelSettings) -> HookedTransformer:
    """Next-token training on the corpus with AdamW, linear warm-up and cosine decay to 10%."""
    torch.manual_seed(SEED)
    model = HookedTransformer(
        demo_config(tokenizer.get_vocab_size(), n_layers=settings.n_layers, seed=SEED)
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, betas=(0.9, 0.98), weight_decay=settings.weight_decay
    )

    def lr_factor(step: int) -> float:
        warmup = min(1.0, (step + 1) / settings.warmup_steps)
        return warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * step / settings.steps)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    batches = _batches(tokenizer, random.Random(SEED), settings.batch_size, settings.answer_weight)
    model.train()
    for step in range(settings.steps):
        tokens, weights = next(batches)
        logits = model(tokens)[:, :-1]
        losses = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
        loss = (losses * weights).sum() / weights.sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == settings.steps - 1:
            print(f"  step {step:5d}  loss {loss.item():.3f}", flush=True)
    return model.eval()


def train_saes(model: HookedTransformer, tokenizer: Tokenizer, out: Path) -> None:
    """Train one SAE per hook point (stage 1), fine-tune them spliced together (stage 2), save."""
    names = residual_hooks(model.cfg.n_layers)
    texts = corpus.corpus_texts(N_SAE_TRAIN_TEXTS, seed=SEED + 1)
    activations = evaluate.hook_activations(model, texts, names, skip_bos=False)
    saes = {}
    for index, name in enumerate(names):
        saes[name] = train_sae(activations[name], name, SAE_SETTINGS, seed=SEED + index)
        print(f"  stage 1: {name}", flush=True)
    variances = {
        name: (x - x.mean(dim=0)).pow(2).sum(-1).mean().item() for name, x in activations.items()
    }
    batches = _batches(
        tokenizer,
        random.Random(SEED + 5),
        SPLICE_SETTINGS.batch_size,
        MODEL_SETTINGS.answer_weight,
    )
    finetune_spliced(model, saes, batches, variances, SPLICE_SETTINGS)
    print("  stage 2: spliced fine-tuning", flush=True)
    for name, sae in saes.items():
        save_sae(sae, out / "saes" / name)


def measure(model: HookedTransformer, saes: dict[str, SAE]) -> dict[str, Any]:
    """Every quality number the issue asks for, on held-out data."""
    heldout = corpus.heldout_ioi_examples(N_HELDOUT_IOI)
    rng = random.Random(SEED + 2)
    in_distribution = [corpus.ioi_example(rng, "train") for _ in range(N_HELDOUT_IOI)]
    clean = evaluate.ioi_score(model, heldout)
    spliced = evaluate.ioi_score(model, heldout, evaluate.splice_hooks(saes))
    texts = corpus.corpus_texts(N_HELDOUT_TEXTS, seed=SEED + 3, split="heldout")
    return {
        "heldout_ioi": {"n": len(heldout), **asdict(clean)},
        "heldout_ioi_all_saes_spliced": asdict(spliced),
        "train_shape_ioi": asdict(evaluate.ioi_score(model, in_distribution)),
        "fact_accuracy": evaluate.next_token_accuracy(model, corpus.fact_prompts()),
        "induction_accuracy": evaluate.next_token_accuracy(model, corpus.induction_prompts(500)),
        "saes": {
            name: asdict(score) for name, score in evaluate.sae_scores(model, saes, texts).items()
        },
    }


def _size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    out: Path = parser.parse_args().out
    torch.set_num_threads(THREADS)
    timings: dict[str, Any] = {}
    start = time.perf_counter()

    print("tokenizer", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus.vocabulary())
    tokenizer.save(str(out / "tokenizer.json"))

    print("model", flush=True)
    save_model(train_model(tokenizer, MODEL_SETTINGS), out)
    timings["model_s"] = time.perf_counter() - start
    # From here on, everything uses the files as shipped.
    model = load_model(out, load_tokenizer(out / "tokenizer.json"))

    print("SAEs", flush=True)
    sae_start = time.perf_counter()
    train_saes(model, tokenizer, out)
    timings["saes_s"] = time.perf_counter() - sae_start
    names = residual_hooks(model.cfg.n_layers)
    saes = {name: SAE.load_from_disk(out / "saes" / name) for name in names}

    print("feature cards", flush=True)
    card_start = time.perf_counter()
    card_texts = corpus.corpus_texts(N_CARD_TEXTS, seed=SEED + 4, split="heldout")
    (out / "feature_cards").mkdir(exist_ok=True)
    for name, sae in saes.items():
        card = cards.feature_cards(model, sae, name, card_texts)
        (out / "feature_cards" / f"{name}.json").write_text(json.dumps(card, separators=(",", ":")))
    timings["cards_s"] = time.perf_counter() - card_start

    print("metrics", flush=True)
    metrics = measure(model, saes)
    timings["total_s"] = time.perf_counter() - start
    metrics.update(
        seed=SEED,
        threads=THREADS,
        rerun="python -m training.train",
        model_settings=asdict(MODEL_SETTINGS),
        sae_settings=asdict(SAE_SETTINGS),
        splice_settings=asdict(SPLICE_SETTINGS),
        timings=timings,
    )
    metrics["shipped_mb"] = _size_mb(out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
