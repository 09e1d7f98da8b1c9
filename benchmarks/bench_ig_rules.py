"""Integrated gradients' layer totals against the real whole-layer patch: Riemann against
Gauss-Legendre at equal cost, on the bundled model.

    python benchmarks/bench_ig_rules.py [--prompts 8]

Held-out IOI prompts from examples/ioi_dataset.jsonl, metric logit(answer) - logit(contrast),
baselines zero (every node 0: the hook reads b_dec) and counterfactual (the names swapped). The
real effect of a layer is `m(clean) - m(the hook's whole activation replaced by its baseline)`,
measured by a rerun; IG's estimate is the layer's summed attribution. Cost is the number of
interpolated passes per layer: the Riemann rule with N steps runs N - 1 (its first point is the
clean gradient), Gauss-Legendre with n points runs n. Prints, per baseline, rule and cost, the mean
and largest |estimate - real| over prompts and layers, the error relative to sum |real|, and the
seconds per trace.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_faithfulness import records, swapped  # noqa: E402

from token_trace import loading, trace  # noqa: E402
from token_trace.hooks import final_residual, logits_at  # noqa: E402
from token_trace.prompts import prepare_baseline, prepare_prompt  # noqa: E402

COSTS = (2, 4, 8, 16)
RULES = {"riemann": lambda cost: cost + 1, "gauss-legendre": lambda cost: cost}


@torch.no_grad()
def real_layer_effects(model, saes, prompt, baseline_tokens) -> dict[str, float]:
    """`m(clean) - m(hook at its baseline)` for each SAE hook, by reruns."""

    def metric(hooks=()):
        with model.hooks(fwd_hooks=list(hooks)):
            residual = final_residual(model, prompt.tokens)
        return float(prompt.metric(logits_at(model, residual, prompt.metric.positions))[0])

    patches = {hook: sae.b_dec for hook, sae in saes.items()}
    if baseline_tokens is not None:
        _, cache = model.run_with_cache(baseline_tokens, names_filter=list(saes))
        patches = {hook: cache[hook] for hook in saes}
    clean = metric()
    return {
        hook: clean - metric([(hook, lambda act, hook, p=patch: p.expand_as(act))])
        for hook, patch in patches.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = loading.load_model("ioi-demo", "cpu")
    saes = loading.load_saes(loading.resolve_sae_specs(None, "ioi-demo"), device="cpu")
    rows = []
    for record in records(args.prompts):
        answer, contrast = record["answer"], record["contrast"]
        prompt = prepare_prompt(model, record["text"], answer, contrast)
        for baseline_name in ("zero", "counterfactual"):
            baseline_text = None
            baseline_tokens = None
            if baseline_name == "counterfactual":
                baseline_text = swapped(record["text"], answer.strip(), contrast.strip())
                baseline_tokens = prepare_baseline(model, baseline_text, prompt)
            real = real_layer_effects(model, saes, prompt, baseline_tokens)
            settings = [("atp", "riemann", 1)] + [
                ("ig", rule, steps(cost)) for cost in COSTS for rule, steps in RULES.items()
            ]
            for method, rule, steps in settings:
                start = time.perf_counter()
                result = trace(
                    record["text"],
                    model,
                    saes,
                    answer=answer,
                    contrast=contrast,
                    baseline_text=baseline_text,
                    method=method,
                    ig_steps=steps,
                    ig_rule=rule,
                )
                seconds = time.perf_counter() - start
                totals = result.nodes.groupby("hook_name", observed=True)["attribution"].sum()
                for hook, effect in real.items():
                    rows.append(
                        {
                            "baseline": baseline_name,
                            "rule": "atp" if method == "atp" else rule,
                            "steps": steps,
                            "passes per layer": 0
                            if method == "atp"
                            else steps - (rule == "riemann"),
                            "hook": hook,
                            "real": effect,
                            "error": abs(float(totals[hook]) - effect),
                            "seconds": seconds,
                        }
                    )
        print(f"{record['id']} done", flush=True)
    table = pd.DataFrame(rows)
    summary = (
        table.groupby(["baseline", "passes per layer", "rule", "steps"])
        .agg(
            mean_error=("error", "mean"),
            max_error=("error", "max"),
            error_sum=("error", "sum"),
            real_sum=("real", lambda v: v.abs().sum()),
            seconds=("seconds", "mean"),
        )
        .reset_index()
    )
    summary["relative"] = summary.pop("error_sum") / summary.pop("real_sum")
    print(f"\n{args.prompts} prompts x {len(saes)} layers; |layer total - real layer patch|")
    print(summary.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
