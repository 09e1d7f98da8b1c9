"""The Gemma-2-2B preset's SAEs at their real shapes through SAELens's `gemma_2` loader.

Gemma-2-2B itself (2.6B parameters, 10.5 GB of float32 shards) is too large to fake on a test
machine, and TransformerLens would ignore a smaller config. So one layer's 16k canonical SAE is
written as `google/gemma-scope-2b-pt-res` serves it (`layer_12/width_16k/average_l0_N/params.npz`,
W_enc [2304, 16384]: ~300 MB) and loaded offline through the library in a fresh interpreter; the
model is checked as far as its architecture: TransformerLens's own Gemma-2-2B config, built on
the meta device (no weights), must have the hook each SAE reads at the SAE's width.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fake_gemma import GEMMA2_RELEASE, GEMMA2_REPO, build_gemma2_scope_hub
from tests.fake_hub import FakeHub
from tests.helpers import ROOT
from token_trace.loading import missing_from_cache, release_info, release_sae_ids

pytestmark = pytest.mark.slow

LAYER = 12
SAE_ID = f"layer_{LAYER}/width_16k/canonical"

LOAD = f"""
import json, time, torch
from transformer_lens import HookedTransformer
from transformer_lens.loading_from_pretrained import get_pretrained_model_config
from token_trace.loading import SAESpec, check_saes_fit_model, load_saes
start = time.perf_counter()
saes = load_saes([SAESpec({GEMMA2_RELEASE!r}, {SAE_ID!r})], device="cpu")
seconds = time.perf_counter() - start
(hook, sae), = saes.items()
cfg = get_pretrained_model_config({GEMMA2_REPO!r}, device="meta")
with torch.device("meta"):
    model = HookedTransformer(cfg, move_to_device=False)
check_saes_fit_model(saes, model)
x = torch.randn(8, 2304, generator=torch.Generator().manual_seed(0))
x = 60 * x / x.norm(dim=-1, keepdim=True)  # the norm the fake SAE is scaled for
print(json.dumps({{
    "seconds": seconds, "hook": hook, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae,
    "architecture": sae.cfg.architecture(), "neuronpedia_id": sae.cfg.metadata.neuronpedia_id,
    "model": [cfg.n_layers, cfg.d_model, cfg.d_vocab],
    "parameters": sum(p.numel() for p in model.parameters()),
    "active": float((sae.encode(x) > 0).sum(-1).float().mean()),
}}))
"""


@pytest.fixture(scope="module")
def gemma2_hub(tmp_path_factory: pytest.TempPathFactory) -> FakeHub:
    return build_gemma2_scope_hub(tmp_path_factory.mktemp("fake-gemma2-home"), [LAYER])


def test_a_gemma_scope_sae_loads_offline_at_its_real_shape_and_fits_gemma_2_2b(
    gemma2_hub: FakeHub,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOAD],
        cwd=ROOT,
        env=gemma2_hub.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"one Gemma Scope SAE (2304 x 16384) loaded offline in {facts['seconds']:.1f} s")
    assert facts["hook"] == f"blocks.{LAYER}.hook_resid_post"
    assert (facts["d_in"], facts["d_sae"], facts["architecture"]) == (2304, 16384, "jumprelu")
    assert facts["neuronpedia_id"] == f"gemma-2-2b/{LAYER}-gemmascope-res-16k"
    assert facts["model"] == [26, 2304, 256000]
    # 2.6B parameters, plus the tied embedding's copy as TransformerLens's own W_U (0.59B)
    assert 3.1e9 < facts["parameters"] < 3.3e9
    assert 0 < facts["active"] < 200  # the fake SAE is sparse on inputs of its scale


def test_the_cache_check_names_what_gemma_2_2b_still_lacks(gemma2_hub: FakeHub) -> None:
    missing = missing_from_cache(GEMMA2_RELEASE, gemma2_hub.hub_cache)
    entry = release_info(GEMMA2_RELEASE)
    assert missing[0].startswith(f"{GEMMA2_REPO}/model.safetensors or ")  # no weights
    assert missing[1].startswith(f"{GEMMA2_REPO}/tokenizer.json")
    expected = [
        f"{entry.repo_id}/{entry.saes_map[sae_id]}/params.npz"
        for sae_id in release_sae_ids(GEMMA2_RELEASE)
        if sae_id != SAE_ID
    ]
    assert missing[2:] == expected and len(expected) == 25
