"""Training standard ReLU SAEs on the demo model's residual stream, saved as SAELens SAEs.

A plain loop rather than SAELens's trainer: the activations fit in memory, and a dozen lines of
maths are easier to audit (and to keep deterministic) than a training runner's configuration.
The result is converted to a real `StandardSAE` and written with `save_model`, so loading goes
through SAELens's own disk loader exactly like a downloaded release.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from token_trace.demo.model import MODEL_NAME


@dataclass(frozen=True)
class SAESettings:
    """Hyperparameters shared by every hook point's SAE."""

    d_sae: int = 512
    l1_coefficient: float = 5.0
    steps: int = 2000
    batch_size: int = 2048
    lr: float = 1e-3
    # Features silent over a whole window are re-pointed at badly reconstructed inputs.
    resample_at: tuple[int, ...] = (500, 1000)


@dataclass
class _Weights:
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor

    def parameters(self) -> list[torch.Tensor]:
        return [self.W_enc, self.b_enc, self.W_dec, self.b_dec]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec


def _init_weights(x: torch.Tensor, d_sae: int, generator: torch.Generator) -> _Weights:
    d_in = x.shape[1]
    W_dec = torch.randn(d_sae, d_in, generator=generator)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    return _Weights(
        W_enc=W_dec.T.clone().requires_grad_(),
        b_enc=torch.zeros(d_sae, requires_grad=True),
        W_dec=W_dec.requires_grad_(),
        b_dec=x.mean(dim=0).clone().requires_grad_(),
    )


@torch.no_grad()
def _resample_dead(
    weights: _Weights, x: torch.Tensor, dead: torch.Tensor, generator: torch.Generator
) -> None:
    """Point dead features at inputs the SAE reconstructs worst (sampled by squared error)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return
    sample = x[torch.randint(len(x), (16384,), generator=generator)]
    error = (sample - weights.decode(weights.encode(sample))).pow(2).sum(-1)
    chosen = sample[torch.multinomial(error, n_dead, replacement=True, generator=generator)]
    directions = chosen - weights.b_dec
    directions /= directions.norm(dim=1, keepdim=True)
    alive_norm = weights.W_enc[:, ~dead].norm(dim=0).mean() if (~dead).any() else 1.0
    weights.W_dec[dead] = directions
    weights.W_enc[:, dead] = directions.T * alive_norm * 0.2
    weights.b_enc[dead] = 0.0


def _train(x: torch.Tensor, settings: SAESettings, generator: torch.Generator) -> _Weights:
    """Minimise ||x - x_hat||^2 + l1 * sum(f) with unit-norm decoder rows (so the L1 penalty
    cannot be dodged by shrinking f and growing the decoder)."""
    weights = _init_weights(x, settings.d_sae, generator)
    optimizer = torch.optim.Adam(weights.parameters(), lr=settings.lr)
    # Constant rate, then a linear decay to zero over the last fifth, which settles the weights.
    decay_start = int(0.8 * settings.steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (settings.steps - step) / (settings.steps - decay_start))
    )
    fired = torch.zeros(settings.d_sae, dtype=torch.bool)
    for step in range(settings.steps):
        batch = x[torch.randint(len(x), (settings.batch_size,), generator=generator)]
        f = weights.encode(batch)
        mse = (weights.decode(f) - batch).pow(2).sum(-1).mean()
        loss = mse + settings.l1_coefficient * f.sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            weights.W_dec /= weights.W_dec.norm(dim=1, keepdim=True)
            fired |= (f > 0).any(dim=0)
        if step + 1 in settings.resample_at:
            _resample_dead(weights, x, ~fired, generator)
            fired.zero_()
    _refit_decoder(weights, x)
    return weights


@torch.no_grad()
def _refit_decoder(weights: _Weights, x: torch.Tensor) -> None:
    """Least-squares decoder (and bias) for the trained encoder's features.

    The L1 penalty shrinks every activation towards zero, so the trained decoder under-reconstructs;
    refitting it with the features held fixed removes that shrinkage without changing which
    features fire (the encoder bias is adjusted so that moving b_dec leaves the features as they
    are). The model stays a standard ReLU SAE.
    """
    features = weights.encode(x)
    live = (features > 0).any(dim=0)  # a never-firing feature keeps its (unit) direction
    design = torch.cat([features[:, live], torch.ones(len(x), 1)], dim=1)
    gram = design.T @ design
    ridge = 1e-4 * gram.diagonal().mean() * torch.eye(len(gram))
    solution = torch.linalg.solve(gram + ridge, design.T @ x)
    new_b_dec = solution[-1]
    weights.b_enc += (new_b_dec - weights.b_dec) @ weights.W_enc
    weights.W_dec[live] = solution[:-1]
    weights.b_dec.copy_(new_b_dec)


def train_sae(
    activations: torch.Tensor, hook_name: str, settings: SAESettings, seed: int
) -> StandardSAE:
    """Train one SAE on [tokens, d_in] activations and return it as a SAELens `StandardSAE`.

    Training sees the activations scaled to mean norm sqrt(d_in), so one L1 coefficient suits
    every layer; the scale is then folded into the weights (SAELens's own fold) and decoder rows
    are made unit norm, so the saved SAE takes raw activations with `normalize_activations="none"`.
    """
    generator = torch.Generator().manual_seed(seed)
    d_in = activations.shape[1]
    scale = math.sqrt(d_in) / activations.norm(dim=1).mean().item()
    weights = _train(activations * scale, settings, generator)

    cfg = StandardSAEConfig(
        d_in=d_in,
        d_sae=settings.d_sae,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="none",
        metadata=SAEMetadata(
            model_name=MODEL_NAME,
            hook_name=hook_name,
            hook_head_index=None,
            neuronpedia_id=None,
            prepend_bos=True,
            context_size=64,
            dataset_path="token_trace.demo.corpus (synthetic)",
        ),
    )
    sae = StandardSAE(cfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(getattr(weights, name))
    sae.fold_activation_norm_scaling_factor(scale)
    sae.fold_W_dec_norm()
    return sae.eval()


def save_sae(sae: StandardSAE, directory: Path) -> None:
    """Write `cfg.json` and `sae_weights.safetensors`, the layout `SAE.load_from_disk` reads."""
    sae.save_model(directory)
