"""The bundled demo model and SAEs, checked on the shipped weights (nothing here retrains).

The quality numbers are recomputed from the weights on held-out data rather than read from
`metrics.json`, so a stale or hand-edited metrics file cannot hide a regression. Training itself is
deterministic from a fixed seed (see `training/train.py`); retraining takes minutes, so the
tests check what is cheap to check: the corpus is seeded, and the tokenizer rebuilt from the corpus
code is the shipped one.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from sae_lens import SAE, TopKSAE
from transformer_lens import HookedTransformer

from token_trace.demo import (
    DEMO_MODEL_NAME,
    WEIGHTS_DIR,
    demo_hook_names,
    feature_card,
    load_demo_model,
    load_demo_saes,
)
from training import corpus, evaluate
from training import train as train_module
from training.corpus import IOIExample
from training.word_tokenizer import build_tokenizer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "demo_prompts.json"


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    return load_demo_model()


@pytest.fixture(scope="module")
def saes() -> dict[str, SAE]:
    return load_demo_saes()


@pytest.fixture(scope="module")
def heldout() -> list[IOIExample]:
    return corpus.heldout_ioi_examples(400, seed=7)


@pytest.fixture(scope="module")
def heldout_texts() -> list[str]:
    return corpus.corpus_texts(600, seed=8, split="heldout")


def test_model_identity(model: HookedTransformer) -> None:
    assert DEMO_MODEL_NAME == "ioi-demo"
    assert model.cfg.model_name == DEMO_MODEL_NAME
    assert model.cfg.d_model == 128 and model.cfg.n_ctx == 64
    assert not model.training


def test_heldout_prompts_are_really_held_out(heldout: list[IOIExample]) -> None:
    train_intros = set(corpus.intro_shapes("train"))
    train_actions = set(corpus.action_shapes("train"))
    for example in heldout:
        assert example.intro_shape not in train_intros
        assert example.action_shape not in train_actions
        assert corpus.pair_is_held_out(example.io_name, example.s_name)
        assert example.prompt.endswith(" to")


def test_heldout_ioi_accuracy_and_logit_diff(
    model: HookedTransformer, heldout: list[IOIExample]
) -> None:
    score = evaluate.ioi_score(model, heldout)
    assert score.accuracy >= 0.9
    assert score.logit_diff > 2.0


def test_facts_are_learned(model: HookedTransformer) -> None:
    assert evaluate.next_token_accuracy(model, corpus.fact_prompts()) >= 0.9


def test_induction_is_partly_learned(model: HookedTransformer) -> None:
    """Copying is only partly learned (44% on fresh sequences; the IOI circuit took the capacity
    and the steps), but far above guessing among the prompt's own words (12% on these prompts)."""
    assert evaluate.next_token_accuracy(model, corpus.induction_prompts(200, seed=9)) >= 0.3


@pytest.mark.slow
def test_sae_fve_and_l0_on_heldout_text(
    model: HookedTransformer, saes: dict[str, SAE], heldout_texts: list[str]
) -> None:
    for name, score in evaluate.sae_scores(model, saes, heldout_texts).items():
        assert score.fve >= 0.9, name
        assert score.l0 < 30, name


@pytest.mark.slow
def test_accuracy_with_all_saes_spliced_in(
    model: HookedTransformer, saes: dict[str, SAE], heldout: list[IOIExample]
) -> None:
    clean = evaluate.ioi_score(model, heldout)
    spliced = evaluate.ioi_score(model, heldout, evaluate.splice_hooks(saes))
    assert spliced.accuracy >= clean.accuracy - 0.10


def test_saes_load_through_sae_lens_in_layer_order(saes: dict[str, SAE]) -> None:
    n_layers = len(saes) - 1
    expected = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    expected.append(f"blocks.{n_layers - 1}.hook_resid_post")
    assert list(saes) == expected == demo_hook_names()
    for name in expected:
        sae = SAE.load_from_disk(WEIGHTS_DIR / "saes" / name)
        assert isinstance(sae, TopKSAE)
        assert sae.cfg.k < 30 and not sae.cfg.rescale_acts_by_decoder_norm
        assert sae.cfg.d_in == 128
        assert sae.cfg.apply_b_dec_to_input
        assert sae.cfg.normalize_activations == "none"
        assert sae.cfg.metadata.hook_name == name
        assert sae.cfg.metadata.model_name == DEMO_MODEL_NAME
        assert sae.cfg.metadata.neuronpedia_id is None


def test_tokenizer_round_trip(model: HookedTransformer) -> None:
    text = "When Mary and John went to the store, John gave a drink to Mary."
    tokens = model.to_tokens(text)[0]
    assert tokens[0].item() == model.tokenizer.bos_token_id
    assert model.to_string(tokens[1:]) == text
    assert model.to_str_tokens(" Mary") == ["<|endoftext|>", " Mary"]
    assert model.tokenizer.tokenize(" Mary") == ["ĠMary"]
    assert model.tokenizer.unk_token_id not in tokens.tolist()


def test_every_name_is_one_token(model: HookedTransformer) -> None:
    for name in corpus.NAMES:
        model.to_single_token(" " + name)


def test_shipped_tokenizer_is_rebuilt_by_the_corpus_code() -> None:
    shipped = json.loads((WEIGHTS_DIR / "tokenizer.json").read_text())["model"]["vocab"]
    assert build_tokenizer(corpus.vocabulary()).get_vocab() == shipped


def test_corpus_is_seeded() -> None:
    assert corpus.corpus_texts(50, seed=3) == corpus.corpus_texts(50, seed=3)
    assert corpus.heldout_ioi_examples(20, seed=4) == corpus.heldout_ioi_examples(20, seed=4)


def test_training_is_documented_and_recorded() -> None:
    """The shipped metrics record the seed and settings the training code still uses. (Their
    `rerun` field names the module path of the time, `token_trace.demo.train`, so it is not
    compared: the shipped files stay byte-identical until the next retrain.)"""
    assert "python -m training.train" in (train_module.__doc__ or "")
    metrics = json.loads((WEIGHTS_DIR / "metrics.json").read_text())
    assert metrics["seed"] == train_module.SEED
    assert metrics["model_settings"] == asdict(train_module.MODEL_SETTINGS)
    assert metrics["sae_settings"] == asdict(train_module.SAE_SETTINGS)
    assert metrics["splice_settings"] == asdict(train_module.SPLICE_SETTINGS)


def test_feature_cards_cover_every_feature(saes: dict[str, SAE]) -> None:
    for name, sae in saes.items():
        first = feature_card(name, 0)
        assert first is not None and first["hook_name"] == name and first["feature"] == 0
        assert feature_card(name, sae.cfg.d_sae) is None
        for feature in range(sae.cfg.d_sae):
            card = feature_card(name, feature)
            assert card is not None
            assert 0.0 <= card["density"] <= 1.0
            assert len(card["top_logits"]) == 5
            for context in card["contexts"]:
                assert 0 <= context["index"] < len(context["tokens"])
                assert context["activation"] > 0
    assert feature_card("blocks.99.hook_resid_pre", 0) is None


def test_live_features_have_contexts(saes: dict[str, SAE]) -> None:
    for name in saes:
        cards = [feature_card(name, i) for i in range(saes[name].cfg.d_sae)]
        live = [card for card in cards if card is not None and card["density"] > 0]
        assert live, name
        assert all(card["contexts"] for card in live)


def test_example_prompts_are_answered(model: HookedTransformer) -> None:
    examples = json.loads(EXAMPLES.read_text())
    assert {"ioi", "fact", "induction"} <= {example["name"].split("-")[0] for example in examples}
    for example in examples:
        tokens = model.to_tokens(example["text"])
        assert model.tokenizer.unk_token_id not in tokens[0].tolist()
        answer = model.to_single_token(example["answer"])
        assert model(tokens)[0, -1].argmax().item() == answer, example["name"]
        if "contrast" in example:
            model.to_single_token(example["contrast"])
