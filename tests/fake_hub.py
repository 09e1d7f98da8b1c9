"""A fake Hugging Face hub cache: for each of the app's presets, the files its real loaders read.

The hub cannot be reached from CI, yet the default path of the library (GPT-2 small through
TransformerLens's `from_pretrained`, SAEs through SAELens's `SAE.from_pretrained`) and the app's
non-bundled presets must be exercised with their real loading code. This module writes a cache
directory in huggingface_hub's own layout (`models--ORG--NAME/{blobs,refs,snapshots}`, files
as relative symlinks from a snapshot to content-addressed blobs, `refs/main` naming the
snapshot) with:

- each model repository's files under their real names: transformers' `config.json` with the real
  architecture, layer count, context length and vocabulary size but a width of 64, random
  weights in `model.safetensors` under the tensor names the real checkpoints use, and a small
  byte-level BPE tokenizer trained here, its vocabulary padded with filler entries to the real
  tokenizer's size so special tokens keep their real ids (GPT-2: `vocab.json`, `merges.txt`,
  `tokenizer.json`; Pythia: `tokenizer.json`);
- each SAE release's repository: `{path}/cfg.json` and `{path}/sae_weights.safetensors` at every
  path the release's registry entry lists (SAELens's `sae_lens_huggingface_loader` reads exactly
  these, and `sparsity.safetensors` when present). `gpt2-small-res-jb`'s configs use the
  pre-SAELens-6 keys its repository holds (`hook_point`, `hook_point_layer`, `dtype:
  "torch.float32"`, ...; the key set follows SAELens's own test of that file), so the loader's
  legacy path runs. For `gpt2-small-res_sll-ajt` and `pythia-70m-deduped-res-sm` the exact files
  could not be checked from here (no hub access); they get the flat SAELens 5 config schema that
  converted releases use.

SAE weights are random but sparse in use: unit decoder rows, encoder columns along them scaled
by the typical norm of the activation at that hook (measured on the fake model), and a negative
encoder bias, so that a handful of the 128 features fire per token.

Tests that load from this cache run in a subprocess with `FakeHub.env()`: huggingface_hub and
transformers read the cache location and HF_HUB_OFFLINE into module constants at import, and
the library caches loaded models and its one hub probe per process, so patching the running test
process would leak into every later test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

#: The fake models' width: small enough to build and run in seconds, divisible by the head counts.
D_MODEL = 64
#: Features per fake SAE.
D_SAE = 128
#: Threshold of the fake SAEs' encoders, in standard deviations of a feature's pre-activation.
THRESHOLD = 1.6
#: Size of the BPE vocabulary actually trained (the rest of the vocabulary is filler).
TRAINED_VOCAB = 1200

GPT2_REPO = "gpt2"
PYTHIA_REPO = "EleutherAI/pythia-70m-deduped"
#: The app's presets that need downloads, served from this cache.
PRESET_RELEASES = ("gpt2-small-res-jb", "gpt2-small-res_sll-ajt", "pythia-70m-deduped-res-sm")

CORPUS = (
    "When John and Mary went to the shops, John gave the bag to Mary.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The Eiffel Tower is located in the city of Paris.",
    "Mr and Mrs Dursley, of number four, Privet Drive, were proud to say that they were "
    "perfectly normal, thank you very much.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "She said that the cat sat on the mat because it was warm in the sun.",
    "After the meeting, Sarah and Tom walked home together through the park.",
    "A language model predicts the next token from the tokens before it.",
)


@dataclass(frozen=True)
class FakeHub:
    """A built fake cache: `HF_HOME` is `root`, the hub cache `root / "hub"`."""

    root: Path

    @property
    def hub_cache(self) -> Path:
        return self.root / "hub"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for a subprocess that loads only from this cache, never the network."""
        env = dict(os.environ if base is None else base)
        for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_CACHE", "SPACE_ID"):
            env.pop(key, None)
        env.update(
            HF_HOME=str(self.root),
            HF_HUB_CACHE=str(self.hub_cache),
            HF_HUB_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            TOKENIZERS_PARALLELISM="false",
        )
        return env


# --------------------------------------------------------------------------- the cache layout


def repo_folder(hub_cache: Path, repo_id: str) -> Path:
    """Where huggingface_hub keeps a model repository: `models--ORG--NAME`."""
    return hub_cache / ("models--" + repo_id.replace("/", "--"))


def put_repo(hub_cache: Path, repo_id: str, files: Mapping[str, bytes]) -> Path:
    """Write a repository's files as one snapshot of `main`; returns the snapshot folder.

    The commit id is derived from the contents, so a rebuilt cache has the same layout.
    """
    folder = repo_folder(hub_cache, repo_id)
    digest = hashlib.sha1(repo_id.encode())
    for name in sorted(files):
        digest.update(name.encode() + hashlib.sha256(files[name]).digest())
    commit = digest.hexdigest()
    snapshot = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.symlink_to(os.path.relpath(blob, target.parent))
        except OSError:  # no symlinks here: huggingface_hub then keeps a copy too
            shutil.copyfile(blob, target)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


def _safetensors(tensors: Mapping[str, torch.Tensor], scratch: Path) -> bytes:
    path = scratch / "tensors.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(path))
    return path.read_bytes()


# --------------------------------------------------------------------------- tokenizers


def trained_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary and merges trained on a few sentences (any text encodes)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(CORPUS) * 4, trainer=trainer)
    data = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["merges"]]
    return data["vocab"], merges


def padded_vocab(
    trained: Mapping[str, int], size: int, specials: Mapping[str, int]
) -> dict[str, int]:
    """`size` entries: the special tokens at their real ids, the trained tokens in order, and
    filler entries (never produced by encoding; printable ASCII, so they decode) up to `size`."""
    vocab = dict(specials)
    taken = set(specials.values())
    free = (i for i in range(size) if i not in taken)
    for token in sorted(trained, key=trained.__getitem__):
        vocab[token] = next(free)
    for i in free:
        vocab[f"<filler{i}>"] = i
    assert len(vocab) == size and set(vocab.values()) == set(range(size))
    return vocab


def byte_level_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def gpt2_tokenizer_files(trained, merges) -> dict[str, bytes]:
    """GPT-2's tokenizer files: 50257 entries, `<|endoftext|>` = 50256, as in the real one."""
    vocab = padded_vocab(trained, 50257, {"<|endoftext|>": 50256})
    tokenizer = byte_level_tokenizer(vocab, merges)
    tokenizer.add_special_tokens(["<|endoftext|>"])
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False).encode(),
        "merges.txt": merges_txt.encode(),
        "tokenizer.json": tokenizer.to_str().encode(),
        "tokenizer_config.json": _json({"model_max_length": 1024}),
    }


def pythia_tokenizer_files(trained, merges) -> dict[str, bytes]:
    """GPT-NeoX's tokenizer as Pythia ships it: `tokenizer.json` only, `<|endoftext|>` = 0,
    `<|padding|>` = 1, 50277 entries (below the model's 50304 rows, as in the real one)."""
    specials = {"<|endoftext|>": 0, "<|padding|>": 1}
    vocab = padded_vocab(trained, 50277, specials)
    tokenizer = byte_level_tokenizer(vocab, merges)
    tokenizer.add_special_tokens(list(specials))
    return {
        "tokenizer.json": tokenizer.to_str().encode(),
        "tokenizer_config.json": _json(
            {
                "add_prefix_space": False,
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "tokenizer_class": "GPTNeoXTokenizer",
            }
        ),
        "special_tokens_map.json": _json(
            {
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        ),
    }


# --------------------------------------------------------------------------- models


def gpt2_config() -> dict[str, object]:
    """GPT-2 small's `config.json`, but 64 wide with 4 heads."""
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 50256,
        "embd_pdrop": 0.1,
        "eos_token_id": 50256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": 1024,
        "n_embd": D_MODEL,
        "n_head": 4,
        "n_layer": 12,
        "n_positions": 1024,
        "resid_pdrop": 0.1,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": 50257,
    }


def pythia_config() -> dict[str, object]:
    """Pythia-70m-deduped's `config.json`, but 64 wide (4 heads of 16, MLP 256)."""
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "gelu",
        "hidden_size": D_MODEL,
        "initializer_range": 0.02,
        "intermediate_size": 4 * D_MODEL,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 2048,
        "model_type": "gpt_neox",
        "num_attention_heads": 4,
        "num_hidden_layers": 6,
        "rotary_emb_base": 10000,
        "rotary_pct": 0.25,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_parallel_residual": True,
        "vocab_size": 50304,
    }


def random_gpt2(seed: int) -> tuple[GPT2LMHeadModel, dict[str, torch.Tensor]]:
    """A randomly initialised GPT-2 and its checkpoint under the real file's names.

    GPT-2's `model.safetensors` holds the bare transformer (`wte.weight`, `h.0.attn.c_attn.weight`,
    ...: no `transformer.` prefix, no `lm_head`, which is tied to `wte`).
    """
    torch.manual_seed(seed)
    config = {k: v for k, v in gpt2_config().items() if k != "architectures"}
    model = GPT2LMHeadModel(GPT2Config(**config)).eval()
    _shift_means(model.transformer.wte.weight, model.transformer.wpe.weight)
    state = {
        name.removeprefix("transformer."): tensor
        for name, tensor in model.state_dict().items()
        if name.startswith("transformer.") and not name.endswith((".attn.bias", ".masked_bias"))
    }
    return model, state


def random_pythia(seed: int) -> tuple[GPTNeoXForCausalLM, dict[str, torch.Tensor]]:
    """A randomly initialised Pythia-shaped model and its checkpoint under the real names
    (`gpt_neox.embed_in.weight`, `gpt_neox.layers.0.attention.query_key_value.weight`, ...,
    `embed_out.weight`)."""
    torch.manual_seed(seed)
    config = {k: v for k, v in pythia_config().items() if k not in ("architectures", "torch_dtype")}
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**config)).eval()
    _shift_means(model.gpt_neox.embed_in.weight)
    state = {
        name: tensor
        for name, tensor in model.state_dict().items()
        if not name.endswith((".attention.bias", ".masked_bias", ".inv_freq"))
    }
    return model, state


def _shift_means(*weights: torch.Tensor) -> None:
    """Give each embedding row a nonzero mean, so that centring (TransformerLens's
    `center_writing_weights`) visibly changes the loaded weights."""
    with torch.no_grad():
        for weight in weights:
            weight.add_(0.05)


def hidden_norms(model: torch.nn.Module, tokenizer: Tokenizer) -> list[float]:
    """Mean norm of the (centred) residual stream entering each block and after the last, from
    the model's hidden states (the last one is taken before the final layer norm)."""
    ids = torch.tensor([tokenizer.encode(" ".join(CORPUS)).ids[:128]])
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states
    # TransformerLens centres the writing weights, so the activations SAEs read have zero mean
    # over d_model: measure the norm of that part.
    centred = [state[0, 1:] - state[0, 1:].mean(-1, keepdim=True) for state in states]
    norms = [float(state.norm(dim=-1).mean()) for state in centred]
    norms[-1] = norms[-2]  # hidden_states[-1] is after the final layer norm
    return norms


# --------------------------------------------------------------------------- SAEs


def random_sae_tensors(d_in: int, scale: float, seed: int) -> dict[str, torch.Tensor]:
    """SAELens's standard SAE tensors (`W_enc` [d_in, d_sae], `W_dec`, `b_enc`, `b_dec`) with
    pre-activations of about unit spread on inputs of norm `scale`, and a bias that lets only
    those above `THRESHOLD` fire."""
    generator = torch.Generator().manual_seed(seed)
    decoder = torch.randn(D_SAE, d_in, generator=generator)
    decoder = decoder / decoder.norm(dim=-1, keepdim=True)
    encoder = decoder.T * (d_in**0.5 / scale)
    return {
        "W_enc": encoder.contiguous(),
        "W_dec": decoder,
        "b_enc": torch.full((D_SAE,), -THRESHOLD),
        "b_dec": torch.zeros(d_in),
    }


def _hook_index(hook_name: str, n_layers: int) -> int:
    """Index into `hidden_norms` of the activation a residual hook reads."""
    block = int(hook_name.split(".")[1])
    return block + 1 if hook_name.endswith("hook_resid_post") else block


def res_jb_cfg(hook_name: str) -> dict[str, object]:
    """A `gpt2-small-res-jb` `cfg.json`: the training run's config as the repository holds it
    (pre-SAELens-6 keys), with the fake width."""
    layer = int(hook_name.split(".")[1])
    return {
        "model_name": "gpt2-small",
        "hook_point": hook_name,
        "hook_point_layer": layer,
        "hook_point_head_index": None,
        "dataset_path": "Skylion007/openwebtext",
        "is_dataset_tokenized": False,
        "context_size": 128,
        "use_cached_activations": False,
        "cached_activations_path": f"activations/Skylion007_openwebtext/gpt2-small/{hook_name}",
        "d_in": D_MODEL,
        "n_batches_in_buffer": 128,
        "total_training_tokens": 300000000,
        "store_batch_size": 32,
        "device": "mps",
        "seed": 42,
        "dtype": "torch.float32",
        "b_dec_init_method": "geometric_median",
        "expansion_factor": D_SAE // D_MODEL,
        "from_pretrained_path": None,
        "l1_coefficient": 8e-05,
        "lr": 0.0004,
        "lr_scheduler_name": None,
        "lr_warm_up_steps": 5000,
        "train_batch_size": 4096,
        "use_ghost_grads": False,
        "feature_sampling_window": 1000,
        "feature_sampling_method": None,
        "resample_batches": 1028,
        "feature_reinit_scale": 0.2,
        "dead_feature_window": 5000,
        "dead_feature_estimation_method": "no_fire",
        "dead_feature_threshold": 1e-08,
        "log_to_wandb": True,
        "wandb_project": "mats_sae_training_gpt2_small_resid_pre_5",
        "wandb_entity": None,
        "wandb_log_frequency": 100,
        "n_checkpoints": 10,
        "checkpoint_path": "checkpoints/fake",
        "d_sae": D_SAE,
        "tokens_per_buffer": 67108864,
        "run_name": f"{D_SAE}-L1-8e-05-LR-0.0004-Tokens-3.000e+08",
    }


def flat_cfg(model_name: str, hook_name: str, dataset: str) -> dict[str, object]:
    """The flat SAELens 5 config schema (SAEConfig.to_dict) that converted releases use."""
    return {
        "architecture": "standard",
        "d_in": D_MODEL,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "model_name": model_name,
        "hook_name": hook_name,
        "hook_layer": int(hook_name.split(".")[1]),
        "hook_head_index": None,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "sae_lens_training_version": None,
        "prepend_bos": True,
        "dataset_path": dataset,
        "context_size": 128,
        "normalize_activations": "none",
        "dataset_trust_remote_code": True,
    }


def release_files(
    release: str, norms: list[float], n_layers: int, scratch: Path, seed: int
) -> tuple[str, dict[str, bytes]]:
    """The repository id and files of one SAE release, at the paths its registry entry lists."""
    info = get_pretrained_saes_directory()[release]
    files: dict[str, bytes] = {}
    for index, (sae_id, path) in enumerate(info.saes_map.items()):
        tensors = random_sae_tensors(
            D_MODEL, norms[_hook_index(sae_id, n_layers)], seed * 100 + index
        )
        if release == "gpt2-small-res-jb":
            cfg = res_jb_cfg(sae_id)
            log_density = torch.full((D_SAE,), -2.0) - torch.rand(D_SAE)
            files[f"{path}/sparsity.safetensors"] = _safetensors({"sparsity": log_density}, scratch)
        elif release.startswith("pythia"):
            cfg = flat_cfg(info.model, sae_id, "monology/pile-uncopyrighted")
        else:
            cfg = flat_cfg(info.model, sae_id, "Skylion007/openwebtext")
        files[f"{path}/cfg.json"] = _json(cfg)
        files[f"{path}/sae_weights.safetensors"] = _safetensors(tensors, scratch)
    return info.repo_id, files


# --------------------------------------------------------------------------- the whole cache


def build_fake_hub(root: Path, seed: int = 0) -> FakeHub:
    """Write the cache under `root` (HF_HOME) and return it. Takes a few seconds."""
    hub = FakeHub(Path(root))
    scratch = hub.root / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    trained, merges = trained_bpe()

    gpt2_tokens = gpt2_tokenizer_files(trained, merges)
    gpt2, gpt2_state = random_gpt2(seed)
    generation = _json({"bos_token_id": 50256, "eos_token_id": 50256})
    put_repo(
        hub.hub_cache,
        GPT2_REPO,
        {
            "config.json": _json(gpt2_config()),
            "generation_config.json": generation,
            "model.safetensors": _safetensors(gpt2_state, scratch),
            **gpt2_tokens,
        },
    )
    gpt2_norms = hidden_norms(gpt2, Tokenizer.from_str(gpt2_tokens["tokenizer.json"].decode()))

    pythia_tokens = pythia_tokenizer_files(trained, merges)
    pythia, pythia_state = random_pythia(seed + 1)
    put_repo(
        hub.hub_cache,
        PYTHIA_REPO,
        {
            "config.json": _json(pythia_config()),
            "model.safetensors": _safetensors(pythia_state, scratch),
            **pythia_tokens,
        },
    )
    pythia_norms = hidden_norms(
        pythia, Tokenizer.from_str(pythia_tokens["tokenizer.json"].decode())
    )

    for offset, release in enumerate(PRESET_RELEASES):
        pythia_release = release.startswith("pythia")
        norms = pythia_norms if pythia_release else gpt2_norms
        n_layers = 6 if pythia_release else 12
        repo_id, files = release_files(release, norms, n_layers, scratch, seed + 10 + offset)
        put_repo(hub.hub_cache, repo_id, files)
    shutil.rmtree(scratch)
    return hub
