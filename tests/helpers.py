"""Builders the test tiers share: a tiny local model and SAEs, the bundled model's example
prompts, and the app served in-process.

The hub cannot be reached in CI, so the engine's exact identities are tested on the tiny model: the
real TransformerLens and SAELens classes, seeded random weights scaled up enough that attention and
MLPs are far from linear, and SAEs whose biases make about a quarter of their features fire.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import gradio as gr
import httpx
import torch
from gradio_client import Client
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from sae_lens.saes.sae import SAEMetadata
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

from token_trace.app.page import Page
from token_trace.app.service import Service
from token_trace.hook_names import residual_depth

WORDS = (
    "When John and Mary went to the store , gave a book drink bag cat sat on mat . "
    "The capital of France is Paris then"
).split()
BOS = "<|endoftext|>"


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {BOS: 0, "<unk>": 1}
    for word in WORDS:
        for piece in (word, "Ġ" + word):
            vocab.setdefault(piece, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        name_or_path="tiny-test-words",
        add_bos_token=True,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=BOS,
        unk_token="<unk>",
    )


def tiny_model(seed: int = 0) -> HookedTransformer:
    tokenizer = word_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=64,
        d_vocab=len(tokenizer),
        n_ctx=24,
        act_fn="gelu_new",
        normalization_type="LN",
        model_name="tiny-test",
        seed=seed,
        device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.mul_(2.0)  # larger than the default init, so the model is far from linear
    return model.eval()


def random_sae(hook_name: str, d_in: int, d_sae: int, seed: int) -> SAE:
    generator = torch.Generator().manual_seed(seed)
    cfg = StandardSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        metadata=SAEMetadata(
            hook_name=hook_name, model_name="tiny-test", neuronpedia_id=f"tiny-test/{seed}-res"
        ),
    )
    sae = StandardSAE(cfg)
    with torch.no_grad():
        decoder = torch.randn(d_sae, d_in, generator=generator)
        sae.W_dec.copy_(decoder / decoder.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T + 0.3 * torch.randn(d_in, d_sae, generator=generator))
        sae.b_enc.copy_(-0.5 * torch.rand(d_sae, generator=generator))
        sae.b_dec.copy_(0.1 * torch.randn(d_in, generator=generator))
    return sae.eval()


TINY_HOOKS = ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post")
PROMPT = "When John and Mary went to the store , John gave a book to"


def tiny_saes(model: HookedTransformer) -> dict[str, SAE]:
    return {
        hook: random_sae(hook, model.cfg.d_model, 64, seed) for seed, hook in enumerate(TINY_HOOKS)
    }


def res_jb_saes(model: HookedTransformer) -> dict[str, SAE]:
    """SAEs on the tiny model carrying GPT-2 res-jb's Neuronpedia ids from SAELens's registry
    (taken by residual depth, never built by hand)."""
    registry = get_pretrained_saes_directory()["gpt2-small-res-jb"].neuronpedia_id
    by_depth = {residual_depth(hook): neuronpedia_id for hook, neuronpedia_id in registry.items()}
    saes = {}
    for seed, hook in enumerate(TINY_HOOKS):
        sae = random_sae(hook, model.cfg.d_model, 64, seed)
        sae.cfg.metadata.neuronpedia_id = by_depth[residual_depth(hook)]
        saes[hook] = sae
    return saes


def downstream_contributions(sae, g, t_idx, j_idx, x_d):
    """Each downstream node's contribution with the metric gradient `g` held fixed: features
    `(d_j . g[t]) f_j`, then one error node per position `g[t] . e[t]`."""
    f = sae.encode(x_d)
    e = x_d - sae.decode(f)
    coefficient = (sae.W_dec[j_idx] * g[t_idx]).sum(-1)
    return torch.cat([coefficient * f[t_idx, j_idx], (g * e).sum(-1)])


# --------------------------------------------------------------------------- the bundled model

ROOT = Path(__file__).resolve().parents[1]
DEMO_PROMPTS = ROOT / "examples" / "demo_prompts.json"
ARTIFACTS = ROOT / "test-artifacts"


def demo_examples() -> list[dict]:
    return json.loads(DEMO_PROMPTS.read_text())


# --------------------------------------------------------------------------- the app

#: The test deployment's token cap: above the demo prompts, below the bundled model's 64.
CAP = 48


def load_app_module() -> ModuleType:
    """`app.py` sits beside the package, not inside it: import it from its path."""
    spec = importlib.util.spec_from_file_location("token_trace_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    page: Page
    demo: gr.Blocks
    url: str
    client: Client


def start_app(max_tokens: int = CAP) -> Served:
    """The app as `python app.py` builds it offline, served on a free port in this process."""
    module = load_app_module()
    page = Page(offline=True, service=Service(max_tokens), examples_dir=module.EXAMPLES_DIR)
    demo = module.build(page)
    module.launch(demo, prevent_thread_lock=True, server_port=free_port(), quiet=True)
    return Served(page, demo, demo.local_url, Client(demo.local_url, verbose=False))


@contextmanager
def app_py_offline(env: Mapping[str, str], timeout: float = 180) -> Iterator[tuple[str, float]]:
    """`python app.py` in a subprocess on a free local port, with `env` (which must keep it off
    the hub): its URL, and the seconds it took to serve a page saying "Offline mode"."""
    port = free_port()
    env = {
        **env,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            assert process.poll() is None, process.stderr.read()
            elapsed = time.perf_counter() - start
            assert elapsed < timeout, f"app.py did not start within {timeout:.0f} s"
            try:
                if "Offline mode" in httpx.get(f"{url}config", timeout=2).text:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        yield url, time.perf_counter() - start
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
