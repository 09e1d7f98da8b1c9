"""The Gemma-3-270M preset through its real loading code, from a fake Hugging Face cache and a
local server that answers as the hub.

`tests/fake_gemma.py` writes Gemma-3-270M (real shapes, random bfloat16 weights) and the four
Gemma Scope 2 SAEs its preset loads, as the real repositories serve them. In fresh interpreters
the README's Quickstart call, a dataset run (the CLI) and the app's `/attribute` and `/graph`
then run offline; SAELens's `gemma_3` loader also runs online against `tests/hub_server.py`
(its range requests for tensor shapes included) into an empty cache, which then loads offline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from huggingface_hub import scan_cache_dir

from tests.fake_gemma import GEMMA3_RELEASE, GEMMA3_REPO
from tests.fake_hub import FakeHub
from tests.helpers import ROOT, app_py_offline
from tests.hub_server import online_env, serve_hub
from token_trace.app.requests import PRESET_ENV
from token_trace.loading import missing_from_cache, release_info, release_sae_ids

pytestmark = pytest.mark.slow

TEXT = "When John and Mary went to the shops, John gave the bag to"
HOOKS = [f"blocks.{layer}.hook_resid_post" for layer in (5, 9, 12, 15)]

#: The Quickstart call on Gemma, what it loaded, and transformers' own Gemma3 model on the same
#: checkpoint for comparison, as one JSON line.
QUICKSTART = f"""
import json, time
start = time.perf_counter()
from token_trace import trace
from token_trace.loading import load_model, load_saes, resolve_sae_specs
model = load_model("gemma-3-270m")
saes = load_saes(resolve_sae_specs(None, "gemma-3-270m"))
loaded = time.perf_counter() - start
start = time.perf_counter()
result = trace({TEXT!r}, model="gemma-3-270m")
seconds = time.perf_counter() - start

import torch
from transformers import AutoModelForCausalLM
tokens = model.to_tokens({TEXT!r})
with torch.no_grad():
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name in saes)
reference = AutoModelForCausalLM.from_pretrained({GEMMA3_REPO!r}, dtype=torch.float32).eval()
with torch.no_grad():
    out = reference(tokens, output_hidden_states=True)
def relative(a, b):
    return float((a - b).norm() / b.norm())
agreement = {{hook: relative(cache[hook], out.hidden_states[int(hook.split(".")[1]) + 1])
             for hook in saes}}
# logits only up to a constant per position (TransformerLens centres the unembedding)
agreement["log_probs"] = relative(logits.log_softmax(-1), out.logits.log_softmax(-1))
features = result.nodes[result.nodes["node_type"] == "feature"]
print(json.dumps({{
    "load_seconds": loaded, "trace_seconds": seconds, "n_tokens": int(tokens.shape[1]),
    "shape": [model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab, model.cfg.n_heads,
              model.cfg.d_head, model.cfg.n_key_value_heads, model.cfg.d_mlp],
    "dtype": str(model.cfg.dtype),
    "saes": [[hook, sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.architecture(),
              sae.cfg.metadata.neuronpedia_id] for hook, sae in saes.items()],
    "records": [[r.hook_name, r.sae_id, r.release] for r in result.saes],
    "tokens": list(result.prompt.tokens),
    "features": features[["layer", "feature", "neuronpedia_url"]].to_dict("records"),
    "agreement": agreement,
}}))
"""


def run_python(env: dict[str, str], args: list[str], timeout: float = 400) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done.stdout


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_the_fake_gemma_cache_holds_what_the_preset_loads(gemma_hub: FakeHub) -> None:
    info = scan_cache_dir(gemma_hub.hub_cache)
    assert not info.warnings, info.warnings
    entry = release_info(GEMMA3_RELEASE)
    assert {repo.repo_id for repo in info.repos} == {GEMMA3_REPO, entry.repo_id}
    assert missing_from_cache(GEMMA3_RELEASE, gemma_hub.hub_cache) == []
    # the 270M checkpoint in the real file's dtype and size class
    (model_repo,) = [repo for repo in info.repos if repo.repo_id == GEMMA3_REPO]
    (revision,) = model_repo.revisions
    sizes = {file.file_name: file.size_on_disk for file in revision.files}
    assert 530e6 < sizes["model.safetensors"] < 545e6  # 268M parameters in bfloat16


@pytest.fixture(scope="module")
def quickstart(gemma_hub: FakeHub) -> dict:
    start = time.perf_counter()
    facts = last_json(run_python(gemma_hub.env(), ["-c", QUICKSTART]))
    print(
        f"gemma-3-270m: load {facts['load_seconds']:.1f} s, trace of {facts['n_tokens']} tokens "
        f"{facts['trace_seconds']:.2f} s, {time.perf_counter() - start:.1f} s in all; "
        f"agreement with transformers {facts['agreement']}"
    )
    return facts


def test_quickstart_loads_gemma_3_at_its_real_shapes_with_its_four_default_saes(
    quickstart: dict,
) -> None:
    assert quickstart["shape"] == [18, 640, 262144, 4, 256, 1, 2048]
    assert quickstart["saes"] == [
        [hook, 640, 16384, "jumprelu", f"gemma-3-270m/{hook.split('.')[1]}-gemmascope-2-res-16k"]
        for hook in HOOKS
    ]
    assert quickstart["records"] == [
        [hook, f"layer_{hook.split('.')[1]}_width_16k_l0_medium", GEMMA3_RELEASE] for hook in HOOKS
    ]
    assert quickstart["tokens"][:3] == ["<bos>", "When", " John"]


def test_the_saes_read_the_residual_stream_transformers_computes(quickstart: dict) -> None:
    """Gemma Scope 2 was trained on transformers' `model.layers.L.output`: TransformerLens's
    `blocks.L.hook_resid_post` must be the same vector (its weight processing included)."""
    for hook in HOOKS:
        assert quickstart["agreement"][hook] < 1e-4, quickstart["agreement"]
    assert quickstart["agreement"]["log_probs"] < 1e-4


def test_quickstart_features_link_to_neuronpedias_gemma_scope_2_pages(quickstart: dict) -> None:
    features = quickstart["features"]
    assert {row["layer"] for row in features} == {6, 10, 13, 16}  # residual depths
    assert 4 * 13 <= len(features) <= 4 * 13 * 100  # sparse, not silent
    for row in features:
        block = row["layer"] - 1
        expected = f"https://www.neuronpedia.org/gemma-3-270m/{block}-gemmascope-2-res-16k/{row['feature']}"
        assert row["neuronpedia_url"] == expected


def test_a_dataset_run_on_gemma_runs_offline_through_the_cli(
    gemma_hub: FakeHub, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"text": TEXT, "answer": " Mary"}, {"text": "The capital of France is"}]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    argv = ["-m", "token_trace.cli", "dataset", str(prompts), "--out", str(out)]
    printed = run_python(gemma_hub.env(), [*argv, "--model", "gemma-3-270m", "--quiet"])
    assert "2 attributed" in printed, printed
    report = (out / "report.html").read_text()
    assert "Top features" in report


@pytest.fixture(scope="module")
def gemma_app(gemma_hub: FakeHub):
    """`python app.py` offline on the Gemma cache, opening on the Gemma preset."""
    with app_py_offline({**gemma_hub.env(), PRESET_ENV: GEMMA3_RELEASE}, timeout=240) as served:
        yield served


def test_the_app_offers_gemma_offline_and_attributes_through_the_api(gemma_app) -> None:
    url, seconds = gemma_app
    config = httpx.get(f"{url}config", timeout=10).json()
    assert GEMMA3_RELEASE in json.dumps(config)
    start = time.perf_counter()
    nodes = Client(url, verbose=False).predict(
        text=TEXT, release=GEMMA3_RELEASE, top_k=0, api_name="/attribute"
    )
    print(f"app.py served in {seconds:.1f} s; /attribute {time.perf_counter() - start:.1f} s")
    assert {node["sae_id"] for node in nodes} == set(release_sae_ids(GEMMA3_RELEASE))
    pages = release_info(GEMMA3_RELEASE).neuronpedia_id
    for node in nodes:
        if node["node_type"] == "feature":
            assert node["neuronpedia_url"] == (
                f"https://www.neuronpedia.org/{pages[node['sae_id']]}/{node['feature']}"
            )


def test_the_apps_graph_endpoint_names_gemma_3_270m(gemma_app) -> None:
    url, _ = gemma_app
    graph = Client(url, verbose=False).predict(
        text=TEXT, release=GEMMA3_RELEASE, max_nodes=40, api_name="/graph"
    )
    assert set(graph) == {"metadata", "qParams", "nodes", "links"}
    assert graph["metadata"]["scan"] == "gemma-3-270m"
    assert graph["metadata"]["feature_details"]["neuronpedia_source_set"] == "gemmascope-2-res-16k"
    kinds = {node["feature_type"] for node in graph["nodes"]}
    assert "logit" in kinds and graph["links"]


def test_gemma_scope_2_loads_from_a_hub_then_offline_from_what_it_downloaded(
    gemma_hub: FakeHub, tmp_path: Path
) -> None:
    """Online, SAELens's `gemma_3` loader asks the (local) hub for each SAE's tensor shapes by
    range requests and downloads its files; offline, the same cache then loads with no hub."""
    code = (
        "import json, time; from token_trace.loading import load_saes, resolve_sae_specs\n"
        "start = time.perf_counter()\n"
        f"saes = load_saes(resolve_sae_specs({GEMMA3_RELEASE!r}, 'gemma-3-270m'), device='cpu')\n"
        "print(json.dumps({'seconds': time.perf_counter() - start,\n"
        "    'saes': [[h, s.cfg.d_in, s.cfg.d_sae] for h, s in saes.items()]}))"
    )
    expected = [[hook, 640, 16384] for hook in HOOKS]
    cache = tmp_path / "downloaded"
    with serve_hub(gemma_hub) as hub:
        online = last_json(run_python(online_env(hub, cache, gemma_hub), ["-c", code]))
    assert online["saes"] == expected
    entry = release_info(GEMMA3_RELEASE)
    for sae_id in release_sae_ids(GEMMA3_RELEASE):
        resolve = f"/{entry.repo_id}/resolve/main/{entry.saes_map[sae_id]}"
        ranges = [r.range for r in hub.requests if r.path == f"{resolve}/params.safetensors"]
        assert "bytes=0-7" in ranges  # the shape query, as the real hub gets it
        assert any(r.path == f"{resolve}/config.json" for r in hub.requests)
    offline_env = {**gemma_hub.env(), "HF_HOME": str(cache), "HF_HUB_CACHE": str(cache / "hub")}
    offline = last_json(run_python(offline_env, ["-c", code]))
    assert offline["saes"] == expected
    print(f"4 Gemma Scope 2 SAEs: {online['seconds']:.1f} s online, {offline['seconds']:.1f} s off")
