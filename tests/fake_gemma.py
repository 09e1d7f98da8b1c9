"""Fake Hugging Face repositories for the Gemma presets, at the real shapes.

TransformerLens hard-codes the architecture of official Gemma models (it never reads their
`config.json` for shapes) and SAELens's `gemma_2` loader fixes an SAE's width from its repo id and
folder, so unlike `tests/fake_hub.py`'s 64-wide GPT-2 these fakes have the real sizes:

- `google/gemma-3-270m`: `config.json` as the real repository serves it (circuit-tracer's test
  copies it), random weights (seeded) in one `model.safetensors` in bfloat16 under the real tensor
  names (`model.embed_tokens.weight`, `model.layers.0.self_attn.q_norm.weight`, ...; the unembedding
  is tied, so not stored), and a SentencePiece-style BPE tokenizer (`tokenizer.json`: `▁` for
  spaces, byte fallback, `<bos>` prepended) trained here on a few sentences and padded to the real
  262,144 entries with Gemma 3's special tokens at their real ids (`<pad>` 0, `<eos>` 1, `<bos>` 2,
  `<unk>` 3, `<mask>` 4, `[multimodal]` 5, `<start_of_turn>` 105, `<end_of_turn>` 106,
  `<start_of_image>` 255999, `<end_of_image>` 256000); the byte tokens' ids are not the real ones.
- `google/gemma-scope-2-270m-pt`: for the SAEs the preset loads, `{path}/config.json` with the real
  files' keys (`width`, `model_name`, `architecture: jump_relu`, `l0`, `hf_hook_point_in`/`_out`,
  `type`, `affine_connection`) and `{path}/params.safetensors` in float32 with the keys and shapes
  SAELens's `gemma_3` loader reads (`w_enc` [640, 16384], `w_dec`, `b_enc`, `b_dec`, `threshold`).
- `google/gemma-scope-2b-pt-res`: `{path}/params.npz` (`W_enc` [2304, 16384], `W_dec`, `b_enc`,
  `b_dec`, `threshold`; ~300 MB each) for a few layers only (`gemma_2_scope_files`).

SAE weights are random but sparse in use: unit decoder rows, encoder columns along them scaled by
the norm the fake model's residual stream has at that layer, and a JumpReLU threshold that lets a
few dozen of the 16,384 features fire per token.

What these files cannot prove: that the real checkpoints' values load right (only names, shapes
and dtypes are the real ones), that the byte tokens and the trained merges match the real
tokenizer's, and, for Gemma-2-2B, anything about the model (its 2.6B-parameter checkpoint is not
faked: only its SAEs are, on a few layers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from tests.fake_hub import CORPUS, FakeHub, _json, _safetensors, put_repo
from token_trace.loading import release_sae_ids

GEMMA3_REPO = "google/gemma-3-270m"
GEMMA2_REPO = "google/gemma-2-2b"
GEMMA3_RELEASE = "gemma-scope-2-270m-pt-res"
GEMMA2_RELEASE = "gemma-scope-2b-pt-res-canonical"
#: Gemma Scope SAE widths (both presets load the 16k ones).
D_SAE = 16384
#: The fake SAEs' JumpReLU threshold, in standard deviations of a feature's pre-activation:
#: about 0.1% of 16,384 random features pass it per token.
THRESHOLD = 3.2

#: `google/gemma-3-270m`'s `config.json` (as circuit-tracer's tests copy it).
GEMMA3_CONFIG: dict[str, object] = {
    "_sliding_window_pattern": 6,
    "architectures": ["Gemma3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "final_logit_softcapping": None,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 640,
    "initializer_range": 0.02,
    "intermediate_size": 2048,
    "layer_types": [
        "full_attention" if (layer + 1) % 6 == 0 else "sliding_attention" for layer in range(18)
    ],
    "max_position_embeddings": 32768,
    "model_type": "gemma3_text",
    "num_attention_heads": 4,
    "num_hidden_layers": 18,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 512,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.55.0.dev0",
    "use_bidirectional_attention": False,
    "use_cache": True,
    "vocab_size": 262144,
}

#: `google/gemma-2-2b`'s `config.json` (TransformerLens reads it for the dtype and the tokenizer,
#: not for shapes). The real repository stores the weights as three float32 shards
#: (`model-0000N-of-00003.safetensors` and `model.safetensors.index.json`): not faked here.
GEMMA2_CONFIG: dict[str, object] = {
    "architectures": ["Gemma2ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0,
    "bos_token_id": 2,
    "cache_implementation": "hybrid",
    "eos_token_id": 1,
    "final_logit_softcapping": 30.0,
    "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 2304,
    "initializer_range": 0.02,
    "intermediate_size": 9216,
    "max_position_embeddings": 8192,
    "model_type": "gemma2",
    "num_attention_heads": 8,
    "num_hidden_layers": 26,
    "num_key_value_heads": 4,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 256000,
}

#: Gemma 3's special tokens at their real ids.
GEMMA3_SPECIALS = {
    "<pad>": 0,
    "<eos>": 1,
    "<bos>": 2,
    "<unk>": 3,
    "<mask>": 4,
    "[multimodal]": 5,
    "<start_of_turn>": 105,
    "<end_of_turn>": 106,
    "<start_of_image>": 255999,
    "<end_of_image>": 256000,
}


# --------------------------------------------------------------------------- tokenizer


def gemma_tokenizer_files(size: int, specials: dict[str, int]) -> dict[str, bytes]:
    """`tokenizer.json` (+ config and special-token map) in the SentencePiece-BPE form Gemma's
    repositories serve, `size` entries, `specials` at their ids, the rest trained or filler."""
    trainer_model = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    trainer_model.normalizer = normalizers.Replace(" ", "▁")
    trainer_model.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=800, show_progress=False, special_tokens=[])
    trainer_model.train_from_iterator(list(CORPUS) * 4, trainer=trainer)
    data = json.loads(trainer_model.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["merges"]]
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]
    vocab = dict(specials)
    free = (i for i in range(size) if i not in set(specials.values()))
    for token in [*byte_tokens, *sorted(data["vocab"], key=data["vocab"].__getitem__)]:
        if token not in vocab:
            vocab[token] = next(free)
    for i in free:
        vocab[f"<unused{i}>"] = i
    assert len(vocab) == size

    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>")
    )
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
    )
    tokenizer.add_special_tokens(list(specials))
    names = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return {
        "tokenizer.json": tokenizer.to_str().encode(),
        "tokenizer_config.json": _json(
            {
                **names,
                "add_bos_token": True,
                "add_eos_token": False,
                "clean_up_tokenization_spaces": False,
                "model_max_length": 1000000000000000019884624838656,
                "padding_side": "left",
                "spaces_between_special_tokens": False,
                "tokenizer_class": "GemmaTokenizer",
            }
        ),
        "special_tokens_map.json": _json(names),
    }


# --------------------------------------------------------------------------- the model


def random_gemma3(seed: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A randomly initialised Gemma-3-270M (transformers' own class) and its checkpoint in
    bfloat16 under the real names (the tied unembedding is not stored)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = {k: v for k, v in GEMMA3_CONFIG.items() if k not in ("architectures", "torch_dtype")}
    model = Gemma3ForCausalLM(Gemma3TextConfig(**config)).eval()
    with torch.no_grad():  # Gemma's norms scale by (1 + weight): give them some spread
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.1)
    state = {
        name: tensor.to(torch.bfloat16)
        for name, tensor in model.state_dict().items()
        if name != "lm_head.weight"
    }
    return model, state


def residual_norms(model: torch.nn.Module, tokenizer: Tokenizer) -> list[float]:
    """Mean norm of the residual stream after each block (transformers' hidden states; the
    last one is taken before the final norm)."""
    ids = torch.tensor([tokenizer.encode(" ".join(CORPUS)).ids[:64]])
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states
    norms = [float(state[0, 1:].norm(dim=-1).mean()) for state in states[1:]]
    norms[-1] = norms[-2]
    return norms


# --------------------------------------------------------------------------- SAEs


def jumprelu_tensors(d_in: int, scale: float, seed: int) -> dict[str, torch.Tensor]:
    """Gemma Scope's JumpReLU tensors (`w_enc` [d_in, d_sae], `w_dec`, `b_enc`, `b_dec`,
    `threshold`), pre-activations of about unit spread on inputs of norm `scale`."""
    generator = torch.Generator().manual_seed(seed)
    decoder = torch.randn(D_SAE, d_in, generator=generator)
    decoder = decoder / decoder.norm(dim=-1, keepdim=True)
    return {
        "w_enc": (decoder.T * (d_in**0.5 / scale)).contiguous(),
        "w_dec": decoder,
        "b_enc": torch.zeros(D_SAE),
        "b_dec": torch.zeros(d_in),
        "threshold": torch.full((D_SAE,), THRESHOLD),
    }


def _layer(sae_id: str) -> int:
    return int(sae_id.split("_")[1].split("/")[0])


def gemma_scope_2_files(norms: list[float], scratch: Path, seed: int) -> tuple[str, dict]:
    """`google/gemma-scope-2-270m-pt`'s files for the SAEs the preset loads."""
    info = get_pretrained_saes_directory()[GEMMA3_RELEASE]
    files: dict[str, bytes] = {}
    for sae_id in release_sae_ids(GEMMA3_RELEASE):
        layer, path = _layer(sae_id), info.saes_map[sae_id]
        point = f"model.layers.{layer}.output"
        files[f"{path}/config.json"] = _json(
            {
                "width": D_SAE,
                "model_name": "google/gemma-3-270m-pt",
                "architecture": "jump_relu",
                "l0": 60,
                "affine_connection": False,
                "hf_hook_point_in": point,
                "hf_hook_point_out": point,
                "type": "sae",
            }
        )
        tensors = jumprelu_tensors(640, norms[layer], seed + layer)
        files[f"{path}/params.safetensors"] = _safetensors(tensors, scratch)
    return info.repo_id, files


def gemma_2_scope_files(layers: list[int], scratch: Path, seed: int) -> tuple[str, dict]:
    """`google/gemma-scope-2b-pt-res`'s `params.npz` for the 16k canonical SAEs of `layers`,
    at the paths the registry resolves them to (`layer_L/width_16k/average_l0_N`)."""
    info = get_pretrained_saes_directory()[GEMMA2_RELEASE]
    files: dict[str, bytes] = {}
    for layer in layers:
        path = info.saes_map[f"layer_{layer}/width_16k/canonical"]
        tensors = jumprelu_tensors(2304, 60.0, seed + layer)
        arrays = {key.replace("w_", "W_"): value.numpy() for key, value in tensors.items()}
        target = scratch / "params.npz"
        np.savez(target, **arrays)
        files[f"{path}/params.npz"] = target.read_bytes()
    return info.repo_id, files


# --------------------------------------------------------------------------- the caches


def build_gemma2_scope_hub(root: Path, layers: list[int], seed: int = 0) -> FakeHub:
    """Gemma Scope's 16k canonical SAEs of `layers` at their real shapes (~300 MB each) and
    Gemma-2-2B's `config.json` (no weights), in a cache under `root`."""
    hub = FakeHub(Path(root))
    scratch = hub.root / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    repo_id, files = gemma_2_scope_files(layers, scratch, seed)
    put_repo(hub.hub_cache, repo_id, files)
    put_repo(hub.hub_cache, GEMMA2_REPO, {"config.json": _json(GEMMA2_CONFIG)})
    (scratch / "params.npz").unlink()
    scratch.rmdir()
    return hub


def build_gemma3_hub(root: Path, seed: int = 0) -> FakeHub:
    """Gemma-3-270M and the four SAEs its preset loads, in a cache under `root` (HF_HOME).
    About 40 s and 840 MB on disk; 3 GB of memory while it runs."""
    hub = FakeHub(Path(root))
    scratch = hub.root / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    tokens = gemma_tokenizer_files(262144, GEMMA3_SPECIALS)
    model, state = random_gemma3(seed)
    put_repo(
        hub.hub_cache,
        GEMMA3_REPO,
        {
            "config.json": _json(GEMMA3_CONFIG),
            "generation_config.json": _json(
                {"bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0}
            ),
            "model.safetensors": _safetensors(state, scratch),
            **tokens,
        },
    )
    del state
    norms = residual_norms(model, Tokenizer.from_str(tokens["tokenizer.json"].decode()))
    repo_id, files = gemma_scope_2_files(norms, scratch, seed + 100)
    put_repo(hub.hub_cache, repo_id, files)
    for leftover in scratch.iterdir():
        leftover.unlink()
    scratch.rmdir()
    return hub
