"""The default path (GPT-2 small and `gpt2-small-res-jb`) offline, from a fake Hugging Face cache.

`tests/fake_hub.py` writes the files the real repositories serve, under their real names and in
huggingface_hub's cache layout, with small random weights. The library and the CLI then run in
fresh interpreters with HF_HUB_OFFLINE=1 and that cache, so TransformerLens's `from_pretrained`
(through transformers) and SAELens's `SAE.from_pretrained` run their own loading code, the
weight processing and the legacy-config handling included. The cache lookups the app's offline
banner relies on (`missing_from_cache`) are checked in this process against the same cache.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir

from tests.fake_hub import GPT2_REPO, PRESET_RELEASES, PYTHIA_REPO, FakeHub, repo_folder
from tests.helpers import ROOT
from token_trace.loading import missing_from_cache, release_info, release_is_cached
from token_trace.records import Trace

QUICKSTART_TEXT = "When John and Mary went to the shops, John gave the bag to Mary"
RES_JB_HOOKS = [f"blocks.{layer}.hook_resid_pre" for layer in range(12)] + [
    "blocks.11.hook_resid_post"
]

#: The README's Quickstart call, then what it loaded, as one JSON line.
QUICKSTART = f"""
import json, time
import token_trace.pipeline
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
from token_trace import trace
from token_trace.loading import load_model, load_saes, model_kwargs_for_release, resolve_sae_specs

start = time.perf_counter()
result = trace({QUICKSTART_TEXT!r})
seconds = time.perf_counter() - start
model = load_model("gpt2-small")  # the loaders' cached objects that trace used
saes = load_saes(resolve_sae_specs("gpt2-small-res-jb", "gpt2-small"))
stored = load_file(hf_hub_download("gpt2", "model.safetensors"))["wte.weight"]
features = result.nodes[result.nodes["node_type"] == "feature"]
print(json.dumps({{
    "seconds": seconds,
    "model": result.model,
    "n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model, "d_vocab": model.cfg.d_vocab,
    "normalization_type": model.cfg.normalization_type,
    "release_kwargs": model_kwargs_for_release("gpt2-small-res-jb"),
    "sae_kwargs": [sae.cfg.metadata.model_from_pretrained_kwargs for sae in saes.values()],
    "sae_widths": sorted({{(sae.cfg.d_in, sae.cfg.d_sae) for sae in saes.values()}}),
    "stored_row_mean": float(stored.mean(-1).abs().max()),
    "loaded_row_mean": float(model.W_E.mean(-1).abs().max()),
    "hooks": [record.hook_name for record in result.saes],
    "releases": sorted({{record.release for record in result.saes}}),
    "tokens": list(result.prompt.tokens),
    "features": features[["layer", "feature", "neuronpedia_url"]].to_dict("records"),
    "error_urls": result.nodes.loc[result.nodes["node_type"] == "error", "neuronpedia_url"]
    .dropna().tolist(),
    "top": len(result.top_nodes(10, exclude_bos=True)),
}}))
"""


def run_offline(
    fake_hub: FakeHub, args: list[str], timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=fake_hub.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- the cache itself


def test_the_fake_cache_is_a_valid_huggingface_cache(fake_hub: FakeHub) -> None:
    info = scan_cache_dir(fake_hub.hub_cache)
    assert not info.warnings, info.warnings
    repos = {repo.repo_id: repo for repo in info.repos}
    releases = [release_info(release) for release in PRESET_RELEASES]
    assert set(repos) == {GPT2_REPO, PYTHIA_REPO, *(entry.repo_id for entry in releases)}
    for entry in releases:
        (revision,) = repos[entry.repo_id].revisions
        assert "main" in revision.refs
        files = {file.file_name for file in revision.files}
        assert files >= {"cfg.json", "sae_weights.safetensors"}
        # one folder per SAE the registry lists, at the registry's path
        folders = {str(Path(file.file_path).parent.relative_to(revision.snapshot_path))
                   for file in revision.files}  # fmt: skip
        assert folders == set(entry.saes_map.values())


def test_every_preset_is_found_in_the_cache_and_a_missing_file_is_named(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    for release in (*PRESET_RELEASES, "ioi-demo"):
        assert missing_from_cache(release, fake_hub.hub_cache) == [], release
    empty = tmp_path / "empty"
    assert not release_is_cached("gpt2-small-res-jb", empty)
    assert release_is_cached("ioi-demo", empty)  # bundled: nothing to look up

    copy = tmp_path / "hub"
    shutil.copytree(fake_hub.hub_cache, copy, symlinks=True)
    sae_repo = release_info("pythia-70m-deduped-res-sm").repo_id
    (_snapshot(copy, sae_repo) / "3-res-sm" / "sae_weights.safetensors").unlink()
    assert missing_from_cache("pythia-70m-deduped-res-sm", copy) == [
        f"{sae_repo}/3-res-sm/sae_weights.safetensors"
    ]
    # GPT-2's tokenizer loads from tokenizer.json or from vocab.json + merges.txt
    (_snapshot(copy, GPT2_REPO) / "tokenizer.json").unlink()
    assert release_is_cached("gpt2-small-res-jb", copy)
    (_snapshot(copy, GPT2_REPO) / "merges.txt").unlink()
    (_snapshot(copy, GPT2_REPO) / "model.safetensors").unlink()
    missing = missing_from_cache("gpt2-small-res_sll-ajt", copy)
    assert len(missing) == 2 and all(item.startswith("gpt2/") for item in missing)
    assert "model.safetensors" in missing[0] and "tokenizer.json" in missing[1]


def _snapshot(hub_cache: Path, repo_id: str) -> Path:
    folder = repo_folder(hub_cache, repo_id)
    return folder / "snapshots" / (folder / "refs" / "main").read_text()


# --------------------------------------------------------------------------- the library and CLI


@pytest.fixture(scope="module")
def quickstart(fake_hub: FakeHub) -> dict:
    start = time.perf_counter()
    done = run_offline(fake_hub, ["-c", QUICKSTART])
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    facts["log"] = done.stdout + done.stderr
    print(
        f"quickstart: {facts['seconds']:.1f} s in trace, {time.perf_counter() - start:.1f} s in all"
    )
    return facts


@pytest.mark.slow
def test_quickstart_loads_gpt2_through_transformerlens_with_the_releases_processing(
    quickstart: dict,
) -> None:
    assert "Loaded pretrained model gpt2 into HookedTransformer" in quickstart["log"]
    assert quickstart["model"] == "gpt2-small"
    # the fake checkpoint's shape: GPT-2's layers and vocabulary, 64 wide
    assert (quickstart["n_layers"], quickstart["d_model"], quickstart["d_vocab"]) == (12, 64, 50257)
    # the release's model_from_pretrained_kwargs reach both the SAEs and the model's loading
    assert quickstart["release_kwargs"] == {"center_writing_weights": True}
    assert quickstart["sae_kwargs"] == [{"center_writing_weights": True}] * 13
    # centred writing weights: the stored embedding rows have nonzero means, the loaded ones not
    assert quickstart["stored_row_mean"] > 0.01
    assert quickstart["loaded_row_mean"] < 1e-5
    assert quickstart["normalization_type"] == "LNPre"  # layer norms folded, as by default


@pytest.mark.slow
def test_quickstart_uses_the_13_res_jb_saes_and_links_features_to_neuronpedia(
    quickstart: dict,
) -> None:
    assert quickstart["hooks"] == RES_JB_HOOKS
    assert quickstart["releases"] == ["gpt2-small-res-jb"]
    assert quickstart["sae_widths"] == [[64, 128]]
    assert quickstart["tokens"][0] == "<|endoftext|>" and quickstart["tokens"][-1] == " to"
    features = quickstart["features"]
    assert len(features) > 13 * 5  # the fake SAEs are sparse but not silent
    assert {row["layer"] for row in features} == set(range(13))
    for row in features:
        expected = f"https://www.neuronpedia.org/gpt2-small/{row['layer']}-res-jb/{row['feature']}"
        assert row["neuronpedia_url"] == expected
    assert quickstart["error_urls"] == []
    assert quickstart["top"] == 10


@pytest.mark.slow
def test_the_cli_default_runs_offline_from_the_cache(fake_hub: FakeHub, tmp_path: Path) -> None:
    saved = tmp_path / "run.parquet"
    start = time.perf_counter()
    done = run_offline(
        fake_hub,
        [
            "-m",
            "token_trace.cli",
            QUICKSTART_TEXT,
            "--device",
            "cpu",
            "--top",
            "5",
            "--save",
            str(saved),
        ],
    )
    print(f"CLI: {time.perf_counter() - start:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "nodes; top 5 by |attribution|" in done.stdout, done.stdout
    result = Trace.load(saved)
    assert result.model == "gpt2-small"
    assert [record.hook_name for record in result.saes] == RES_JB_HOOKS
    assert {record.release for record in result.saes} == {"gpt2-small-res-jb"}
