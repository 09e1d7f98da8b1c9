"""Dataset runs: prompts per second for the local engine and for Ray, and memory per worker.

The model is bench_attribution's GPT-2-small-shaped random model with 13 SAEs of
gpt2-small-res-jb's shape (about 50 features firing per token), plus a word-level tokenizer of
GPT-2's vocabulary size, so that dataset records are text. Records are 64 random words (64 tokens
read by the model after BOS, the metric being log p of a 65th). Both engines run the same file in
this one process's run, one after the other:

    python benchmarks/bench_dataset.py                      # 32 prompts, both engines, CPU
    python benchmarks/bench_dataset.py --prompts 256 --device cuda --ray-workers 1

Printed per engine: wall time and prompts/s end to end (model building and Ray start-up
included), attribution-only prompts/s (prompts over the seconds the workers spent on shards,
summed over workers running side by side), and each worker's peak resident memory (and peak GPU
memory). The ratio line compares the two engines' end-to-end and attribution-only rates.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from sae_lens import SAE
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_attribution import calibrate, gpt2_shaped_model, random_saes  # noqa: E402
from token_trace import run_dataset  # noqa: E402

LENGTH = 64
WORDS = [f"w{index}" for index in range(50_000)]  # with BOS and <unk>, under GPT-2's 50,257


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<|endoftext|>": 0, "<unk>": 1} | {word: i + 2 for i, word in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        name_or_path="gpt2-shaped-words",
        add_bos_token=True,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )


def gpt2_shaped(device: str | None) -> tuple[HookedTransformer, dict[str, SAE]]:
    """The dataset run's `loader`: every worker builds the same seeded weights."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = gpt2_shaped_model(device)
    model.set_tokenizer(word_tokenizer(), default_padding_side="right")
    saes = random_saes(device)
    calibrate(model, saes, LENGTH)
    return model, saes


def write_prompts(path: Path, n: int) -> None:
    rng = random.Random(0)
    lines = [
        json.dumps({"id": f"p{i}", "text": " ".join(rng.choices(WORDS, k=LENGTH + 1))})
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")


def measure(engine: str, prompts: Path, out: Path, args: argparse.Namespace) -> dict[str, object]:
    options = {"engine": engine, "progress": False, "report": False}
    if engine == "ray":
        options |= {
            "workers": args.ray_workers,
            "cpus_per_worker": args.cpus_per_worker,
            "memory_per_worker": args.memory_per_worker,
        }
    start = time.perf_counter()
    result = run_dataset(
        prompts,
        out,
        loader="benchmarks.bench_dataset:gpt2_shaped",
        model="gpt2-shaped-random",
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        device=args.device,
        **options,
    )
    wall = time.perf_counter() - start
    shards = result.shards
    per_worker = shards.groupby("pid").agg(
        seconds=("seconds", "sum"), rss=("peak_rss_mb", "max"), gpu=("peak_gpu_mb", "max")
    )
    busiest = float(per_worker["seconds"].max())  # workers run side by side
    return {
        "engine": engine,
        "workers": len(per_worker),
        "prompts": result.n_ok,
        "wall s": round(wall, 1),
        "prompts/s": round(result.n_ok / wall, 3),
        "attribution prompts/s": round(result.n_ok / busiest, 3),
        "peak RSS per worker (GiB)": round(float(per_worker["rss"].max()) / 1024, 2),
        "peak GPU per worker (GiB)": round(float(per_worker["gpu"].max()) / 1024, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--memory-per-worker", type=float, default=4.5, help="GiB")
    parser.add_argument("--engines", nargs="+", default=["local", "ray"])
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"{args.prompts} prompts of {LENGTH} tokens, batches of {args.batch_size}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        prompts = Path(folder) / "prompts.jsonl"
        write_prompts(prompts, args.prompts)
        for engine in args.engines:
            if engine == "ray":
                import ray

                # Ray's workers import the loader from this repository.
                os.environ["PYTHONPATH"] = os.pathsep.join(
                    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
                )
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            rows.append(measure(engine, prompts, Path(folder) / engine, args))
            print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if len(table) == 2:
        first, second = table.iloc[0], table.iloc[1]
        print(
            f"{second['engine']} / {first['engine']}: end to end "
            f"{second['prompts/s'] / first['prompts/s']:.2f}x, attribution only "
            f"{second['attribution prompts/s'] / first['attribution prompts/s']:.2f}x"
        )


if __name__ == "__main__":
    main()
