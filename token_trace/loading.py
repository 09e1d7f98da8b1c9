"""Models and SAEs by name.

Everything that touches the network lives here: TransformerLens's `from_pretrained` (or
`TransformerBridge.boot_transformers` with backend "bridge") for models and the SAELens registry
for SAE releases. The bundled offline model (`ioi-demo`) is served from files inside the package
through the same SAELens disk loader a downloaded release goes through. Loaded objects are cached
per (name, device, backend) because loading GPT-2 small and its 13 SAEs takes far longer than an
attribution run.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
import re
import threading
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.loading import pretrained_sae_loaders
from sae_lens.loading.pretrained_saes_directory import (
    PretrainedSAELookup,
    get_pretrained_saes_directory,
)
from transformer_lens import HookedTransformer
from transformer_lens.loading_from_pretrained import get_official_model_name
from transformer_lens.model_bridge import TransformerBridge

from token_trace import demo
from token_trace.backend import Model
from token_trace.network import finishes_within
from token_trace.options import (
    BACKENDS,
    BUNDLED_MODEL,
    DEFAULT_MODEL,
    MODEL_DTYPES,
    SAE_DTYPES,
    default_backend,
    one_of,
)

HUB_URL = "https://huggingface.co"

#: The SAE release used when a caller names a model but no SAEs (keyed by the names users write:
#: TransformerLens's aliases and the registry's model names).
DEFAULT_RELEASES: dict[str, str] = {
    "gpt2": "gpt2-small-res-jb",
    "gpt2-small": "gpt2-small-res-jb",
    "gemma-2-2b": "gemma-scope-2b-pt-res-canonical",
    "google/gemma-2-2b": "gemma-scope-2b-pt-res-canonical",
    "gemma-3-270m": "gemma-scope-2-270m-pt-res",
    "google/gemma-3-270m": "gemma-scope-2-270m-pt-res",
    BUNDLED_MODEL: BUNDLED_MODEL,
}


@dataclass(frozen=True)
class Bundle:
    """Loaders of a model and its SAE release that ship inside the package (no network)."""

    load_model: Callable[[str, str], HookedTransformer]  # device, dtype -> model
    load_saes: Callable[[str, str], dict[str, SAE]]  # device, dtype -> SAEs by hook name
    sae_ids: Callable[[], list[str]]
    #: (hook name, feature index) -> the feature's offline card, or None where it has none.
    feature_card: Callable[[str, int], dict[str, Any] | None]


#: Releases served from files inside the package, one entry each; every other release name is
#: looked up in SAELens's registry. Each bundled release is also a model of the same name.
BUNDLED: dict[str, Bundle] = {
    BUNDLED_MODEL: Bundle(
        demo.load_demo_model, demo.load_demo_saes, demo.demo_hook_names, demo.feature_card
    ),
}


@dataclass(frozen=True)
class Release:
    """What token-trace needs to know about an SAE release, wherever it comes from."""

    name: str
    model: str  # the model the SAEs were trained on
    sae_ids: tuple[str, ...]  # every SAE, in the registry's (layer) order
    default_sae_ids: tuple[str, ...]  # what naming the release loads: one per hook (`sae_choices`)
    model_kwargs: dict[str, object]  # `from_pretrained` processing the SAEs expect
    bundle: Bundle | None  # loaders for a release that ships inside the package


#: Loads are slow and large: concurrent first requests wait for one load instead of each doing it.
_load_lock = threading.Lock()


def _fresh_load_lock_after_fork() -> None:
    global _load_lock
    _load_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_load_lock_after_fork)


class LoadError(RuntimeError):
    """A known model or SAE could not be fetched (no network, hub down, out of disk)."""


@dataclass(frozen=True)
class SAESpec:
    """Where one SAE comes from: a SAELens release and the id of one SAE inside it."""

    release: str
    sae_id: str


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers within `timeout` seconds (False when HF_HUB_OFFLINE)."""
    import huggingface_hub.constants

    if huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get(
        "HF_HUB_OFFLINE", ""
    ).strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = os.environ.get("HF_ENDPOINT", HUB_URL)

    def head() -> None:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            pass

    return finishes_within(timeout, head)


def go_offline() -> None:
    """Make every later hub access use the local cache or fail at once, instead of retrying.

    huggingface_hub reads HF_HUB_OFFLINE at import time, so the flag is also set on its
    constants; without it a model that is not cached takes about 30 s of retries to fail.
    """
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True


@functools.lru_cache(maxsize=1)
def hub_online() -> bool:
    """Probe the hub once per process before the first download; when it cannot be reached,
    switch huggingface_hub to offline mode (as HF_HUB_OFFLINE=1 does): cached files still load,
    others fail in a moment with a clear message instead of half a minute of retries."""
    online = hub_reachable()
    if not online:
        go_offline()
    return online


def _offline_hint(what: str) -> str:
    if hub_online():
        return ""
    return (
        f" The Hugging Face hub cannot be reached (or HF_HUB_OFFLINE is set), and {what} is not "
        "in the local Hugging Face cache."
    )


def default_device() -> str:
    """CUDA when present, else CPU: attribution is matrix work that a GPU does far faster."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_dtype(dtype: str, device: str) -> str:
    """The precision a model is loaded in on `device`: `dtype` itself, or for "auto" bfloat16 on
    a GPU (half the memory of float32, and its fast matrix units) and float32 elsewhere (CPUs
    have no fast bfloat16 products: see the README's "bf16 models")."""
    one_of(dtype, "model dtype", MODEL_DTYPES)
    if dtype != "auto":
        return dtype
    return "bfloat16" if torch.device(device).type == "cuda" else "float32"


def is_bundled(model_name: str) -> bool:
    return model_name in BUNDLED


def release_info(release: str) -> PretrainedSAELookup:
    """The SAELens registry entry of `release`, or a ValueError that suggests near names."""
    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, [*directory, *BUNDLED], n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown SAE release {release!r}: it is not in SAELens's registry.{hint}")
    return directory[release]


def find_release(name: str) -> Release:
    """The release `name`: a bundled one, or else SAELens's registry entry."""
    bundle = BUNDLED.get(name)
    if bundle is not None:
        ids = tuple(bundle.sae_ids())
        return Release(name, name, ids, ids, {}, bundle)
    info = release_info(name)
    overrides = info.config_overrides or {}
    kwargs = dict(overrides.get("model_from_pretrained_kwargs", {}) or {})
    defaults = tuple(ids[0] for ids in sae_choices(name).values())
    return Release(name, info.model, tuple(info.saes_map), defaults, kwargs, None)


# --------------------------------------------------------------------------- one SAE per hook

#: The parts of an SAE id that name a variant (width, sparsity, training seed) of the SAE at one
#: hook, as Gemma Scope's ids spell them (`layer_12/width_16k/canonical`,
#: `layer_12_width_16k_l0_medium`, `layer_5/width_16k/average_l0_143`, `..._seed_1`). Ids that
#: differ only in these parts read the same hook; no other release in SAELens's registry has
#: more than one SAE per hook.
_VARIANT_PART = re.compile(r"[/_]?(?:width_\d+[km]?|average_l0_\d+|l0_[a-z]+|canonical|seed_\d+)")
_WIDTH = re.compile(r"width_(\d+)([km]?)")
#: The sparsity SAELens and Gemma Scope single out per width: `canonical` (Gemma Scope) and
#: `l0_medium` (Gemma Scope 2, the one Neuronpedia hosts).
_PREFERRED_SPARSITY = re.compile(r"canonical|l0_medium")
_LAYER = re.compile(r"layer_(\d+)")


def _width(sae_id: str) -> int:
    match = _WIDTH.search(sae_id)
    if match is None:
        return 0
    return int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20}[match.group(2)]


def sae_choices(release: str) -> dict[str, tuple[str, ...]]:
    """A registry release's SAE ids grouped by the hook they read, best first: the rule that
    picks the one SAE per hook a release loads when it is named alone.

    Groups are keyed by the id without its variant parts (`layer_12`) and ordered by the layer
    in that key (Gemma Scope 2's registry lists `layer_12` before `layer_5`), else as the
    registry lists them. Within a group the first is the SAE

    1. that Neuronpedia hosts (has a Neuronpedia id: its features have dashboards and
       explanations, so the app's links and labels work), then
    2. of the smallest width (cheapest to load and run), then
    3. of the preferred sparsity (`canonical`, `l0_medium`), then
    4. without a seed suffix (the main training run), then
    5. first in the registry.

    So `gemma-scope-2b-pt-res-canonical` loads `layer_L/width_16k/canonical` for L = 0..25 and
    `gemma-scope-2-270m-pt-res` the four `layer_L_width_16k_l0_medium`. Pick others by passing
    `(release, sae_id)` pairs (see `resolve_sae_specs`).
    """
    info = release_info(release)
    hosted = info.neuronpedia_id or {}
    groups: dict[str, list[str]] = {}
    for sae_id in info.saes_map:
        groups.setdefault(_VARIANT_PART.sub("", sae_id), []).append(sae_id)
    order = {sae_id: index for index, sae_id in enumerate(info.saes_map)}

    def rank(sae_id: str) -> tuple[bool, int, bool, bool, int]:
        return (
            not hosted.get(sae_id),
            _width(sae_id),
            not _PREFERRED_SPARSITY.search(sae_id),
            "seed_" in sae_id,
            order[sae_id],
        )

    def depth(key: str) -> int:
        match = _LAYER.match(key)
        return int(match.group(1)) if match else -1  # an embedding SAE reads the first hook

    return {key: tuple(sorted(groups[key], key=rank)) for key in sorted(groups, key=depth)}


def feature_card(release: str | None, hook_name: str, feature: int) -> dict[str, Any] | None:
    """The offline card of one feature of `release` (bundled releases ship them), else None.

    Cards belong to the release, not to a hook name: two releases may read the same hook.
    """
    bundle = BUNDLED.get(release) if release else None
    return None if bundle is None else bundle.feature_card(hook_name, feature)


def neuronpedia_id(release: str, sae_id: str) -> str | None:
    """Neuronpedia's id of one SAE of a release (`gpt2-small/6-res-jb`), as SAELens's registry
    lists it and `SAE.from_pretrained` copies it into the SAE's metadata; None for bundled
    releases and SAEs Neuronpedia does not host."""
    if release in BUNDLED:
        return None
    return (release_info(release).neuronpedia_id or {}).get(sae_id)


def release_sae_ids(release: str) -> list[str]:
    """The SAE ids naming a release loads, in the registry's (layer) order: all of them where
    the release has one SAE per hook, else the one `sae_choices` picks per hook."""
    return list(find_release(release).default_sae_ids)


def release_model(release: str) -> str:
    """The model a release's SAEs were trained on."""
    return find_release(release).model


def model_kwargs_for_release(release: str) -> dict[str, object]:
    """The `from_pretrained` processing a release's SAEs expect (e.g. centred writing weights)."""
    return dict(find_release(release).model_kwargs)


def canonical_model_name(name: str) -> str:
    if is_bundled(name):
        return name
    try:
        return get_official_model_name(name)
    except ValueError as err:
        raise ValueError(
            f"Unknown model {name!r}: TransformerLens has no such model "
            f"(try 'gpt2-small', or {BUNDLED_MODEL!r} offline)."
        ) from err


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | None = None,
    release: str | None = None,
    dtype: str = "auto",
    backend: str | None = None,
) -> Model:
    """A model by name, with the weight processing its SAE release was trained on.

    `release` defaults to the model's default SAE release; its `model_from_pretrained_kwargs` decide
    how TransformerLens processes the weights, because SAEs trained on a processed model read
    activations in that model's basis. `dtype` is the weights' precision (`model_dtype`: "auto"
    is bfloat16 on a GPU, float32 on a CPU), in which TransformerLens also processes them.

    `backend` picks the class (None: `options.default_backend()`): "hooked" loads a
    `HookedTransformer` with `from_pretrained`; "bridge" boots a `TransformerBridge` on the
    Hugging Face checkpoint and applies the same processing with `enable_compatibility_mode`.
    The bundled model is a HookedTransformer either way: it is built from the package's own
    files, not from a Hugging Face checkpoint the bridge could wrap.
    """
    backend = one_of(backend or default_backend(), "backend", BACKENDS)
    device = device or default_device()
    canonical = canonical_model_name(name)
    release = release or DEFAULT_RELEASES.get(name)
    kwargs = model_kwargs_for_release(release) if release else {}
    precision = model_dtype(dtype, device)
    if is_bundled(canonical):
        backend = "hooked"
    elif backend == "bridge":
        _bridge_processing(kwargs)  # a processing the bridge cannot apply is refused before loading
    with _load_lock:
        return _load_model_cached(
            canonical, device, precision, tuple(sorted(kwargs.items())), backend
        )


#: The `from_pretrained` processing options that `TransformerBridge.enable_compatibility_mode`
#: takes under the same names and with the same defaults (all that SAELens's registry uses).
BRIDGE_PROCESSING = (
    "fold_ln",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "refactor_factored_attn_matrices",
)


def _bridge_processing(kwargs: Mapping[str, object]) -> dict[str, object]:
    """A release's `from_pretrained` kwargs as `enable_compatibility_mode` kwargs."""
    other = sorted(set(kwargs) - set(BRIDGE_PROCESSING))
    if other:
        raise ValueError(
            f"The SAE release loads its model with {other}, which TransformerBridge loading does "
            "not take; use backend 'hooked' for it."
        )
    return dict(kwargs)


@functools.lru_cache(maxsize=4)
def _load_model_cached(
    canonical: str,
    device: str,
    dtype: str,
    kwargs: tuple[tuple[str, object], ...],
    backend: str,
) -> Model:
    if is_bundled(canonical):
        return BUNDLED[canonical].load_model(device, dtype)
    hub_online()
    try:
        if backend == "bridge":
            model = TransformerBridge.boot_transformers(
                canonical, device=device, dtype=getattr(torch, dtype)
            )
            model.enable_compatibility_mode(
                disable_warnings=True, **_bridge_processing(dict(kwargs))
            )
        else:
            model = HookedTransformer.from_pretrained(
                canonical, device=device, dtype=getattr(torch, dtype), **dict(kwargs)
            )
    except Exception as err:  # the hub raises many types; all mean the same to a user
        raise LoadError(
            f"Could not load model {canonical!r}.{_offline_hint('it')} "
            f"({type(err).__name__}: {first_line(err)}) Offline, use the bundled model "
            f"{BUNDLED_MODEL!r}, which ships with token-trace."
        ) from err
    return model.eval()


def resolve_sae_specs(
    saes: str | Sequence[tuple[str, str]] | None, model_name: str
) -> list[SAESpec]:
    """Turn the `saes` argument into (release, sae_id) pairs, checking them against the registry."""
    if saes is None:
        if model_name not in DEFAULT_RELEASES:
            canonical_model_name(model_name)  # an unknown model is the first thing to say
            raise ValueError(
                f"No default SAE release is known for model {model_name!r}; pass saes= a SAELens "
                "release name, a list of (release, sae_id) pairs or a {hook_name: SAE} dict."
            )
        saes = DEFAULT_RELEASES[model_name]
    if isinstance(saes, str):
        return [SAESpec(saes, sae_id) for sae_id in release_sae_ids(saes)]
    specs = [SAESpec(release, sae_id) for release, sae_id in saes]
    if not specs:
        raise ValueError("saes= is an empty list: name at least one (release, sae_id) pair.")
    for spec in specs:
        known = find_release(spec.release).sae_ids
        if spec.sae_id not in known:
            close = difflib.get_close_matches(spec.sae_id, known, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"Release {spec.release!r} has no SAE {spec.sae_id!r}.{hint}")
    return specs


def check_release_matches_model(specs: Sequence[SAESpec], model_name: str) -> None:
    """Refuse SAEs trained on another model: their features would read meaningless activations."""
    wanted = canonical_model_name(model_name)
    for release in {spec.release for spec in specs}:
        trained_on = canonical_model_name(release_model(release))
        if trained_on != wanted:
            raise ValueError(
                f"SAE release {release!r} was trained on {release_model(release)!r}, "
                f"not on {model_name!r}."
            )


def load_saes(
    specs: Sequence[SAESpec], device: str | None = None, dtype: str = "float32"
) -> dict[str, SAE]:
    """Load SAEs (cached), keyed by the hook name each one reads, in the order given.

    `dtype` "bfloat16" or "float16" halves the SAEs' memory and speeds up their encodes on a GPU;
    the engine still computes the nodes in the model's precision (see `layer_nodes`).
    """
    one_of(dtype, "SAE dtype", SAE_DTYPES)
    device = device or default_device()
    if dtype != "float32" and torch.device(device).type == "cpu":
        warnings.warn(
            f"{dtype} SAEs on a CPU: most CPUs have no fast {dtype} matrix product, and the "
            "encodes of GPT-2-sized SAEs run about 60x slower than in float32.",
            stacklevel=2,
        )
    loaded: dict[str, SAE] = {}
    for spec in specs:
        with _load_lock:
            sae = _load_sae_cached(spec.release, spec.sae_id, device, dtype)
        hook_name = sae.cfg.metadata.hook_name
        if hook_name in loaded:
            raise ValueError(
                f"Two SAEs read the same hook {hook_name!r}; pick one per hook (naming the "
                "release alone loads one per hook: see loading.sae_choices)."
            )
        loaded[hook_name] = sae
    return loaded


@functools.lru_cache(maxsize=64)
def _load_sae_cached(release: str, sae_id: str, device: str, dtype: str) -> SAE:
    bundle = BUNDLED.get(release)
    if bundle is not None:
        return _bundled_saes(release, device, dtype)[sae_id]
    hub_online()
    try:
        with _shapes_from_cache_when_offline(release):
            sae = SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
    except Exception as err:
        raise LoadError(
            f"Could not load SAE {sae_id!r} of release {release!r}.{_offline_hint('it')} "
            f"({type(err).__name__}: {first_line(err)}) Offline, use the bundled model "
            f"{BUNDLED_MODEL!r}, which ships with its own SAEs."
        ) from err
    return sae.eval()


#: SAELens loaders that ask the hub for a safetensors file's tensor shapes by HTTP range requests
#: (`get_safetensors_tensor_shapes`) before they download the file, even when it is cached.
_SHAPE_ASKING_LOADERS = ("gemma_3",)


@contextlib.contextmanager
def _shapes_from_cache_when_offline(release: str) -> Iterator[None]:
    """While one SAE of `release` loads offline, answer SAELens's shape query from the cached
    file's safetensors header instead of the hub.

    SAELens's `gemma_3` loader (Gemma Scope 2) reads `w_enc`'s shape over HTTP before it
    downloads `params.safetensors`; offline that fails after ~5 s of retries even with a warm
    cache. This swaps `pretrained_sae_loaders.get_safetensors_tensor_shapes` for the duration of
    one load (callers hold `_load_lock`) and restores it afterwards; a file not in the cache is
    still asked of the hub, so SAELens's own error is what a user sees. Online nothing changes.
    """
    import huggingface_hub.constants

    entry = release_info(release) if release not in BUNDLED else None
    if (
        entry is None
        or entry.conversion_func not in _SHAPE_ASKING_LOADERS
        or not huggingface_hub.constants.HF_HUB_OFFLINE
    ):
        yield
        return
    ask_the_hub = pretrained_sae_loaders.get_safetensors_tensor_shapes

    def shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        cached = _cached_file(repo_id, filename, None)
        return ask_the_hub(repo_id, filename) if cached is None else safetensors_shapes(cached)

    pretrained_sae_loaders.get_safetensors_tensor_shapes = shapes
    try:
        yield
    finally:
        pretrained_sae_loaders.get_safetensors_tensor_shapes = ask_the_hub


def safetensors_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors file's header (8-byte length, then JSON), as SAELens's
    `get_safetensors_tensor_shapes` reads them from the hub."""
    with open(path, "rb") as file:
        size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(size))
    return {name: info["shape"] for name, info in header.items() if name != "__metadata__"}


@functools.lru_cache(maxsize=2)
def _bundled_saes(release: str, device: str, dtype: str) -> dict[str, SAE]:
    return BUNDLED[release].load_saes(device, dtype)


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def check_saes_fit_model(saes: Mapping[str, SAE], model: Model) -> None:
    """Each SAE must read an existing hook and have a linear decoder the engine can invert."""
    hook_points = model.hook_dict  # a TransformerBridge builds it anew on each read
    for hook_name, sae in saes.items():
        if hook_name not in hook_points:
            raise ValueError(f"The model has no hook point {hook_name!r} for an SAE to read.")
        if sae.cfg.normalize_activations != "none":
            raise ValueError(
                f"The SAE at {hook_name!r} normalises activations at run time "
                f"({sae.cfg.normalize_activations!r}); token-trace needs SAEs whose reconstruction "
                "is features @ W_dec + b_dec."
            )
        if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
            raise ValueError(
                f"The SAE at {hook_name!r} divides its features by the decoder norms when "
                "decoding (rescale_acts_by_decoder_norm); token-trace needs SAEs whose "
                "reconstruction is features @ W_dec + b_dec: fold the norms first "
                "(sae.fold_W_dec_norm())."
            )


# --------------------------------------------------------------------------- the local cache

#: What TransformerLens's `from_pretrained` reads from a model's repository (through transformers):
#: the config, the weights in one of these single-file forms or as the shards an index names,
#: and the tokenizer in one of these forms.
MODEL_CONFIG_FILE = "config.json"
MODEL_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MODEL_WEIGHT_INDEX = "model.safetensors.index.json"
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
#: The files SAELens's loader for each conversion reads per SAE, in the SAE's folder: its own
#: format (`conversion_func: null`; `sparsity.safetensors` too when the repository has one, and
#: it runs without it), Gemma Scope (`gemma_2`: the config is inferred from the path) and
#: Gemma Scope 2 (`gemma_3`).
SAE_FILES: dict[str | None, tuple[str, ...]] = {
    None: ("cfg.json", "sae_weights.safetensors"),
    "gemma_2": ("params.npz",),
    "gemma_3": ("config.json", "params.safetensors"),
}


def _cached_file(repo_id: str, filename: str, cache_dir: str | os.PathLike | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    return path if isinstance(path, str) else None


def _in_cache(repo_id: str, filename: str, cache_dir: str | os.PathLike | None) -> bool:
    return _cached_file(repo_id, filename, cache_dir) is not None


def _weights_cached(repo: str, cache_dir: str | os.PathLike | None) -> bool:
    if any(_in_cache(repo, name, cache_dir) for name in MODEL_WEIGHT_FILES):
        return True
    index = _cached_file(repo, MODEL_WEIGHT_INDEX, cache_dir)
    if index is None:
        return False
    with open(index) as file:
        shards = set(json.load(file)["weight_map"].values())
    return all(_in_cache(repo, shard, cache_dir) for shard in shards)


def missing_from_cache(release: str, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """What a release (its model and the SAEs naming it loads, `release_sae_ids`) still lacks
    in the local Hugging Face cache (`cache_dir`, by default huggingface_hub's, from
    HF_HUB_CACHE / HF_HOME), as `repo_id/filename` strings: empty when it loads with no network.
    A bundled release lacks nothing.

    Only file presence is checked, with huggingface_hub's own cache lookup on the `main`
    revision; a corrupt file still fails at load time, with the loaders' message.
    """
    info = find_release(release)
    if info.bundle is not None:
        return []
    repo = get_official_model_name(info.model)
    missing = [] if _in_cache(repo, MODEL_CONFIG_FILE, cache_dir) else [f"{repo}/config.json"]
    if not _weights_cached(repo, cache_dir):
        names = [*MODEL_WEIGHT_FILES, f"the shards {MODEL_WEIGHT_INDEX} names"]
        missing.append(f"{repo}/{' or '.join(names)}")
    if not any(
        all(_in_cache(repo, name, cache_dir) for name in names) for names in TOKENIZER_FILE_SETS
    ):
        missing.append(f"{repo}/{' or '.join('+'.join(n) for n in TOKENIZER_FILE_SETS)}")
    entry = release_info(release)
    if entry.conversion_func not in SAE_FILES:  # another format: its files are not known here
        return [*missing, f"{entry.repo_id} (converted by {entry.conversion_func}; not checked)"]
    for sae_id in info.default_sae_ids:
        path = entry.saes_map[sae_id]
        for name in SAE_FILES[entry.conversion_func]:
            if not _in_cache(entry.repo_id, f"{path}/{name}", cache_dir):
                missing.append(f"{entry.repo_id}/{path}/{name}")
    return missing


def release_is_cached(release: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether a release runs with no network: bundled, or its model and every SAE it loads in
    the local Hugging Face cache (see `missing_from_cache`)."""
    return not missing_from_cache(release, cache_dir)
