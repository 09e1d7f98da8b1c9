"""Graph edges on the bundled IOI model against real interventions on held-out prompts.

For the top-20 edges between nodes, the upstream node is patched to its baseline (zero), only the
blocks between the two hooks are rerun, and the real change of the downstream node's contribution
(`(d_j . g) f_j` or `g . e`, the metric gradient held fixed as in the edge's definition) is compared
with the edge's estimate.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.fake_neuronpedia import KEY, fake_neuronpedia
from tests.helpers import downstream_contributions
from token_trace import compute_graph, loading
from token_trace.cli import main
from token_trace.hook_names import residual_hooks
from token_trace.replay import replay
from training.corpus import heldout_ioi_examples

EXAMPLES = heldout_ioi_examples(4, seed=7)
#: The issue's bar for sign agreement of the top-20 edges with real patching.
MIN_SIGN_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def demo():
    model = loading.load_model("ioi-demo", device="cpu")
    saes = loading.load_saes(loading.resolve_sae_specs(None, "ioi-demo"), device="cpu")
    return model, saes


def captured(model, saes, tokens, metric):
    """Activations at the embedding and every SAE hook, and the metric gradient at the hooks."""
    acts = {}

    def keep(act, hook):
        acts[hook.name] = act

    hooks = list(dict.fromkeys([residual_hooks(model.cfg.n_layers)[0], *saes]))
    with model.hooks([(name, keep) for name in hooks]):
        logits = model(tokens)
    value = metric(logits[:, list(metric.positions)])
    grads = torch.autograd.grad(value.sum(), [acts[name] for name in saes])
    gradient = {name: grad[0].detach() for name, grad in zip(saes, grads)}
    return {name: act[0].detach() for name, act in acts.items()}, gradient


@torch.no_grad()
def contribution(model, sae, g, x_u, span: tuple[int, int], node: tuple[int, int]) -> float:
    """The downstream node's contribution after running the blocks `span` on `x_u`."""
    (position, feature), x = node, x_u.unsqueeze(0)
    for block in model.blocks[span[0] : span[1]]:
        x = block(x)
    values = downstream_contributions(
        sae, g, torch.tensor([position]), torch.tensor([max(feature, 0)]), x[0]
    )
    return float(values[0] if feature >= 0 else values[1 + position])


def real_edge_effects(demo, graph, edges: pd.DataFrame) -> np.ndarray:
    model, saes = demo
    tokens = torch.tensor([graph.trace.prompt.token_ids])
    metric = replay(graph.trace, model).metric
    acts, gradient = captured(model, saes, tokens, metric)
    by_depth = {record.layer: record.hook_name for record in graph.trace.saes}
    effects = []
    for edge in edges.itertuples():
        down = saes[by_depth[edge.target_layer]]
        down_hook = by_depth[edge.target_layer]
        if edge.source_type == "embedding":
            up_depth, x_u = 0, acts[residual_hooks(model.cfg.n_layers)[0]]
            delta = x_u[edge.source_position]
        else:
            up_depth = edge.source_layer
            up_hook = by_depth[up_depth]
            up, x_u = saes[up_hook], acts[up_hook]
            f = up.encode(x_u)
            feature = int(edge.source.split("_")[1])
            if feature >= 0:
                delta = f[edge.source_position, feature] * up.W_dec[feature]
            else:
                delta = (x_u - up.decode(f))[edge.source_position]
        patched = x_u.clone()
        patched[edge.source_position] -= delta
        target_feature = int(edge.target.split("_")[1])
        node = (edge.target_position, target_feature)
        span = (up_depth, edge.target_layer)
        before = contribution(model, down, gradient[down_hook], x_u, span, node)
        after = contribution(model, down, gradient[down_hook], patched, span, node)
        effects.append(before - after)
    return np.array(effects)


def test_top_20_edges_agree_with_real_patching(demo):
    signs, correlations = [], []
    for example in EXAMPLES:
        graph = compute_graph(
            example.prompt,
            "ioi-demo",
            answer=example.answer,
            contrast=" " + example.s_name,
            max_nodes=200,
            device="cpu",
        )
        between = graph.candidate_edges[graph.candidate_edges["target_type"] != "metric"]
        top = between.loc[between["weight"].abs().nlargest(20).index]
        real = real_edge_effects(demo, graph, top)
        estimate = top["weight"].to_numpy()
        signs.append(float((np.sign(real) == np.sign(estimate)).mean()))
        correlations.append(float(pd.Series(real).rank().corr(pd.Series(estimate).rank())))
    print(f"top-20 edges: sign agreement {signs}, Spearman rho {correlations}")
    assert min(signs) >= MIN_SIGN_AGREEMENT


def test_cli_writes_a_neuronpedia_graph(tmp_path, capsys):
    example = EXAMPLES[0]
    out = tmp_path / "ioi.json"
    args = [example.prompt, "--model", "ioi-demo", "--answer", example.answer]
    args += ["--contrast", " " + example.s_name, "--device", "cpu", "--graph", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "graph:" in printed and "edges" in printed
    exported = json.loads(out.read_text())
    assert exported["metadata"]["slug"] == "ioi" and exported["links"]
    assert main([*args[:-2], "--method", "ig", "--graph", str(out)]) == 2


def test_cli_uploads_the_graph_it_wrote(tmp_path, capsys, monkeypatch):
    example = EXAMPLES[0]
    out = tmp_path / "ioi-upload.json"
    args = [example.prompt, "--model", "ioi-demo", "--answer", example.answer, "--device", "cpu"]
    args += ["--contrast", " " + example.s_name, "--graph", str(out), "--upload"]
    monkeypatch.setenv("NEURONPEDIA_API_KEY", KEY)
    with fake_neuronpedia(hosted=frozenset({"ioi-demo"})) as site:  # a self-hosted Neuronpedia
        monkeypatch.setenv("TOKEN_TRACE_NEURONPEDIA_URL", site.site)
        assert main(args) == 0
        (key,) = site.files
        assert site.stored_graph(key) == json.loads(out.read_text())
    assert f"neuronpedia: {site.site}/ioi-demo/graph?slug=ioi-upload" in capsys.readouterr().out
    with fake_neuronpedia() as public:  # the public site hosts no ioi-demo
        monkeypatch.setenv("TOKEN_TRACE_NEURONPEDIA_URL", public.site)
        assert main(args) == 1
    printed = capsys.readouterr()
    assert (
        "no model with the graph's scan id 'ioi-demo'" in printed.err
        and KEY not in printed.err + printed.out
    )
