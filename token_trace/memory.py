"""Will a model and its SAEs fit this device? A memory estimate made before anything is loaded.

The estimate adds, in bytes:

- `weights`: every parameter and buffer of the TransformerLens model in its dtype, counted by
  building the model on PyTorch's `meta` device from TransformerLens's own config (no weights
  are read; TransformerLens keeps the unembedding apart from the embedding, so tied checkpoints
  count twice, as they are held);
- `saes`: encoder, decoder and biases of each SAE asked for, in the SAE dtype;
- `activations`: what one attribution-patching pass keeps for its backward at `n_tokens` tokens
  (each block's residual-width, head-width and MLP-width tensors, and its attention scores), one
  block's gradients, the hooks' gradients and one SAE's dense feature table at a time;
- `graph`: one batched pull-back of `SEED_BATCH` seeds through the blocks between two SAE hooks
  (the graph's only large buffer), when a graph of `max_nodes` nodes is asked for;
- `runtime`: what the process holds before loading (Python, PyTorch, TransformerLens, SAELens and
  Gradio on a CPU; the CUDA context on a GPU).

The per-token coefficients are counts of the tensors TransformerLens's blocks save, scaled by
`ACTIVATION_FACTOR`, which `benchmarks/bench_memory.py` checks against measured peaks (README:
"Memory: what fits where"). The budget is `TOKEN_TRACE_MEMORY_GB` when set, else the device's
own memory (`memory_budget`).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer, HookedTransformerConfig

from token_trace import loading
from token_trace.hook_names import block_index, residual_depth

GIB = 2**30
#: Environment variable: the memory (GB, 2^30 bytes) one deployment may use; unset, the device's.
MEMORY_ENV = "TOKEN_TRACE_MEMORY_GB"
#: Seeds per batched backward of a graph (`token_trace.graph.SEED_BATCH`, read there).
SEED_BATCH = 64
#: Positions per node-extraction chunk on a CPU (`attribution.CPU_CHUNK_POSITIONS`).
CPU_CHUNK = 256
#: Tensors of residual width, head width (per head) and MLP width one block saves per token for
#: its backward (TransformerLens: resid pre/mid/post, two norms and their scales, attention and
#: MLP outputs; q, k, v, z; MLP pre- and post-activation, three of them when gated), and attention
#: tensors per head per token pair (scores, pattern).
RESIDUAL_TENSORS, HEAD_TENSORS, MLP_TENSORS, GATED_MLP_TENSORS, ATTENTION_TENSORS = 10, 4, 2, 3, 2
#: Safety factor on the trace's activation terms (allocator slack, temporaries the counts miss);
#: the graph's term needs none (measured). The README gives the estimate's measured error.
ACTIVATION_FACTOR = 1.5
#: Process memory before loading, measured on this project's CPU machine (`python
#: benchmarks/bench_memory.py --runtime`: importing token_trace's pipeline, graph and app service
#: with Gradio); on a GPU, the CUDA context's device memory (PyTorch's is 0.3-0.5 GiB on recent
#: GPUs; not measured here).
CPU_RUNTIME_BYTES = int(0.6 * GIB)
CUDA_RUNTIME_BYTES = int(0.5 * GIB)
#: ZeroGPU's default slice: `spaces`'s `ZEROGPU_CUDA_TOTAL_MEMORY` (74,625,056,768 bytes, the
#: "70GB per workload" of the Hugging Face ZeroGPU docs: half an H200, MIG 3g.71gb).
ZEROGPU_BYTES = 74_625_056_768
#: Widths of releases whose SAE ids do not say it, used only when neither the SAEs nor their
#: configs can be read (offline, nothing cached): from the releases' documentation.
DOCUMENTED_WIDTHS = {
    "gpt2-small-res-jb": 24576,  # 32 x 768 (Bloom's res-jb)
    "pythia-70m-deduped-res-sm": 32768,  # 64 x 512 (Marks et al.'s dictionaries)
    "gpt2-small-res_sll-ajt": 46080,  # 60 x 768 (Braun et al.'s e2e SAEs; not checked here)
}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model: its sizes and its stored elements."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    d_vocab: int
    gated_mlp: bool
    n_elements: int  # parameters and floating-point buffers, as TransformerLens holds them

    @classmethod
    def of(cls, model: HookedTransformer) -> ModelShape:
        """The shape of a built (or meta) model."""
        tensors = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
        return cls._from_cfg(model.cfg, sum(t.numel() for t in tensors))

    @classmethod
    def _from_cfg(cls, cfg: HookedTransformerConfig, n_elements: int) -> ModelShape:
        return cls(
            n_layers=cfg.n_layers,
            d_model=cfg.d_model,
            d_mlp=cfg.d_mlp or 0,
            n_heads=cfg.n_heads,
            d_head=cfg.d_head,
            d_vocab=cfg.d_vocab_out if cfg.d_vocab_out > 0 else cfg.d_vocab,
            gated_mlp=bool(cfg.gated_mlp),
            n_elements=n_elements,
        )


@dataclass(frozen=True)
class SAEShape:
    """One SAE's hook and sizes."""

    hook_name: str
    d_in: int
    d_sae: int

    @classmethod
    def of(cls, sae: SAE) -> SAEShape:
        return cls(sae.cfg.metadata.hook_name, sae.cfg.d_in, sae.cfg.d_sae)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a request needs, by part (see the module docstring)."""

    weights: int
    saes: int
    activations: int
    graph: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.saes + self.activations + self.graph + self.runtime

    def describe(self) -> str:
        parts = {
            "model": self.weights,
            "SAEs": self.saes,
            "activations": self.activations,
            "graph": self.graph,
            "runtime": self.runtime,
        }
        shown = ", ".join(f"{name} {gib(size)}" for name, size in parts.items() if size)
        return f"{gib(self.total)} ({shown})"


def gib(size: float) -> str:
    """A size in GB (2^30 bytes), or in MB below a tenth of a GB."""
    return f"{size / GIB:.1f} GB" if size >= GIB / 10 else f"{size / 2**20:.0f} MB"


def _bytes_of(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


def estimate(
    model: ModelShape,
    saes: Sequence[SAEShape],
    n_tokens: int,
    *,
    device: str = "cpu",
    model_dtype: str = "float32",
    sae_dtype: str = "float32",
    max_nodes: int | None = None,
) -> MemoryEstimate:
    """The memory of one prompt of `n_tokens` tokens with these SAEs on `device`, with a graph
    of `max_nodes` nodes when given (None: the trace alone)."""
    width = _bytes_of(model_dtype)
    on_cpu = torch.device(device).type == "cpu"
    mlp = GATED_MLP_TENSORS if model.gated_mlp else MLP_TENSORS
    per_token = (
        RESIDUAL_TENSORS * model.d_model
        + HEAD_TENSORS * model.n_heads * model.d_head
        + mlp * model.d_mlp
    )
    block = (n_tokens * per_token + ATTENTION_TENSORS * model.n_heads * n_tokens**2) * width
    widest = max((shape.d_sae for shape in saes), default=0)
    chunk = min(n_tokens, CPU_CHUNK) if on_cpu else n_tokens
    activations = (
        (model.n_layers + 2) * block  # saved for the backward, and one block's gradients
        + len(saes) * n_tokens * model.d_model * (width + 4)  # hook gradients, fp32 copies
        + 4 * chunk * widest * 4  # one SAE's pre-activations, features, mask, products
    )
    graph = 0
    if max_nodes is not None and saes:
        seeds = min(SEED_BATCH, max_nodes)
        graph = seeds * block * max(_blocks_between(saes), 1)  # the seeds' batched gradients
    return MemoryEstimate(
        weights=model.n_elements * width,
        saes=sum(2 * s.d_in * s.d_sae + s.d_sae + s.d_in for s in saes) * _bytes_of(sae_dtype),
        activations=int(ACTIVATION_FACTOR * activations),
        graph=graph,
        runtime=CPU_RUNTIME_BYTES if on_cpu else CUDA_RUNTIME_BYTES,
    )


def _blocks_between(saes: Sequence[SAEShape]) -> int:
    """The most blocks between two consecutive SAE hooks (and below the first)."""
    depths = sorted({residual_depth(s.hook_name) for s in saes})
    return max(b - a for a, b in zip([0, *depths], depths)) if depths else 0


def most_tokens(fits: Callable[[int], bool], limit: int) -> int:
    """The largest n in [0, limit] with `fits(n)` (memory grows with n), by bisection."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


# --------------------------------------------------------------------------- shapes by name


@functools.lru_cache(maxsize=16)
def model_shape(name: str, release: str | None = None) -> ModelShape:
    """A named model's shape without its weights: TransformerLens's config for it (hard-coded
    for Gemma; read through transformers' AutoConfig for GPT-2 and Pythia, so from the hub or the
    local Hugging Face cache) built on the `meta` device. Bundled models are loaded (they are
    small). A ValueError says when the config cannot be read."""
    if loading.is_bundled(name):
        return ModelShape.of(loading.load_model(name, "cpu"))
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    loading.hub_online()
    official = loading.canonical_model_name(name)
    kwargs = loading.model_kwargs_for_release(release) if release else {}
    try:
        cfg = get_pretrained_model_config(
            official, fold_ln=bool(kwargs.get("fold_ln", True)), device="meta"
        )
    except Exception as error:  # transformers raises many types for a config it cannot fetch
        raise ValueError(
            f"Cannot estimate the memory of {name!r}: its config could not be read "
            f"({type(error).__name__}: {loading.first_line(error)})."
        ) from error
    cfg = replace_tokenizer(cfg)
    with torch.device("meta"):
        meta = HookedTransformer(cfg, move_to_device=False)
    return ModelShape.of(meta)


def replace_tokenizer(cfg: HookedTransformerConfig) -> HookedTransformerConfig:
    """The config without its tokenizer, so that building it downloads nothing."""
    cfg = HookedTransformerConfig.from_dict(cfg.to_dict())
    cfg.tokenizer_name = None
    return cfg


def sae_shapes(release: str, sae_ids: Sequence[str], d_model: int) -> list[SAEShape]:
    """The SAEs' hooks and widths without their weights: from SAELens's config for each (read
    from the SAE ids for Gemma Scope; from `cfg.json` on the hub or in the local cache for
    SAELens-format releases), else the width spelled in the id (`width_16k`), else the release's
    documented width (`DOCUMENTED_WIDTHS`). A ValueError names an SAE whose width is unknown."""
    if loading.is_bundled(release):
        specs = [loading.SAESpec(release, sae_id) for sae_id in sae_ids]
        return [SAEShape.of(sae) for sae in loading.load_saes(specs, "cpu").values()]
    return [_sae_shape(release, sae_id, d_model) for sae_id in sae_ids]


@functools.lru_cache(maxsize=512)
def _sae_shape(release: str, sae_id: str, d_model: int) -> SAEShape:
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

    loading.hub_online()
    try:
        cfg = load_sae_config_from_huggingface(release, sae_id, device="cpu")
        hook = cfg.get("hook_name") or _hook_of(release, sae_id)
        return SAEShape(hook, int(cfg["d_in"]), int(cfg["d_sae"]))
    except Exception:  # offline and not cached, or a loader that needs the network
        pass
    width = width_in_id(sae_id) or DOCUMENTED_WIDTHS.get(release)
    if width is None:
        raise ValueError(
            f"Cannot estimate the memory of SAE {sae_id!r} of {release!r}: its config cannot be "
            "read here and its id does not give its width."
        )
    return SAEShape(_hook_of(release, sae_id), d_model, width)


def _hook_of(release: str, sae_id: str) -> str:
    """The hook an SAE reads, from its id where the id is a hook name or says `layer_N` (Gemma
    Scope's residual SAEs read `blocks.N.hook_resid_post`)."""
    if block_index(sae_id) is not None:
        return sae_id
    found = re.search(r"layer_(\d+)", sae_id)
    if found is None:
        raise ValueError(f"Cannot tell which hook SAE {sae_id!r} of {release!r} reads.")
    return f"blocks.{found.group(1)}.hook_resid_post"


def width_in_id(sae_id: str) -> int | None:
    """The width an SAE id spells (`width_16k` is 16384, `width_1m` 1048576: SAELens reads these
    names as powers of two), or None."""
    found = re.search(r"width_(\d+)([km])", sae_id)
    if found is None:
        return None
    size = int(found.group(1)) * (1000 if found.group(2) == "k" else 1_000_000)
    return 2 ** round(math.log2(size))


# --------------------------------------------------------------------------- budgets


def memory_budget(device: str) -> int:
    """The bytes a deployment may use on `device`: `TOKEN_TRACE_MEMORY_GB` when set; else on a
    ZeroGPU Space its slice (`ZEROGPU_BYTES`), on another GPU its memory, on a CPU the smaller of
    the machine's memory and its container's limit (cgroup v2 `memory.max`)."""
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{MEMORY_ENV} must be a positive number of GB, got {raw!r}.")
        return int(value * GIB)
    if torch.device(device).type == "cuda":
        if os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "true"):
            return ZEROGPU_BYTES
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    import psutil

    total = psutil.virtual_memory().total
    limit = Path("/sys/fs/cgroup/memory.max")
    text = limit.read_text().strip() if limit.is_file() else "max"
    return min(total, int(text)) if text.isdigit() else total


@dataclass(frozen=True)
class Fit:
    """An estimate against a budget, for one request."""

    estimate: MemoryEstimate
    budget: int
    n_tokens: int

    @property
    def fits(self) -> bool:
        return self.estimate.total <= self.budget


def release_estimate(
    release: str,
    sae_ids: Sequence[str],
    n_tokens: int,
    *,
    device: str,
    model_dtype: str = "auto",
    sae_dtype: str = "float32",
    max_nodes: int | None = None,
) -> MemoryEstimate:
    """`estimate` for a release's model and the SAEs `sae_ids` by name (nothing is loaded)."""
    model = model_shape(loading.release_model(release), release)
    return estimate(
        model,
        sae_shapes(release, sae_ids, model.d_model),
        n_tokens,
        device=device,
        model_dtype=loading.model_dtype(model_dtype, device),
        sae_dtype=sae_dtype,
        max_nodes=max_nodes,
    )


class DoesNotFit(ValueError):
    """A request whose estimated memory exceeds the device's budget (its message says what to
    change); a ValueError, so every front end shows it as the user's message."""


def require_fit(
    model: ModelShape,
    saes: Sequence[SAEShape],
    n_tokens: int,
    *,
    what: str,
    device: str,
    model_dtype: str,
    sae_dtype: str = "float32",
    max_nodes: int | None = None,
    token_limit: int | None = None,
) -> MemoryEstimate:
    """The estimate of `what` (a preset's name) at `n_tokens`, or `DoesNotFit` when it exceeds
    `memory_budget(device)`: a preset that cannot fit even one token is refused as such;
    otherwise the message gives the longest prompt (up to `token_limit`) that fits."""
    budget = memory_budget(device)
    options = {"device": device, "model_dtype": model_dtype, "sae_dtype": sae_dtype,
               "max_nodes": max_nodes}  # fmt: skip
    found = estimate(model, saes, n_tokens, **options)
    if found.total <= budget:
        return found
    where = f"this device has {gib(budget)} ({MEMORY_ENV} sets it)"
    smallest = estimate(model, saes, 1, **options)
    if smallest.total > budget:
        raise DoesNotFit(
            f"{what} with {len(saes)} SAEs needs about {smallest.describe()} even for one token; "
            f"{where}. Choose fewer layers or a smaller preset."
        )
    longest = most_tokens(
        lambda n: estimate(model, saes, n, **options).total <= budget, token_limit or n_tokens
    )
    graph = " and a graph" if max_nodes is not None else ""
    raise DoesNotFit(
        f"A prompt of {n_tokens} tokens with {what}{graph} needs about {found.describe()}; "
        f"{where}, enough for about {longest} tokens. Shorten the prompt or choose fewer layers."
    )
