"""Bad input gets a clear ValueError; named models and releases resolve without the network."""

from __future__ import annotations

import json
import threading

import pandas as pd
import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from tests.helpers import PROMPT
from token_trace import COLUMNS, LoadError, compute_node_attribution, loading
from token_trace.loading import SAESpec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "empty"),
        ({"text": "   "}, "empty"),
        ({"text": " ".join(["John"] * 30)}, "reads at most"),
        ({"answer": " Mary went", "contrast": " John"}, "is 2 tokens"),
        ({"answer": " Mary", "contrast": " store ,"}, "is 2 tokens"),
        ({"contrast": " John"}, "needs an answer"),
        ({"answer": " Mary", "contrast": " Mary"}, "same token"),
        ({"answer": ""}, "empty"),
        ({"metric": "accuracy"}, "Unknown metric"),
        ({"method": "shapley"}, "Unknown method"),
        ({"method": "ig", "ig_steps": 0}, "at least 1"),
        ({"baseline_text": "When John"}, "same number of tokens"),
        ({"text": torch.zeros(2, 3, dtype=torch.long)}, "1 x T"),
        ({"text": torch.tensor([[0, 10_000]])}, "must lie in"),
        ({"text": torch.tensor([[3]])}, "at least two tokens"),
    ],
)
def test_bad_input_is_a_clear_value_error(model, saes, kwargs, message):
    kwargs = {"text": PROMPT, **kwargs}
    with pytest.raises(ValueError, match=message):
        compute_node_attribution(model=model, saes=saes, **kwargs)


def test_table_schema_and_metadata(model, saes):
    df = compute_node_attribution(PROMPT, model, saes, answer=" Mary")
    assert list(df.columns) == COLUMNS
    assert df["layer"].dtype.kind == "i" and df["position"].dtype.kind == "i"
    assert set(df["node_type"]) == {"feature", "error"}
    errors = df[df.node_type == "error"]
    assert (errors.feature == -1).all() and errors.neuronpedia_url.isna().all()
    assert errors.groupby("hook_name", observed=True).size().eq(len(df.attrs["tokens"])).all()
    features = df[df.node_type == "feature"]
    assert (features.activation > 0).all()
    assert features.neuronpedia_url.str.startswith("https://www.neuronpedia.org/tiny-test/").all()
    assert df.attrs["tokens"][0] == "<|endoftext|>" and df.attrs["bos_position"] == 0
    assert df.attrs["target"] == " Mary" and df.attrs["method"] == "atp"
    assert len(df.attrs["top_predictions"]) == 10
    assert sorted(df.layer.unique()) == [0, 1, 2]  # resid_post of block 1 is layer 2


def test_concurrent_calls_never_mix(model, saes):
    prompts = [PROMPT, "When Mary and John went to the store , Mary gave a drink to"] * 3
    expected = [compute_node_attribution(p, model, saes) for p in prompts]
    results: list[pd.DataFrame | None] = [None] * len(prompts)

    def work(index: int) -> None:
        method = "ig" if index % 2 else "atp"
        results[index] = compute_node_attribution(prompts[index], model, saes, method=method)
        if method == "atp":
            pd.testing.assert_frame_equal(results[index], expected[index])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, result in enumerate(results):
        assert result is not None and result.attrs["tokens"] == expected[index].attrs["tokens"]
    assert not any(hook_point.fwd_hooks for hook_point in model.hook_dict.values())


def test_gpt2_release_resolves_offline():
    specs = loading.resolve_sae_specs(None, "gpt2-small")
    assert [s.sae_id for s in specs] == [f"blocks.{i}.hook_resid_pre" for i in range(12)] + [
        "blocks.11.hook_resid_post"
    ]
    assert loading.model_kwargs_for_release("gpt2-small-res-jb") == {"center_writing_weights": True}
    info = loading.release_info("gpt2-small-res-jb")
    assert info.neuronpedia_id["blocks.11.hook_resid_post"] == "gpt2-small/12-res-jb"
    loading.check_release_matches_model(specs, "gpt2")


@pytest.mark.parametrize(
    ("model", "release", "expected"),
    [
        (
            "gemma-2-2b",
            "gemma-scope-2b-pt-res-canonical",
            [f"layer_{layer}/width_16k/canonical" for layer in range(26)],
        ),
        (
            "gemma-3-270m",
            "gemma-scope-2-270m-pt-res",
            [f"layer_{layer}_width_16k_l0_medium" for layer in (5, 9, 12, 15)],
        ),
    ],
)
def test_gemma_models_pick_their_release_and_one_hosted_16k_sae_per_hook(model, release, expected):
    specs = loading.resolve_sae_specs(None, model)
    assert {spec.release for spec in specs} == {release}
    assert [spec.sae_id for spec in specs] == expected  # in layer order, one per hook
    assert loading.resolve_sae_specs(release, model) == specs  # naming the release alone
    loading.check_release_matches_model(specs, model)
    loading.check_release_matches_model(specs, loading.release_model(release))
    for spec in specs:  # every default is one Neuronpedia hosts, so links and labels work
        hosted = loading.neuronpedia_id(release, spec.sae_id)
        layer = spec.sae_id.split("_")[1].split("/")[0]
        assert hosted is not None and hosted.startswith(f"{model}/{layer}-gemmascope")
    assert loading.model_kwargs_for_release(release) == {}  # Gemma Scope: unprocessed weights


def test_sae_choices_rank_hosted_then_narrow_then_canonical_and_others_stay_pickable():
    choices = loading.sae_choices("gemma-scope-2-270m-pt-res")
    assert list(choices) == ["layer_5", "layer_9", "layer_12", "layer_15"]
    layer_12 = choices["layer_12"]
    assert layer_12[:4] == tuple(
        f"layer_12_width_{w}_l0_medium" for w in ("16k", "65k", "262k", "1m")
    )
    assert set(layer_12) == {
        sae_id for sae_id in loading.release_info("gemma-scope-2-270m-pt-res").saes_map
        if sae_id.startswith("layer_12_")
    }  # fmt: skip
    assert layer_12.index("layer_12_width_262k_l0_medium_seed_1") > layer_12.index(
        "layer_12_width_262k_l0_medium"
    )
    # with no Neuronpedia ids to go by: the smallest width, then the canonical sparsity
    assert loading.sae_choices("gemma-scope-2b-pt-res")["embedding"][0].startswith(
        "embedding/width_4k/"
    )
    # a release with one SAE per hook keeps all of them, in its order
    assert loading.release_sae_ids("gpt2-small-res-jb") == list(
        loading.release_info("gpt2-small-res-jb").saes_map
    )
    # another SAE at a hook: name (release, sae_id) pairs
    pairs = [("gemma-scope-2-270m-pt-res", "layer_12_width_65k_l0_medium")]
    assert loading.resolve_sae_specs(pairs, "gemma-3-270m") == [SAESpec(*pairs[0])]


def test_the_offline_shape_reader_reads_the_header_and_is_undone_after_each_load(
    tmp_path, monkeypatch
):
    import huggingface_hub.constants
    from sae_lens.loading import pretrained_sae_loaders
    from safetensors.torch import save_file

    path = tmp_path / "params.safetensors"
    save_file({"w_enc": torch.zeros(3, 5), "threshold": torch.zeros(5)}, str(path))
    assert loading.safetensors_shapes(path) == {"w_enc": [3, 5], "threshold": [5]}
    original = pretrained_sae_loaders.get_safetensors_tensor_shapes
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with loading._shapes_from_cache_when_offline("gemma-scope-2-270m-pt-res"):
        assert pretrained_sae_loaders.get_safetensors_tensor_shapes is not original
    assert pretrained_sae_loaders.get_safetensors_tensor_shapes is original
    for release in ("gemma-scope-2b-pt-res-canonical", "ioi-demo"):  # loaders that never ask
        with loading._shapes_from_cache_when_offline(release):
            assert pretrained_sae_loaders.get_safetensors_tensor_shapes is original


def test_a_sharded_checkpoint_counts_as_cached_only_with_every_shard(tmp_path):
    from tests.fake_hub import put_repo

    shards = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = {"metadata": {}, "weight_map": {f"w{i}": shard for i, shard in enumerate(shards)}}
    files = {"model.safetensors.index.json": json.dumps(index).encode()}
    put_repo(tmp_path, "google/gemma-2-2b", {**files, **{s: b"x" for s in shards[:2]}})
    assert not loading._weights_cached("google/gemma-2-2b", tmp_path)
    put_repo(tmp_path, "google/gemma-2-2b", {**files, **{s: b"x" for s in shards}})
    assert loading._weights_cached("google/gemma-2-2b", tmp_path)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: loading.resolve_sae_specs("gpt2-small-res-jbb", "gpt2-small"), "Did you mean"),
        (
            lambda: loading.resolve_sae_specs(
                [("gpt2-small-res-jb", "blocks.99.hook_resid_pre")], "gpt2"
            ),
            "has no SAE",
        ),
        (lambda: loading.resolve_sae_specs(None, "pythia-70m"), "No default SAE release"),
        (lambda: loading.load_model("gpt-7-giant"), "Unknown model"),
        (lambda: loading.load_model("gpt2-small", backend="jax"), "Unknown backend 'jax'"),
        (lambda: loading._bridge_processing({"n_devices": 2}), "TransformerBridge loading"),
        (
            lambda: loading.check_release_matches_model(
                [SAESpec("gpt2-small-res-jb", "blocks.0.hook_resid_pre")], "pythia-70m"
            ),
            "trained on",
        ),
    ],
)
def test_unknown_names_are_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_model_object_of_another_class_is_a_clear_type_error(saes):
    with pytest.raises(TypeError, match="HookedTransformer or a TransformerBridge"):
        compute_node_attribution(PROMPT, torch.nn.Linear(2, 2), saes)


def test_the_bundled_model_is_a_hookedtransformer_on_either_backend():
    """It is built from the package's files, not a Hugging Face checkpoint a bridge wraps."""
    bundled = loading.load_model("ioi-demo", "cpu", backend="bridge")
    assert bundled is loading.load_model("ioi-demo", "cpu", backend="hooked")
    assert type(bundled).__name__ == "HookedTransformer"


def test_wrong_hook_is_a_clear_error(model, saes):
    moved = {"blocks.7.hook_resid_pre": next(iter(saes.values()))}
    with pytest.raises(ValueError, match="no hook point"):
        compute_node_attribution(PROMPT, model, moved)


def test_download_failure_is_a_load_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LoadError, match="ioi-demo"):
        loading.load_saes([SAESpec("gpt2-small-res-jb", "blocks.3.hook_resid_pre")], device="cpu")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"normalize_activations": "expected_average_only_in"}, "normalises activations"),
        ({"rescale_acts_by_decoder_norm": True}, "decoder norms"),
    ],
)
def test_saes_whose_decoder_is_not_linear_are_refused(model, setting, message):
    """The engine's nodes assume reconstruction = features @ W_dec + b_dec."""
    hook = "blocks.0.hook_resid_pre"
    cfg = TopKSAEConfig(
        k=4, d_in=model.cfg.d_model, d_sae=32, metadata=SAEMetadata(hook_name=hook), **setting
    )
    with pytest.raises(ValueError, match=message):
        compute_node_attribution(PROMPT, model, {hook: TopKSAE(cfg)})
