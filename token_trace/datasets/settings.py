"""What a dataset run computes: one record, checked once, saved with the run so a restart can tell
whether the files already in the output folder were made by the same settings."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from token_trace import loading

METHODS = ("atp", "ig")
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class DatasetSettings:
    """The settings of a dataset run (every prompt gets the same model, SAEs and method).

    Each record chooses its own metric by its fields, as `trace` does: the log-probability of the
    text's last token, of `answer`, or logit(answer) - logit(contrast); `metric="loss"` scores every
    prompt's mean loss instead.
    """

    model: str = loading.DEFAULT_MODEL
    #: A SAELens release (or the bundled one); None: the model's default release.
    saes: str | None = None
    method: str = "atp"
    ig_steps: int = 10
    metric: str | None = None
    #: Prompts per forward/backward pass; `shard_size` prompts go to one output file.
    batch_size: int = 8
    shard_size: int = 64
    #: Records with more tokens are recorded as errors (None: the model's context length).
    max_tokens: int | None = None
    #: Also compute each prompt's pruned graph (attribution patching only) and aggregate them.
    graph: bool = False
    max_nodes: int = 200
    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    sae_dtype: str = "float32"
    #: Leave BOS-position nodes out of the aggregates (they are recomputed at every finish).
    exclude_bos: bool = False
    #: "package.module:function" building the model and SAEs instead of loading them by name:
    #: `function(device)` returns `(HookedTransformer, {hook_name: SAE})`. For models the
    #: registries do not know (a local checkpoint, a fine-tune); every worker imports and calls
    #: it, so it must be importable there and build the same weights each time.
    loader: str | None = None
    #: Where each worker runs (None: CUDA when present). Not part of the run's identity.
    device: str | None = None

    def check(self) -> DatasetSettings:
        """Refuse settings that would fail on every prompt, before any work starts."""
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}: use one of {METHODS}.")
        if self.metric not in (None, "loss"):
            raise ValueError(f"metric must be None or 'loss', got {self.metric!r}.")
        for name in ("batch_size", "shard_size", "ig_steps", "max_nodes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {self.max_tokens}.")
        if self.graph and (self.method != "atp" or self.metric == "loss"):
            raise ValueError("Graphs need method 'atp' and a token metric (not the loss).")
        for name in ("node_threshold", "edge_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie between 0 and 1, got {getattr(self, name)}.")
        if self.loader is not None and not re.fullmatch(r"[\w.]+:\w+", self.loader):
            raise ValueError(f"loader must be 'package.module:function', got {self.loader!r}.")
        if self.sae_dtype not in loading.SAE_DTYPES:
            raise ValueError(
                f"Unknown SAE dtype {self.sae_dtype!r}: use one of {loading.SAE_DTYPES}."
            )
        return self

    def identity(self) -> dict[str, object]:
        """The fields that decide the shard files; a resumed run must match them. Batch size and
        device change only float rounding, and the aggregates are rebuilt at every finish, so a
        run may resume with other values of those."""
        fields = asdict(self)
        for free in ("batch_size", "device", "exclude_bos"):
            fields.pop(free)
        return fields

    def build(self) -> Callable[[str | None], tuple[Any, dict[str, Any]]] | None:
        """The `loader` function, imported (None when models load by name)."""
        if self.loader is None:
            return None
        module, name = self.loader.split(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"Cannot import the loader {self.loader!r}: {error}") from error
