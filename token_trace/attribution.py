"""The engine: metric gradients at the SAE hook points, and node attributions from them.

An SAE splits the activation at its hook into nodes, `x = sum_i f_i d_i + b_dec + e`: one node per
active feature `f_i` (decoder row `d_i`) and one error node `e` per position. With the metric's true
gradient `g = dm/dx` at the hook, the gradient along a feature is `d_i . g` and along the error `g`
itself, so attribution patching (Marks et al. 2024) needs no SAE in the forward pass at all: one
forward and one backward through the unmodified model give `g` at every hook at once, and each SAE
only encodes its activation. The estimate of `m(clean) - m(node patched)` is then
`(f_i - f_i') (d_i . g)` for a feature and `(e - e') . g` for an error, where the primes are the
baseline (zero, or a counterfactual prompt).

Integrated gradients replace `g` by its average over activations interpolated, one SAE layer at a
time, between the clean and the baseline activation (recomputing only the blocks above that layer).
The average is a quadrature over `alpha` in [0, 1]: the left Riemann sum of Sparse Feature Circuits
(`k / N`, whose first point is the clean gradient the AtP pass already has) or Gauss-Legendre.

Several prompts run as one right-padded batch (see `Batch`): one forward and one backward for all.
Results stay sparse: only active features get a row, and no `T x d_sae` gradient table is built.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from sae_lens import SAE

from token_trace.backend import Model
from token_trace.hook_names import block_index, resid_pre
from token_trace.hooks import final_residual, hooked, logits_at
from token_trace.metrics import Metric
from token_trace.options import IG_RULES, TraceOptions

# Node extraction uses sparse CSR kernels (see `_SparseRows`), which PyTorch labels beta with a
# warning on first use; they are exact, and the tests check every node against autograd.
warnings.filterwarnings(
    "ignore", message="Sparse CSR tensor support is in beta", category=UserWarning
)

#: Positions per `layer_nodes` call on a CPU: a padded batch can have thousands of positions, and
#: its dense `[positions, d_sae]` feature table then falls out of cache (measurements in
#: benchmarks/README.md). GPUs take them all at once.
CPU_CHUNK_POSITIONS = 256

#: Most interpolated positions (prompts x points x tokens) one IG pass runs on a CPU: it bounds the
#: activations held for the backward at no cost in time (benchmarks/README.md).
CPU_IG_TOKENS = 512


@dataclass(frozen=True)
class NodeTensors:
    """All nodes of all SAEs as flat, aligned 1-D tensors (error nodes have `feature == -1`)."""

    hook_index: torch.Tensor
    position: torch.Tensor
    feature: torch.Tensor
    activation: torch.Tensor
    baseline_activation: torch.Tensor
    gradient: torch.Tensor
    attribution: torch.Tensor

    @classmethod
    def concat(cls, parts: list[NodeTensors]) -> NodeTensors:
        return cls(*(torch.cat(column) for column in zip(*(vars(p).values() for p in parts))))

    def select(self, mask: torch.Tensor) -> NodeTensors:
        return NodeTensors(*(column[mask] for column in vars(self).values()))


@dataclass(frozen=True)
class Attribution:
    """What one engine run produces for one prompt: its nodes, its metric, its next-token logits."""

    hook_names: list[str]
    nodes: NodeTensors
    metric_value: float
    baseline_metric_value: float | None
    last_logits: torch.Tensor


@dataclass(frozen=True)
class Batch:
    """Prompts right-padded into one `[batch, T]` tensor, each with its own metric.

    Attention is causal, so padding after a prompt's last token never reaches its own positions:
    each row computes exactly what the prompt alone would, and its metric reads only its own
    positions (`lengths[b]` tokens).
    """

    tokens: torch.Tensor
    lengths: list[int]
    metrics: list[Metric]

    @classmethod
    def of(cls, prompts: Sequence[torch.Tensor], metrics: Sequence[Metric]) -> Batch:
        """Pad `[1, T_b]` token tensors (on one device) into a batch."""
        lengths = [int(t.shape[-1]) for t in prompts]
        tokens = prompts[0].new_zeros(len(prompts), max(lengths))
        for row, (prompt, length) in enumerate(zip(prompts, lengths)):
            tokens[row, :length] = prompt.reshape(-1)
        return cls(tokens, lengths, list(metrics))

    def valid(self) -> torch.Tensor:
        """`[batch, T]` mask of real (not padding) positions."""
        positions = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        lengths = torch.tensor(self.lengths, device=self.tokens.device)
        return positions < lengths.unsqueeze(1)

    def metric_values(self, model: Model, residual: torch.Tensor) -> torch.Tensor:
        """Each prompt's metric on `residual` (`[copies * batch, T, d_model]`), `[copies, batch]`.

        Rows are copy-major: row `c * batch + b` belongs to prompt `b`.
        """
        residual = residual.view(-1, len(self.lengths), *residual.shape[1:])
        values = [
            metric(logits_at(model, residual[:, row, :length], metric.positions))
            for row, (metric, length) in enumerate(zip(self.metrics, self.lengths))
        ]
        return torch.stack(values, dim=1)


@dataclass
class CapturedPass:
    """Activations (and gradients) captured at the hooks during one run, `[batch, T, ...]`."""

    metric: torch.Tensor
    acts: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    block_inputs: dict[int, torch.Tensor]
    last_logits: torch.Tensor


def capture_pass(
    model: Model,
    batch: Batch,
    tokens: torch.Tensor,
    hook_names: list[str],
    *,
    with_grads: bool,
    input_blocks: set[int] = frozenset(),
) -> CapturedPass:
    """One forward (and, with grads, one backward) pass capturing every hook at once.

    `tokens` are the batch's own tokens or its counterfactual twin (same lengths).
    """
    acts: dict[str, torch.Tensor] = {}
    block_inputs: dict[int, torch.Tensor] = {}

    def capture(act: torch.Tensor, name: str) -> torch.Tensor:
        if with_grads and not act.requires_grad:
            # Nothing upstream needs a gradient (frozen weights): make the hook a leaf.
            act = act.detach().requires_grad_(True)
        acts[name] = act
        return act

    def capture_resid(act: torch.Tensor, name: str) -> None:
        block_inputs[block_index(name)] = act.detach()

    fwd_hooks = [(name, capture) for name in hook_names]
    fwd_hooks += [(resid_pre(layer), capture_resid) for layer in input_blocks]
    with torch.set_grad_enabled(with_grads), hooked(model, fwd_hooks):
        residual = final_residual(model, tokens)
        values = batch.metric_values(model, residual)[0]
        with torch.no_grad():
            rows = torch.arange(len(batch.lengths), device=residual.device)
            last = torch.tensor(batch.lengths, device=residual.device) - 1
            last_logits = logits_at(model, residual[rows, last].unsqueeze(1), None)[:, 0]
        grads: dict[str, torch.Tensor] = {}
        if with_grads:
            inputs = [acts[name] for name in hook_names]
            found = torch.autograd.grad(values.sum(), inputs, allow_unused=True)
            for name, act, grad in zip(hook_names, inputs, found):
                grads[name] = torch.zeros_like(act) if grad is None else grad
    return CapturedPass(
        values.detach(),
        {name: act.detach() for name, act in acts.items()},
        grads,
        block_inputs,
        last_logits,
    )


def _points_per_pass(n_points: int, batch: Batch, device: torch.device) -> int:
    """How many interpolation points of one layer run together: all on a GPU; on a CPU, as few
    equal passes as keep each within `CPU_IG_TOKENS` (prompts x points x positions)."""
    if device.type != "cpu":
        return n_points
    tokens_per_point = len(batch.lengths) * batch.tokens.shape[1]
    n_passes = math.ceil(n_points * tokens_per_point / CPU_IG_TOKENS)
    return math.ceil(n_points / n_passes)


def quadrature(rule: str, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in [0, 1] and weights summing to 1 for `points` evaluations of the IG integrand.

    - "riemann": `k / points` for k = 0..points-1, each weighted `1 / points` (Sparse Feature
      Circuits' left sum; its first node, alpha = 0, is the clean gradient, which costs nothing);
    - "gauss-legendre": Legendre-Gauss nodes and weights mapped from [-1, 1] to [0, 1], exact for
      polynomials of degree `2 points - 1`; no node at an end.
    """
    if rule not in IG_RULES:
        raise ValueError(f"Unknown ig_rule {rule!r}: use one of {IG_RULES}.")
    if points < 1:
        raise ValueError("ig_steps must be at least 1.")
    if rule == "riemann":
        return np.arange(points) / points, np.full(points, 1.0 / points)
    nodes, weights = np.polynomial.legendre.leggauss(points)
    return (nodes + 1) / 2, weights / 2


def _integrated_gradient(
    model: Model,
    batch: Batch,
    hook_name: str,
    clean: torch.Tensor,
    clean_grad: torch.Tensor,
    patch: torch.Tensor,
    block_inputs: dict[int, torch.Tensor],
    steps: int,
    rule: str,
) -> torch.Tensor:
    """The metric gradient at `hook_name` averaged by `quadrature(rule, steps)` over the points
    `clean + alpha (patch - clean)`.

    A node at alpha = 0 is the clean activation, whose gradient the clean pass already has, so it
    is not run (Riemann with one step is attribution patching). The other points run as one batch
    of all prompts and points (on a CPU, a few). Only this hook's activation is interpolated;
    everything above it is recomputed and everything below stays clean, so the runs start at the
    hook's own block.
    """
    nodes, weights = quadrature(rule, steps)
    # The points and the average are float32 even for a bfloat16 model (whose blocks then read
    # each point rounded once): a bf16 sum of N gradients would lose the small ones.
    dtype = torch.promote_types(clean_grad.dtype, torch.float32)
    total = torch.zeros_like(clean_grad, dtype=dtype)
    if nodes[0] == 0:
        total += float(weights[0]) * clean_grad.to(dtype)
        nodes, weights = nodes[1:], weights[1:]
    if not len(nodes):
        return total
    alphas = torch.as_tensor(nodes, device=clean.device, dtype=dtype)
    weights = torch.as_tensor(weights, device=clean.device, dtype=dtype)
    start_point, step = clean.to(dtype), (patch - clean).to(dtype)
    layer = block_index(hook_name)
    per_pass = _points_per_pass(len(alphas), batch, clean.device)
    for chunk, chunk_weights in zip(alphas.split(per_pass), weights.split(per_pass)):
        copies = len(chunk)
        interpolated = start_point + chunk.view(-1, *([1] * clean.ndim)) * step
        interpolated.requires_grad_(True)

        def swap_in(act: torch.Tensor, name: str, points=interpolated) -> torch.Tensor:
            return points.flatten(0, 1).to(act.dtype)

        if layer is None:
            start, inputs = None, batch.tokens.repeat(copies, 1)
        else:
            start, inputs = layer, block_inputs[layer].repeat(copies, 1, 1)
        with torch.enable_grad(), hooked(model, [(hook_name, swap_in)]):
            residual = final_residual(model, inputs, start_at_layer=start)
            values = batch.metric_values(model, residual)
            (grad,) = torch.autograd.grad(values.sum(), interpolated)
        total += (chunk_weights.view(-1, *([1] * clean.ndim)) * grad).sum(0)
    return total


class _SparseRows:
    """The active entries of a `[pos, d_sae]` feature table as compressed rows (CSR).

    Gathering each active feature's decoder row (`W_dec[feature]`, one 768-wide row per node)
    and the gradient at its position cost three times the rest of node extraction on a CPU.
    Sparse kernels read the decoder rows in place instead: `sampled_addmm` gives every
    `d_i . g` at once (a product sampled at the active entries) and a sparse-dense product the
    reconstruction `f @ W_dec` (the speed-up is measured in benchmarks/README.md).
    """

    def __init__(self, position: torch.Tensor, feature: torch.Tensor, n_pos: int, d_sae: int):
        counts = torch.bincount(position, minlength=n_pos)
        self.crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.feature, self.size = feature, (n_pos, d_sae)

    def with_values(self, values: torch.Tensor) -> torch.Tensor:
        # Valid by construction (indices from `nonzero`, sorted by row): skip PyTorch's check.
        return torch.sparse_csr_tensor(
            self.crow, self.feature, values, self.size, check_invariants=False
        )


@torch.no_grad()
def layer_nodes(
    sae: SAE,
    hook_index: int,
    act: torch.Tensor,
    grad: torch.Tensor,
    baseline_act: torch.Tensor | None,
) -> NodeTensors:
    """Nodes of one SAE at every position: active features, then one error node per position.

    `act`, `grad` and `baseline_act` are `[pos, ...]` activations at the hook (flattened here).
    A feature is a node where it is active in the clean run or in the baseline run.

    Only the encode runs in the SAE's dtype; the decoder products run in the activation's dtype,
    at least fp32 (a bfloat16 model's activations and gradients are promoted first). With a
    bf16 SAE, `x = reconstruction + error` then still holds exactly in fp32 (the error node
    absorbs the encoder's rounding) and the gradients along features keep fp32 precision.
    """
    n_pos = act.shape[0]
    dtype = torch.promote_types(act.dtype, torch.float32)
    x = act.reshape(n_pos, -1).to(dtype)
    g = grad.reshape(n_pos, -1).to(dtype)
    decoder = sae.W_dec.to(dtype)
    b_dec = sae.b_dec.to(dtype)
    f = sae.encode(x.to(sae.dtype))
    base_x = None if baseline_act is None else baseline_act.reshape(n_pos, -1).to(dtype)
    f_base = None if base_x is None else sae.encode(base_x.to(sae.dtype))
    active = f != 0 if f_base is None else (f != 0) | (f_base != 0)
    position, feature = active.nonzero(as_tuple=True)
    rows = _SparseRows(position, feature, n_pos, f.shape[1])
    value = f[position, feature].to(dtype)
    base_value = torch.zeros_like(value) if f_base is None else f_base[position, feature].to(dtype)
    # Explicit entries count even where a value is 0 (a feature active only in the baseline).
    clean = rows.with_values(value)
    feature_grad = torch.sparse.sampled_addmm(clean, g, decoder.T, beta=0.0).values()

    error = x - (clean @ decoder + b_dec)
    if base_x is None:
        base_error = torch.zeros_like(error)
    else:
        base_error = base_x - (rows.with_values(base_value) @ decoder + b_dec)
    error_norm = error.norm(dim=-1)
    error_grad = (error * g).sum(-1) / error_norm.clamp_min(torch.finfo(error.dtype).tiny)
    error_attr = ((error - base_error) * g).sum(-1)

    all_pos = torch.arange(n_pos, device=x.device)
    n_feat = position.shape[0]
    return NodeTensors(
        hook_index=torch.full((n_feat + n_pos,), hook_index, device=x.device),
        position=torch.cat([position, all_pos]),
        feature=torch.cat([feature, torch.full_like(all_pos, -1)]),
        activation=torch.cat([value, error_norm]).float(),
        baseline_activation=torch.cat([base_value, base_error.norm(dim=-1)]).float(),
        gradient=torch.cat([feature_grad, error_grad]).float(),
        attribution=torch.cat([(value - base_value) * feature_grad, error_attr]).float(),
    )


def _chunked_layer_nodes(
    sae: SAE,
    hook_index: int,
    act: torch.Tensor,
    grad: torch.Tensor,
    baseline_act: torch.Tensor | None,
) -> NodeTensors:
    """`layer_nodes` over at most `CPU_CHUNK_POSITIONS` positions at a time on a CPU (every
    node belongs to one position, so the chunks' nodes are exactly the whole's)."""
    chunk = CPU_CHUNK_POSITIONS if act.device.type == "cpu" else act.shape[0]
    parts = []
    for start in range(0, act.shape[0], chunk):
        part = layer_nodes(
            sae,
            hook_index,
            act[start : start + chunk],
            grad[start : start + chunk],
            None if baseline_act is None else baseline_act[start : start + chunk],
        )
        parts.append(replace(part, position=part.position + start))
    return NodeTensors.concat(parts)


@dataclass(frozen=True)
class AttributionRun:
    """One engine run: a result per prompt, and the passes it captured (activations and gradients
    at every SAE hook, and the embedding entering block 0), for callers that go on from the same
    run, such as graphs."""

    results: list[Attribution]
    clean: CapturedPass
    baseline: CapturedPass | None
    #: What the run ran on, so callers going on from it (graphs) never resolve them again.
    model: Model
    saes: Mapping[str, SAE]


def attribute(
    model: Model,
    saes: Mapping[str, SAE],
    batch: Batch,
    options: TraceOptions | None = None,
    *,
    baseline_tokens: torch.Tensor | None = None,
) -> AttributionRun:
    """Attribute each prompt's metric to every node of every SAE in `saes`, one result per prompt.

    All prompts share one forward and one backward pass (and, for IG, one batch per SAE layer);
    `baseline_tokens` are counterfactual prompts padded like `batch.tokens`. `options` gives the
    method and its steps (checked when the record was made).
    """
    options = options or TraceOptions()
    method, ig_steps, ig_rule = options.method, options.ig_steps, options.ig_rule
    hook_names = list(saes)
    layers = {block_index(name) for name in hook_names} - {None}
    clean = capture_pass(
        model,
        batch,
        batch.tokens,
        hook_names,
        with_grads=True,
        input_blocks=(layers if method == "ig" else set()) | {0},
    )
    baseline = None
    if baseline_tokens is not None:
        baseline = capture_pass(
            model, batch, baseline_tokens, hook_names, with_grads=False, input_blocks={0}
        )

    valid = batch.valid()
    prompt_of, position_of = valid.nonzero(as_tuple=True)
    parts = []
    for index, name in enumerate(hook_names):
        sae = saes[name]
        act = clean.acts[name]
        base_act = None if baseline is None else baseline.acts[name]
        grad = clean.grads[name]
        if method == "ig":
            # The zero baseline sets every feature and the error to 0, leaving x = b_dec.
            patch = base_act if base_act is not None else sae.b_dec.to(act.dtype).expand_as(act)
            patch = patch.reshape(act.shape)
            grad = _integrated_gradient(
                model, batch, name, act, grad, patch, clean.block_inputs, ig_steps, ig_rule
            )
        parts.append(
            _chunked_layer_nodes(
                sae, index, act[valid], grad[valid], None if base_act is None else base_act[valid]
            )
        )
    # layer_nodes numbers positions within the flattened real positions of all prompts.
    nodes = NodeTensors.concat(parts)
    node_prompt = prompt_of[nodes.position]
    nodes = replace(nodes, position=position_of[nodes.position])
    results = [
        Attribution(
            hook_names=hook_names,
            nodes=nodes.select(node_prompt == row),
            metric_value=float(clean.metric[row]),
            baseline_metric_value=None if baseline is None else float(baseline.metric[row]),
            last_logits=clean.last_logits[row],
        )
        for row in range(len(batch.lengths))
    ]
    return AttributionRun(results, clean, baseline, model, saes)
