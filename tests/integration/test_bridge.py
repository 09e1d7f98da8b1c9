"""TransformerBridge against HookedTransformer on the fake GPT-2 of `tests/fake_hub.py`, offline.

Both backends load the fake `gpt2` checkpoint through their real TransformerLens code (the bridge
with `boot_transformers` and `enable_compatibility_mode`, HookedTransformer with
`from_pretrained`), with `gpt2-small-res-jb`'s processing, in a fresh interpreter with
HF_HUB_OFFLINE=1 (see `tests/fake_hub.py` for why a subprocess). Then the same engine runs on
each: nodes (AtP and IG), edges, real ablations and interventions must agree within `RELATIVE`
of the largest value compared.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.fake_hub import FakeHub
from tests.integration.test_fake_hub import QUICKSTART_TEXT, RES_JB_HOOKS, run_offline
from token_trace.records import Trace

#: Agreement asked of the two backends: |hooked - bridge| <= RELATIVE * max |hooked| per quantity.
#: Both run float32; the forward passes agree exactly on the fake GPT-2, the backward passes
#: (Hugging Face's attention against TransformerLens's) to at most 6.1e-6 of the largest value
#: (benchmarks/bench_backends.py).
RELATIVE = 1e-4

#: Both backends on one prompt's first 16 and 64 tokens: what each computes, as one JSON line.
COMPARE = """
import json, time
import numpy as np, torch
from tests.fake_hub import CORPUS
from token_trace import Edit, compute_graph, intervene, trace, verify
from token_trace.loading import load_model, load_saes, resolve_sae_specs
from token_trace.replay import model_and_saes

models = {b: load_model("gpt2-small", "cpu", backend=b) for b in ("hooked", "bridge")}
saes = load_saes(resolve_sae_specs("gpt2-small-res-jb", "gpt2-small"), "cpu")
ids = models["hooked"].to_tokens(" ".join(CORPUS))
out = {"classes": {b: type(m).__name__ for b, m in models.items()}}
hooked, bridge = models["hooked"], models["bridge"]
with torch.no_grad():
    out["logits"] = float((hooked(ids[:, :64]) - bridge(ids[:, :64])).abs().max())
out["row_mean"] = float(bridge.W_E.mean(-1).abs().max())  # centred writing weights
out["hook_seen"] = []
seen = [("blocks.3.hook_resid_pre", lambda act, hook: out["hook_seen"].append(hook.name))]
with bridge.hooks(fwd_hooks=seen):
    bridge(ids[:, :4])


def table(result):
    nodes = result.nodes
    keys = nodes[["hook_name", "position", "feature"]].astype(str).agg("/".join, axis=1)
    return {"keys": keys.tolist(), "attribution": nodes["attribution"].tolist(),
            "activation": nodes["activation"].tolist(), "metric": result.metric.value,
            "backend": result.backend}


def timed(call):
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


for length in (16, 64):
    tokens = ids[:, :length]
    for name, model in models.items():
        trace(tokens, model, saes)  # warm
        result, seconds = timed(lambda: trace(tokens, model, saes))
        out[f"atp_{length}_{name}"] = {**table(result), "seconds": seconds}
tokens = ids[:, :16]
for name, model in models.items():
    out[f"ig_{name}"] = table(trace(tokens, model, saes, method="ig", ig_steps=3))
    graph, seconds = timed(lambda: compute_graph(tokens, model, saes, max_nodes=40,
                                                 node_threshold=None, edge_threshold=None))
    edges = graph.candidate_edges
    out[f"edges_{name}"] = {"keys": (edges["source"] + ">" + edges["target"]).tolist(),
                            "weight": edges["weight"].tolist(), "seconds": seconds}
    result = trace(tokens, model, saes)
    check = verify(result, k=8, model=model, saes=saes)
    out[f"ablate_{name}"] = {"nodes": check.nodes["real"].tolist(),
                             "layers": check.layers["real"].tolist()}
    top = result.top_nodes(2, exclude_bos=True)
    node = [f"{r.layer}_{r.feature}_{r.position}" for r in top.itertuples()]
    edit = intervene(result, [Edit(node[0], scale=0.0), Edit(node[1], value=3.0)], generate=3,
                     model=model, saes=saes)
    out[f"intervene_{name}"] = {"before": edit.metric_before, "after": edit.metric_after,
                                "text": edit.generated_after}
by_name = trace(tokens, "gpt2-small", backend="bridge")
out["by_name_backend"] = by_name.backend
out["rerun_class"] = type(model_and_saes(by_name)[0]).__name__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compared(fake_hub: FakeHub) -> dict:
    start = time.perf_counter()
    done = run_offline(fake_hub, ["-c", COMPARE])
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    seconds = {
        key: round(value["seconds"], 2)
        for key, value in facts.items()
        if isinstance(value, dict) and "seconds" in value
    }
    print(
        f"backends: {time.perf_counter() - start:.1f} s in all; one run each: {seconds}; "
        f"logits max |diff| {facts['logits']}"
    )
    return facts


def assert_close(hooked: list[float], bridge: list[float]) -> float:
    """The largest |hooked - bridge|, checked against `RELATIVE` of the largest |hooked|."""
    assert len(hooked) == len(bridge) > 0
    worst = max(abs(a - b) for a, b in zip(hooked, bridge))
    assert worst <= RELATIVE * max(abs(a) for a in hooked), worst
    return worst


@pytest.mark.slow
def test_the_bridge_boots_the_fake_gpt2_offline_with_the_releases_processing(
    compared: dict,
) -> None:
    assert compared["classes"] == {"hooked": "HookedTransformer", "bridge": "TransformerBridge"}
    assert compared["logits"] < 1e-5  # the same forward pass
    assert compared["row_mean"] < 1e-5  # centred, as the release's center_writing_weights asks
    # the bridge tells a hook function its own name for an alias; token-trace does not rely on it
    assert compared["hook_seen"] == ["blocks.3.hook_in"]


@pytest.mark.slow
@pytest.mark.parametrize("run", ["atp_16", "atp_64", "ig"])
def test_both_backends_give_the_same_nodes(compared: dict, run: str) -> None:
    hooked, bridge = compared[f"{run}_hooked"], compared[f"{run}_bridge"]
    assert (hooked["backend"], bridge["backend"]) == ("hooked", "bridge")
    assert hooked["keys"] == bridge["keys"] and len(hooked["keys"]) > 100
    assert_close(hooked["attribution"], bridge["attribution"])
    assert_close(hooked["activation"], bridge["activation"])
    assert hooked["metric"] == pytest.approx(bridge["metric"], abs=1e-5)


@pytest.mark.slow
def test_both_backends_give_the_same_edges(compared: dict) -> None:
    hooked, bridge = compared["edges_hooked"], compared["edges_bridge"]
    assert hooked["keys"] == bridge["keys"] and len(hooked["keys"]) > 40
    assert_close(hooked["weight"], bridge["weight"])


@pytest.mark.slow
def test_both_backends_give_the_same_ablations_and_interventions(compared: dict) -> None:
    hooked, bridge = compared["ablate_hooked"], compared["ablate_bridge"]
    assert_close(hooked["nodes"], bridge["nodes"])
    assert_close(hooked["layers"], bridge["layers"])
    hooked, bridge = compared["intervene_hooked"], compared["intervene_bridge"]
    assert hooked["before"] == pytest.approx(bridge["before"], abs=1e-5)
    assert hooked["after"] == pytest.approx(bridge["after"], abs=1e-5)
    assert hooked["after"] != pytest.approx(hooked["before"], abs=1e-3)  # the edits did something
    assert hooked["text"] == bridge["text"]


@pytest.mark.slow
def test_a_bridge_trace_records_its_backend_and_reruns_on_it(compared: dict) -> None:
    assert compared["by_name_backend"] == "bridge"
    assert compared["rerun_class"] == "TransformerBridge"


@pytest.mark.slow
def test_the_cli_runs_on_the_bridge_offline(fake_hub: FakeHub, tmp_path: Path) -> None:
    saved = tmp_path / "run.parquet"
    args = ["-m", "token_trace.cli", QUICKSTART_TEXT, "--device", "cpu", "--backend", "bridge"]
    done = run_offline(fake_hub, [*args, "--top", "5", "--save", str(saved)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "into HookedTransformer" not in done.stdout + done.stderr
    result = Trace.load(saved)
    assert result.backend == "bridge" and result.hook_names == RES_JB_HOOKS
