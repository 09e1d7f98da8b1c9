"""Attribution speed and memory next to the floor, on a GPT-2-small-shaped model with 13 SAEs.

Nothing is downloaded: the model has GPT-2 small's exact shape with seeded random weights, and the
13 SAEs have gpt2-small-res-jb's shape and hook points, with encoder biases calibrated so that about
50 features fire per token, like the real ones. Every number printed is measured in this run:

    python benchmarks/bench_attribution.py                 # CPU, prompts of 16, 64 and 128 tokens
    python benchmarks/bench_attribution.py --device cuda   # the same on a GPU

Rows, per prompt length (median of --repeats runs after a warm-up, and as a ratio to the floor):
- forward: the plain forward pass to logits;
- forward+backward: forward, the metric, backward to every parameter (what a training step costs);
- floor: the least work node attribution needs: one forward and one backward keeping the gradient
  at the 13 hooks, the 13 encodes, and gradient . decoder row for the active features only;
- token-trace atp / ig: `compute_node_attribution` end to end, to the DataFrame;
- token-trace atp, batch of B: `compute_node_attribution_batch` on --batch prompts of that length
  in one call (times per prompt);
- token-trace graph, N nodes: `compute_graph` with max_nodes=N, AtP included, to the pruned graph
  (rows: the edges computed between the N nodes, the tokens and the metric);
- naive: SAEs spliced into the forward pass, dense decoder products, one Python dict per node.

Each row also gives the matrix-product FLOPs the case performs (counted on its warm-up run by
PyTorch's own FLOP formulas) and the rate achieved, so that a time ratio can be read against the
arithmetic the two cases must do.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pandas as pd
import psutil
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from transformer_lens import HookedTransformer, HookedTransformerConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from token_trace import compute_node_attribution, compute_node_attribution_batch
from token_trace.graph import Graph, compute_graph
from token_trace.hook_names import residual_hooks
from token_trace.hooks import final_residual, logits_at
from token_trace.metrics import token_logprob
from token_trace.options import IG_RULES
from token_trace.splice import spliced

HOOKS = residual_hooks(12)
D_SAE = 24576
FIRING_PER_TOKEN = 50


def gpt2_shaped_model(device: str) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=12,
        d_model=768,
        n_heads=12,
        d_head=64,
        d_mlp=3072,
        d_vocab=50257,
        n_ctx=1024,
        act_fn="gelu_new",
        normalization_type="LNPre",  # GPT-2 as TransformerLens loads it, with folded norms
        model_name="gpt2-shaped-random",
        seed=0,
        device=device,
    )
    return HookedTransformer(cfg).eval()


def random_saes(device: str) -> dict[str, SAE]:
    """13 standard SAEs of gpt2-small-res-jb's shape with unit-norm random decoder rows."""
    generator = torch.Generator()
    saes = {}
    for index, hook in enumerate(HOOKS):
        cfg = StandardSAEConfig(
            d_in=768,
            d_sae=D_SAE,
            device=device,
            metadata=SAEMetadata(hook_name=hook, model_name="gpt2-shaped-random"),
        )
        sae = StandardSAE(cfg)
        with torch.no_grad():
            decoder = torch.randn(D_SAE, 768, generator=generator.manual_seed(index))
            sae.W_dec.copy_(decoder.to(device) / decoder.norm(dim=-1, keepdim=True).to(device))
            sae.W_enc.copy_(sae.W_dec.T)
        saes[hook] = sae.eval()
    return saes


@torch.no_grad()
def calibrate(model: HookedTransformer, saes: dict[str, SAE], length: int) -> None:
    """Set each SAE's biases so that FIRING_PER_TOKEN features fire per token on average.

    Calibrated on 8 random prompts of the benchmarked length: in a random model, early positions
    and each prompt's shared direction move the activations, so thresholds depend on the length.
    """
    generator = torch.Generator().manual_seed(length)
    tokens = torch.randint(0, model.cfg.d_vocab, (8, length), generator=generator)
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=HOOKS)
    for hook, sae in saes.items():
        acts = cache[hook].reshape(-1, model.cfg.d_model)
        sae.b_dec.copy_(acts.mean(0))
        pre = ((acts - sae.b_dec) @ sae.W_enc).flatten()
        kept = FIRING_PER_TOKEN * acts.shape[0]
        threshold = pre.kthvalue(pre.numel() - kept).values
        sae.b_enc.fill_(-float(threshold))


class PeakRSS:
    """Samples the process's resident memory in a thread: the peak during a block."""

    def __enter__(self) -> PeakRSS:
        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


#: PyTorch's FLOP formulas assume dense operands. Node extraction's two sparse products do
#: 2 FLOPs per stored entry per element of the other dimension instead.
SPARSE_FLOPS = {
    # A CSR feature table [n, d_sae] times the decoder [d_sae, d_model].
    torch.ops.aten.mm: lambda sparse, dense: 2 * sparse._nnz() * dense.shape[1],
    # (g @ W_dec.T) sampled at the stored entries: one d_model-long dot product each.
    torch.ops.aten.sparse_sampled_addmm: lambda pattern, g, *_, **__: (
        2 * pattern._nnz() * g.shape[1]
    ),
}


class CountedFlops(TorchDispatchMode):
    """Adds up the FLOPs of every operator PyTorch has a FLOP formula for (matrix products,
    attention, convolutions), forward and backward, while active.

    `torch.utils.flop_counter.FlopCounterMode` does the same but also tracks modules, which fails
    on SAELens's encode of a gradient-carrying activation under `no_grad`, and it counts sparse
    products as dense ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if any(isinstance(a, torch.Tensor) and a.layout != torch.strided for a in args):
            formula = SPARSE_FLOPS.get(func.overloadpacket)
            self.total += 0 if formula is None else formula(*args, **kwargs)
        else:
            formula = flop_registry.get(func.overloadpacket)
            self.total += 0 if formula is None else formula(*args, **kwargs, out_val=out)
        return out


@dataclass(frozen=True)
class Timing:
    """One case: median seconds, working memory beyond what was held before, the FLOPs of one
    run, and the last result."""

    seconds: float
    peak_bytes: int
    flops: int
    result: object


def timed(fn: Callable[[], object], repeats: int, device: str) -> Timing:
    """Median of `repeats` runs after one warm-up (which also counts the FLOPs), and the peak
    memory they used beyond what was held before them (activations, gradients, tables)."""
    with CountedFlops() as flops:
        fn()
    times = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()
    else:
        held = psutil.Process().memory_info().rss
    with PeakRSS() as memory:
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else memory.peak
    return Timing(statistics.median(times), max(peak - held, 0), flops.total, result)


def paired_ratio(
    fn: Callable[[], object], reference: Callable[[], object], repeats: int, device: str
) -> float:
    """Median of `fn`'s time over `reference`'s, the two run back to back in each repeat, so that
    drift in the machine's speed (which moves single medians by ~10% here) cancels."""
    ratios = []
    for _ in range(repeats):
        seconds = [timed(f, 1, device).seconds for f in (fn, reference)]
        ratios.append(seconds[0] / seconds[1])
    return statistics.median(ratios)


def floor(model, saes, tokens, metric) -> int:
    """The least work: hook gradients in one pass, encodes, products for active features only."""
    acts = {}

    def keep(act, hook):
        acts[hook.name] = act
        return act

    with torch.enable_grad(), model.hooks(fwd_hooks=[(hook, keep) for hook in saes]):
        value = metric(logits_at(model, final_residual(model, tokens), metric.positions))
        grads = torch.autograd.grad(value.sum(), [acts[hook] for hook in saes])
    rows = 0
    with torch.no_grad():
        for (hook, sae), grad in zip(saes.items(), grads):
            features = sae.encode(acts[hook][0])
            position, feature = features.nonzero(as_tuple=True)
            _ = features[position, feature] * (sae.W_dec[feature] * grad[0][position]).sum(-1)
            rows += len(position)
    return rows


def naive(model, saes, tokens, metric) -> pd.DataFrame:
    """A first implementation: SAEs spliced in, dense gradients, a Python loop over nodes."""
    with torch.enable_grad(), spliced(model, saes) as leaves:
        logits = model(tokens)
        value = metric(logits[:, list(metric.positions)])
        value.sum().backward()
    records = []
    for hook in saes:
        features, errors = leaves.features[hook], leaves.errors[hook]
        for position, feature in features[0].nonzero().tolist():
            activation = features[0, position, feature].item()
            gradient = features.grad[0, position, feature].item()
            records.append(
                {
                    "hook_name": hook,
                    "position": position,
                    "feature": feature,
                    "activation": activation,
                    "gradient": gradient,
                    "attribution": activation * gradient,
                }
            )
        for position in range(errors.shape[1]):
            error, grad = errors[0, position].detach(), errors.grad[0, position]
            records.append(
                {
                    "hook_name": hook,
                    "position": position,
                    "feature": -1,
                    "activation": error.norm().item(),
                    "gradient": (error @ grad).item() / error.norm().item(),
                    "attribution": (error @ grad).item(),
                }
            )
    return pd.DataFrame.from_records(records)


def half_precision_error(exact: pd.DataFrame, half: pd.DataFrame) -> str:
    """How far half-precision SAEs move the attributions, relative to the largest |attribution|."""
    keys = ["hook_name", "position", "feature"]
    both = exact.merge(half, on=keys, how="outer", suffixes=("", "_half"), indicator=True)
    in_one = int((both["_merge"] != "both").sum())
    both = both.fillna({"attribution": 0.0, "attribution_half": 0.0})
    difference = (both.attribution_half - both.attribution).abs() / both.attribution.abs().max()
    top = both.attribution.abs().nlargest(100).index
    top_half = both.attribution_half.abs().nlargest(100).index
    return (
        f"max |difference| {difference.max():.4f}, mean {difference.mean():.6f} of the largest "
        f"|attribution|; {in_one} nodes active in only one; top-100 overlap "
        f"{len(top.intersection(top_half))}"
    )


def forward_backward(model, tokens, metric) -> None:
    with torch.enable_grad():
        logits = model(tokens)
        metric(logits[:, list(metric.positions)]).sum().backward()
    model.zero_grad(set_to_none=True)


def import_seconds() -> float:
    """Wall time of importing the library (its engine and loaders) in a fresh interpreter."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import token_trace.pipeline"],
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return time.perf_counter() - start


def load_seconds(model: HookedTransformer, saes: dict[str, SAE], device: str) -> float:
    """Time to rebuild the model and load its 13 SAEs from local safetensors files."""
    with tempfile.TemporaryDirectory() as folder:
        save_file(model.state_dict(), os.path.join(folder, "model.safetensors"))
        for hook, sae in saes.items():
            sae.save_model(os.path.join(folder, hook))
        start = time.perf_counter()
        loaded = HookedTransformer(model.cfg)
        loaded.load_state_dict(load_file(os.path.join(folder, "model.safetensors"), device=device))
        for hook in saes:
            SAE.load_from_disk(os.path.join(folder, hook), device=device)
        return time.perf_counter() - start


def app_first_result_seconds() -> float | None:
    """`python app.py` from launch to the first /attribute result on the bundled model."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "app.py").exists():
        return None
    from gradio_client import Client

    port = "7893"
    env = {**os.environ, "GRADIO_SERVER_PORT": port, "GRADIO_SERVER_NAME": "127.0.0.1"}
    start = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while time.perf_counter() - start < 300:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                time.sleep(0.5)
        client.predict(
            "When Mary and John went to the store, John gave a drink to",
            "ioi-demo",
            api_name="/attribute",
        )
        return time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)


def measure(
    model: HookedTransformer,
    saes: dict[str, SAE],
    length: int,
    args: argparse.Namespace,
    weight_bytes: int,
) -> pd.DataFrame:
    """Every case on one random prompt of `length` tokens, as a table with ratios to the floor."""
    calibrate(model, saes, length)
    all_tokens = torch.randint(0, model.cfg.d_vocab, (args.batch, length + 1)).to(args.device)
    tokens = all_tokens[:1]
    prompt, target = tokens[:, :-1], int(tokens[0, -1])
    metric = token_logprob([target], [length - 1], "benchmark log-prob")
    cases: dict[str, Callable[[], object]] = {
        "forward": lambda: model(prompt),
        "forward+backward": lambda: forward_backward(model, prompt, metric),
        "floor": lambda: floor(model, saes, prompt, metric),
        # The library reads all but the last token and predicts it: the same work as the floor's.
        "token-trace atp": lambda: compute_node_attribution(tokens, model, saes),
    }
    if not args.skip_ig:
        cases[f"token-trace ig{args.ig_steps}"] = lambda: compute_node_attribution(
            tokens, model, saes, method="ig", ig_steps=args.ig_steps, ig_rule=args.ig_rule
        )
    batch_case = f"token-trace atp, batch of {args.batch}"
    if args.batch > 1:
        cases[batch_case] = lambda: compute_node_attribution_batch(
            list(all_tokens.split(1)), model, saes
        )
    if args.half_saes:
        half = {
            hook: copy.deepcopy(sae).to(getattr(torch, args.half_saes))
            for hook, sae in saes.items()
        }
        cases[f"token-trace atp, {args.half_saes} SAEs"] = lambda: compute_node_attribution(
            tokens, model, half
        )
    for max_nodes in args.graph_nodes:
        cases[f"token-trace graph, {max_nodes} nodes"] = partial(
            compute_graph, tokens, model, saes, max_nodes=max_nodes
        )
    if not args.skip_naive:
        cases["naive reference"] = lambda: naive(model, saes, prompt, metric)
    measured: dict[str, Timing] = {}
    rows: dict[str, int | None] = {}
    for name, fn in cases.items():
        repeats = 1 if name == "naive reference" else args.repeats
        with torch.no_grad() if name == "forward" else torch.enable_grad():
            timing = timed(fn, repeats, args.device)
        result = timing.result
        if isinstance(result, list):  # one table per prompt of a batch: report per prompt
            n = len(result)
            timing = replace(timing, seconds=timing.seconds / n, flops=timing.flops // n)
            result = result[0]
        if isinstance(result, Graph):
            rows[name] = len(result.candidate_edges)
        elif isinstance(result, pd.DataFrame):
            rows[name] = len(result)
        else:  # the floor returns its node count; the model's own passes have no rows
            rows[name] = result if isinstance(result, int) else None
        measured[name] = timing
        print(f"  {length} tokens, {name}: {timing.seconds * 1000:.0f} ms", flush=True)
    floor_timing = measured["floor"]
    if args.half_saes:
        error = half_precision_error(
            measured["token-trace atp"].result,
            measured[f"token-trace atp, {args.half_saes} SAEs"].result,
        )
        print(f"  {length} tokens, {args.half_saes} SAEs against fp32: {error}", flush=True)
    ratio = paired_ratio(cases["token-trace atp"], cases["floor"], args.repeats, args.device)
    print(f"  {length} tokens, token-trace atp / floor, paired runs: {ratio:.2f}", flush=True)
    atp_seconds = measured["token-trace atp"].seconds
    for max_nodes in args.graph_nodes:
        graph_seconds = measured[f"token-trace graph, {max_nodes} nodes"].seconds
        print(
            f"  {length} tokens, graph of {max_nodes} nodes / atp: "
            f"{graph_seconds / atp_seconds:.2f}",
            flush=True,
        )
    table = pd.DataFrame(
        [
            {
                "tokens": length,
                "case": name,
                "ms/prompt": round(timing.seconds * 1000, 1),
                "x floor": round(timing.seconds / floor_timing.seconds, 2),
                "GFLOP": round(timing.flops / 1e9, 1),
                "FLOPs x floor": round(timing.flops / floor_timing.flops, 2),
                "GFLOP/s": round(timing.flops / 1e9 / timing.seconds, 1),
                "rows": rows[name],
                "extra MiB": round(timing.peak_bytes / 2**20),
                "(weights+extra)/weights": round(1 + timing.peak_bytes / weight_bytes, 3),
                "prompts/s": round(1 / timing.seconds, 2),
            }
            for name, timing in measured.items()
        ]
    )
    return table.astype({"rows": "Int64"})  # the model's own passes have none


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    # The README's IG column was measured with the rule of its day: 10 Riemann steps, 9 passes.
    parser.add_argument("--ig-steps", type=int, default=10)
    parser.add_argument("--ig-rule", choices=IG_RULES, default="riemann")
    parser.add_argument("--batch", type=int, default=8, help="prompts per batched call")
    parser.add_argument(
        "--half-saes",
        choices=["bfloat16", "float16"],
        help="also time AtP with SAEs in this dtype, and print its error against fp32",
    )
    parser.add_argument(
        "--graph-nodes", type=int, nargs="*", default=[200, 1000], help="max_nodes of graph rows"
    )
    parser.add_argument("--skip-ig", action="store_true")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-app", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = args.device

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"import token_trace.pipeline: {import_seconds():.2f} s")
    model = gpt2_shaped_model(device)
    saes = random_saes(device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        p.numel() * p.element_size() for sae in saes.values() for p in sae.parameters()
    )
    baseline_rss = psutil.Process().memory_info().rss
    print(
        f"weights: {weight_bytes / 2**30:.2f} GiB; process RSS before runs: "
        f"{baseline_rss / 2**30:.2f} GiB"
    )
    print(f"load model + 13 SAEs from safetensors: {load_seconds(model, saes, device):.2f} s")

    for length in args.lengths:
        table = measure(model, saes, length, args, weight_bytes)
        print(table.to_string(index=False), flush=True)

    if not args.skip_app:
        seconds = app_first_result_seconds()
        if seconds is not None:
            print(f"app: launch to first result on ioi-demo: {seconds:.1f} s")


if __name__ == "__main__":
    main()
