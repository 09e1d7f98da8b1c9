"""What the Gradio app needs beside layout: its model menu, request checking, result cache, exports.

Kept apart from `app.py` (and free of Gradio) so that every rule the app applies to a request can
be tested and reused without a server: which models a deployment offers, what a request means in
terms of `compute_node_attribution` arguments, which inputs are refused and with what message, and
how a finished run is cached and written out.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.request
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from token_trace import loading
from token_trace.hooks import model_lock
from token_trace.nodes import position_totals
from token_trace.pipeline import resolve

#: Environment variable: the most prompt tokens one request may have on this deployment.
MAX_TOKENS_ENV = "TOKEN_TRACE_MAX_TOKENS"
DEFAULT_MAX_TOKENS = 256
METHOD_LABELS = {"atp": "Attribution patching (AtP)", "ig": "Integrated gradients (IG)"}
MAX_IG_STEPS = 64
HUB_URL = "https://huggingface.co"


@dataclass(frozen=True)
class Preset:
    """One model + SAE release the app offers (the model is read from SAELens's registry)."""

    release: str
    description: str

    @property
    def model(self) -> str:
        return loading.release_model(self.release)

    @property
    def label(self) -> str:
        name = self.release if self.model == self.release else f"{self.model} · {self.release}"
        return f"{name} — {self.description}"


#: Small enough to run on a CPU Space or a ZeroGPU slice; residual-stream SAEs of the standard
#: (ReLU, linear decoder) kind the engine needs. The first one is the default when online.
PRESETS: tuple[Preset, ...] = (
    Preset("gpt2-small-res-jb", "residual stream, 13 SAEs × 24,576 features (Bloom)"),
    Preset("gpt2-small-res_sll-ajt", "residual stream, layers 2/6/10, end-to-end SAEs (Apollo)"),
    Preset("pythia-70m-deduped-res-sm", "residual stream, 7 SAEs × 32,768 features (Marks)"),
    Preset(loading.BUNDLED_MODEL, "bundled IOI transformer and SAEs, works offline"),
)
PRESETS_BY_RELEASE = {preset.release: preset for preset in PRESETS}


def default_release(offline: bool) -> str:
    """The preset selected when the page opens: the bundled model when the hub is out of reach."""
    return loading.BUNDLED_MODEL if offline else PRESETS[0].release


def default_model(offline: bool) -> str:
    return PRESETS_BY_RELEASE[default_release(offline)].model


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers within `timeout` seconds (False when HF_HUB_OFFLINE).

    Asked once at startup so that an offline `python app.py` opens on the bundled model instead of
    failing on its first request. The request runs in a daemon thread because a DNS lookup does not
    honour urllib's timeout.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = os.environ.get("HF_ENDPOINT", HUB_URL)
    answered = threading.Event()

    def probe() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(request, timeout=timeout):
                answered.set()
        except OSError:
            pass

    threading.Thread(target=probe, daemon=True).start()
    return answered.wait(timeout)


def go_offline() -> None:
    """Make every later hub access fail at once (or use the local cache) instead of retrying.

    huggingface_hub reads HF_HUB_OFFLINE at import time, which is before the app can probe the
    hub, so the flag is also set on its constants; without it a model that is not cached takes
    about 30 s of retries to fail.
    """
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def max_tokens_from_env() -> int:
    """The per-deployment prompt cap, from `TOKEN_TRACE_MAX_TOKENS` (256 when unset)."""
    raw = os.environ.get(MAX_TOKENS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_TOKENS
    if not raw.isdigit() or int(raw) < 2:
        raise ValueError(f"{MAX_TOKENS_ENV} must be an integer of at least 2, got {raw!r}.")
    return int(raw)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Settings:
    """One attribution request, normalised: equal settings give equal results (the cache key)."""

    text: str
    model: str
    release: str
    sae_ids: tuple[str, ...]
    answer: str | None = None
    contrast: str | None = None
    method: str = "atp"
    ig_steps: int = 10
    counterfactual: str | None = None

    def library_kwargs(self) -> dict[str, object]:
        """The `compute_node_attribution` arguments that reproduce this request exactly."""
        return {
            "text": self.text,
            "model": self.model,
            "saes": [(self.release, sae_id) for sae_id in self.sae_ids],
            "answer": self.answer,
            "contrast": self.contrast,
            "method": self.method,
            "ig_steps": self.ig_steps,
            "baseline_text": self.counterfactual,
        }

    def key(self) -> str:
        """A short stable id (file names of exports)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _optional(value: str | None) -> str | None:
    """Empty fields mean "not given"; anything else is kept verbatim (spaces matter to tokens)."""
    return value if value else None


def _optional_prompt(value: str | None) -> str | None:
    return value if value and value.strip() else None


def parse_layers(layers: str | Sequence[str] | None, release: str) -> tuple[str, ...]:
    """SAE ids of `release` to use, in the release's order: all of them for None or ""/[].

    Accepts a list (the UI's checkboxes) or a comma-separated string (the API).
    """
    known = loading.release_sae_ids(release)
    if layers is None or (isinstance(layers, str) and not layers.strip()):
        return tuple(known)
    wanted = [part.strip() for part in layers.split(",")] if isinstance(layers, str) else layers
    wanted = [part for part in wanted if part]
    if not wanted:
        raise ValueError("Choose at least one layer (SAE) to attribute to.")
    unknown = [part for part in wanted if part not in known]
    if unknown:
        raise ValueError(
            f"Release {release!r} has no SAE {', '.join(map(repr, unknown))}; "
            f"its SAEs are: {', '.join(known)}."
        )
    return tuple(sae_id for sae_id in known if sae_id in wanted)


def make_settings(
    text: str | None,
    model: str | None,
    release: str | None,
    layers: str | Sequence[str] | None,
    answer: str | None,
    contrast: str | None,
    method: str | None,
    ig_steps: float | None,
    counterfactual: str | None,
) -> Settings:
    """Check a request's fields (not yet against the model's tokenizer) and normalise them.

    `model` alone picks its first preset's release; `release` alone picks its model.
    """
    if not text or not text.strip():
        raise ValueError("The prompt is empty: type some text to attribute.")
    release = (release or "").strip()
    model = (model or "").strip()
    if release:
        if release not in PRESETS_BY_RELEASE:
            raise ValueError(
                f"This app offers the SAE releases {', '.join(PRESETS_BY_RELEASE)}; "
                f"not {release!r}."
            )
        preset = PRESETS_BY_RELEASE[release]
        if model and model != preset.model:
            raise ValueError(
                f"Release {release!r} belongs to model {preset.model!r}, not {model!r}."
            )
    else:
        matching = [preset for preset in PRESETS if preset.model == model]
        if not matching:
            models = sorted({preset.model for preset in PRESETS})
            raise ValueError(f"This app offers the models {', '.join(models)}; not {model!r}.")
        preset = matching[0]
    method = (method or "atp").strip().lower()
    if method not in METHOD_LABELS:
        raise ValueError(f"Unknown method {method!r}: use 'atp' or 'ig'.")
    steps = int(ig_steps) if ig_steps is not None else 10
    if not 1 <= steps <= MAX_IG_STEPS:
        raise ValueError(f"Integrated gradients needs between 1 and {MAX_IG_STEPS} steps.")
    return Settings(
        text=text,
        model=preset.model,
        release=preset.release,
        sae_ids=parse_layers(layers, preset.release),
        answer=_optional(answer),
        contrast=_optional(contrast),
        method=method,
        ig_steps=steps if method == "ig" else 10,
        counterfactual=_optional_prompt(counterfactual),
    )


def load_and_check(settings: Settings, max_tokens: int) -> None:
    """Load (or find cached) the request's model and SAEs, and apply the deployment's token cap.

    Runs in the main process, outside the GPU handler, on purpose: on ZeroGPU, weights loaded
    there are handed to every GPU worker, while weights loaded inside a worker would be loaded
    again for each request. The rest of the prompt is checked by the library during the run.
    """
    model = _load(settings.model, settings.release, settings.sae_ids)
    if model.tokenizer is None:
        return
    # The tokenizer itself, not `model.to_tokens`: that one is not thread-safe (see `model_locked`)
    # and would put the tokens on the model's device, which ZeroGPU's main process does not have.
    n_tokens = len(model.tokenizer(settings.text)["input_ids"])
    if n_tokens > max_tokens:
        raise ValueError(
            f"The prompt is {n_tokens} tokens; this deployment attributes at most {max_tokens} "
            f"({MAX_TOKENS_ENV}). Shorten it."
        )


@contextmanager
def model_locked(settings: Settings) -> Iterator[None]:
    """Hold the request's model lock for its whole run, tokenisation included.

    TransformerLens's `to_tokens(prepend_bos=False)` (used for answers) sets the model's
    `cfg.default_prepend_bos` while it runs and then restores it, so two requests tokenising at
    once can drop each other's BOS, or leave it off for good. The library's forward and backward
    passes already hold this lock; its tokenisation does not.
    """
    model = loading.load_model(settings.model, release=settings.release)
    with model_lock(model):
        yield


def preload(release: str) -> None:
    """Load a preset's model and all its SAEs now (at a Space's startup, before any request)."""
    _load(PRESETS_BY_RELEASE[release].model, release, loading.release_sae_ids(release))


def _load(model: str, release: str, sae_ids: Sequence[str]) -> HookedTransformer:
    """The model, with the SAEs loaded too (the library caches both and loads each only once)."""
    return resolve(model, [(release, sae_id) for sae_id in sae_ids], None)[0]


def gpu_seconds(settings: Settings) -> int:
    """A ZeroGPU reservation for the request: short ones get scheduled sooner.

    AtP is one forward and backward pass; IG runs `ig_steps` batched passes per SAE layer.
    """
    passes = 2 if settings.method == "atp" else 2 + settings.ig_steps * len(settings.sae_ids) // 4
    return int(min(120, 20 + 2 * passes))


# --------------------------------------------------------------------------- errors


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def user_message(error: BaseException) -> str | None:
    """The message to show for an error a user can act on, or None for a bug.

    The library raises ValueError for bad input and LoadError when weights cannot be fetched; both
    messages are written for users. Out-of-memory errors get advice instead of a CUDA trace.
    """
    if is_out_of_memory(error):
        return (
            "Out of memory while attributing this prompt. Choose fewer layers, a shorter prompt, "
            "or attribution patching instead of integrated gradients."
        )
    if isinstance(error, (ValueError, loading.LoadError)):
        return str(error)
    return None


def release_memory() -> None:
    """After an out-of-memory error, hand cached CUDA blocks back so the next request can run."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class Run:
    """A finished request: its settings, the library's node table, and the compute time.

    Compared by identity (`eq=False`): the table is never compared or hashed, only passed on.
    """

    settings: Settings
    df: pd.DataFrame
    seconds: float


class ResultCache:
    """Finished runs per request (LRU), shared by all sessions and threads.

    Tables are never modified after they are stored: views filter copies of them.
    """

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._items: OrderedDict[Settings, Run] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, settings: Settings) -> Run | None:
        with self._lock:
            run = self._items.get(settings)
            if run is not None:
                self._items.move_to_end(settings)
            return run

    def put(self, run: Run) -> None:
        with self._lock:
            self._items[run.settings] = run
            self._items.move_to_end(run.settings)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def records(df: pd.DataFrame) -> list[dict[str, object]]:
    """The node table as JSON-ready records with the library's column names, values exact.

    Column-wise `tolist()` turns float32 into Python floats without rounding (unlike `to_json`)
    and categoricals into their strings; missing values (no Neuronpedia page) become None.
    """
    columns = {
        name: df[name].astype(object).where(df[name].notna(), None).tolist() for name in df.columns
    }
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def summary(df: pd.DataFrame) -> dict[str, object]:
    """The run's metadata (`df.attrs`), JSON-ready, plus the per-token totals used for colouring."""
    totals = position_totals(df)
    return {
        **_json_ready(df.attrs),
        "n_nodes": len(df),
        "position_totals": totals["attribution"].astype(float).tolist(),
    }


def _json_ready(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return value


def write_exports(settings: Settings, df: pd.DataFrame, directory: Path) -> dict[str, Path]:
    """The full node table as CSV and Parquet, and the settings + run metadata as JSON.

    Files go to `directory/<settings key>/` and are written once per request (results are
    deterministic), each through a temporary file so a concurrent reader never sees half a file.
    """
    folder = directory / settings.key()
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "settings": asdict(settings),
        "library_call": {k: v for k, v in settings.library_kwargs().items() if v is not None},
        "run": _json_ready(df.attrs),
    }
    writers = {
        "csv": ("token-trace-nodes.csv", lambda path: df.to_csv(path, index=False)),
        "parquet": ("token-trace-nodes.parquet", lambda path: df.to_parquet(path, index=False)),
        "json": (
            "token-trace-settings.json",
            lambda path: path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n"),
        ),
    }
    paths = {}
    for kind, (name, write) in writers.items():
        paths[kind] = folder / name
        if not paths[kind].exists():
            partial = folder / f".{name}.{threading.get_ident()}.tmp"
            write(partial)
            partial.replace(paths[kind])
    return paths


# --------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class Example:
    """One ready-made prompt from `examples/*.json`, with the preset it was written for."""

    name: str
    text: str
    release: str
    answer: str | None = None
    contrast: str | None = None
    counterfactual: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} · {PRESETS_BY_RELEASE[self.release].model}"


#: Example files and the preset their prompts are written for.
EXAMPLE_FILES = {
    "gpt2_prompts.json": PRESETS[0].release,
    "demo_prompts.json": loading.BUNDLED_MODEL,
}


def load_examples(directory: Path, offline: bool) -> list[Example]:
    """The examples whose model can run here (only the bundled model's when offline), the default
    preset's first. Missing files are skipped: the bundled model's prompts ship with its weights."""
    found = []
    for file_name, release in EXAMPLE_FILES.items():
        path = directory / file_name
        if not path.is_file() or (offline and release != loading.BUNDLED_MODEL):
            continue
        for entry in json.loads(path.read_text()):
            found.append(
                Example(
                    name=entry["name"],
                    text=entry["text"],
                    release=release,
                    answer=entry.get("answer"),
                    contrast=entry.get("contrast"),
                    counterfactual=entry.get("counterfactual"),
                )
            )
    first = default_release(offline)
    return sorted(found, key=lambda example: example.release != first)
