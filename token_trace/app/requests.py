"""What a request to the app means: the models it offers, the fields a request has, their checks.

Free of Gradio, so every rule the app applies to a request is tested without a server. A request
arrives as `RequestFields` (exactly what the form and the API send: strings and numbers, empty for
"not given") and is turned by `make_settings` into `Settings`, the normalised, hashable request that
maps one to one onto a `token_trace.trace` call (and is the result cache's key).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from token_trace import loading
from token_trace.interventions import Edit
from token_trace.options import (
    DEFAULT_IG_STEPS,
    DEFAULT_MAX_NODES,
    METHODS,
    TOP_PREDICTION,
    PromptSpec,
    TraceOptions,
    one_of,
    whole_number,
)

#: Environment variable: the most prompt tokens one request may have on this deployment.
MAX_TOKENS_ENV = "TOKEN_TRACE_MAX_TOKENS"
DEFAULT_MAX_TOKENS = 256
#: The most integrated-gradient steps one request may ask for.
MAX_IG_STEPS = 64
#: The most nodes one graph request may compute edges between.
MAX_GRAPH_NODES = 1000


@dataclass(frozen=True)
class Preset:
    """One model + SAE release the app offers (the model is read from the release registry)."""

    release: str
    description: str
    examples_file: str | None = None  # prompts written for this preset, in `examples/`

    @property
    def model(self) -> str:
        return loading.release_model(self.release)

    @property
    def label(self) -> str:
        name = self.release if self.model == self.release else f"{self.model} · {self.release}"
        return f"{name} — {self.description}"


#: Residual-stream SAEs with the linear decoder the engine needs (ReLU or JumpReLU encoders);
#: all but Gemma-2-2B (2.6B parameters) run on a CPU Space, Gemma-2-2B on a GPU. A release with
#: several SAEs per hook loads one per hook (`loading.sae_choices`). The first preset is the
#: default when online.
PRESETS: tuple[Preset, ...] = (
    Preset(
        "gpt2-small-res-jb",
        "residual stream, 13 SAEs × 24,576 features (Bloom)",
        "gpt2_prompts.json",
    ),
    Preset("gpt2-small-res_sll-ajt", "residual stream, layers 2/6/10, end-to-end SAEs (Apollo)"),
    Preset("pythia-70m-deduped-res-sm", "residual stream, 7 SAEs × 32,768 features (Marks)"),
    Preset(
        "gemma-scope-2-270m-pt-res",
        "residual stream, layers 5/9/12/15, 16,384 JumpReLU features each (Gemma Scope 2)",
    ),
    Preset(
        "gemma-scope-2b-pt-res-canonical",
        "residual stream, 26 SAEs × 16,384 JumpReLU features (Gemma Scope)",
    ),
    Preset(
        loading.BUNDLED_MODEL,
        "bundled IOI transformer and SAEs, works offline",
        "demo_prompts.json",
    ),
)
PRESETS_BY_RELEASE = {preset.release: preset for preset in PRESETS}


#: Environment variable: the preset a deployment opens on (and, on a Space, loads at startup).
PRESET_ENV = "TOKEN_TRACE_PRESET"


def available_presets(offline: bool) -> tuple[Preset, ...]:
    """The presets this deployment can run: all of them online; offline, the bundled model and
    those whose model and SAE files are all in the local Hugging Face cache."""
    if not offline:
        return PRESETS
    return tuple(preset for preset in PRESETS if loading.release_is_cached(preset.release))


def default_release(offline: bool, available: Sequence[Preset] | None = None) -> str:
    """The preset selected when the page opens: `TOKEN_TRACE_PRESET` when set, else the first
    preset. Offline, the chosen preset only if it is `available` (by default: cached), else the
    bundled model. A name that is no preset at all is an error either way."""
    chosen = os.environ.get(PRESET_ENV, "").strip()
    if chosen and chosen not in PRESETS_BY_RELEASE:
        raise ValueError(
            f"{PRESET_ENV}={chosen!r} is not a preset of this app; use one of "
            f"{', '.join(PRESETS_BY_RELEASE)}."
        )
    if not offline:
        return chosen or PRESETS[0].release
    if available is None:
        available = available_presets(offline)
    if chosen in {preset.release for preset in available}:
        return chosen
    return loading.BUNDLED_MODEL


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
class RequestFields:
    """A request as the page and the API send it; the one declaration of the API's parameters.

    Empty strings mean "not given". `layers` is a comma-separated list of SAE ids (empty: all).
    """

    text: str
    model: str = ""
    release: str = ""
    layers: str = ""
    answer: str = ""
    contrast: str = ""
    method: str = "atp"
    ig_steps: int = DEFAULT_IG_STEPS
    counterfactual: str = ""


REQUEST_FIELDS = tuple(f.name for f in fields(RequestFields))

#: What each request field means, for API and MCP tool descriptions.
FIELD_HELP = {
    "text": "The prompt to attribute.",
    "model": "Model name (gpt2-small, pythia-70m-deduped, or the offline ioi-demo); empty "
    "follows the release, or the deployment's default model when both are empty.",
    "release": "SAE release; empty picks the model's first preset.",
    "layers": "Comma-separated SAE ids of the release to use; empty uses all.",
    "answer": "Score log p(answer | prompt); a leading space is part of the token (' Mary'). "
    "Empty: score the model's own top next-token prediction (the summary names it).",
    "contrast": "With answer, score logit(answer) - logit(contrast); one token each.",
    "method": "'atp' (attribution patching) or 'ig' (integrated gradients).",
    "ig_steps": "Integrated-gradient steps (1-64), used only with method 'ig'.",
    "counterfactual": "A prompt of the same token length; nodes are patched to their value on it.",
}


@dataclass(frozen=True)
class Settings:
    """One attribution request, normalised: equal settings give equal results (the cache key)."""

    model: str
    release: str
    sae_ids: tuple[str, ...]
    prompt: PromptSpec
    options: TraceOptions = field(default_factory=TraceOptions)

    @property
    def text(self) -> str:
        return self.prompt.text

    @property
    def method(self) -> str:
        return self.options.method

    @property
    def ig_steps(self) -> int:
        return self.options.ig_steps

    @property
    def saes(self) -> list[tuple[str, str]]:
        """The SAEs as `(release, sae_id)` pairs, the library's `saes=` argument."""
        return [(self.release, sae_id) for sae_id in self.sae_ids]

    def library_kwargs(self) -> dict[str, object]:
        """The `token_trace.trace` arguments that reproduce this request exactly."""
        chosen = {f.name: getattr(self.options, f.name) for f in fields(TraceOptions)}
        chosen.pop("device")  # where it ran, not what it computed
        return {"model": self.model, "saes": self.saes, **asdict(self.prompt), **chosen}

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


def _preset(model: str, release: str) -> Preset:
    """The preset a request names: `release` picks its model, `model` alone its first preset."""
    if release:
        if release not in PRESETS_BY_RELEASE:
            raise ValueError(
                f"This app offers the SAE releases {', '.join(PRESETS_BY_RELEASE)}; "
                f"not {release!r}."
            )
        preset = PRESETS_BY_RELEASE[release]
        if model and not _names_model(model, preset):
            raise ValueError(
                f"Release {release!r} belongs to model {preset.model!r}, not {model!r}."
            )
        return preset
    matching = [preset for preset in PRESETS if _names_model(model, preset)]
    if not matching:
        models = sorted({preset.model for preset in PRESETS})
        raise ValueError(f"This app offers the models {', '.join(models)}; not {model!r}.")
    return matching[0]


def _names_model(name: str, preset: Preset) -> bool:
    """Whether `name` names the preset's model under any of its names (`gemma-3-270m` and
    `google/gemma-3-270m`, `gpt2` and `gpt2-small`)."""
    if name == preset.model:
        return True
    try:
        return loading.canonical_model_name(name) == loading.canonical_model_name(preset.model)
    except ValueError:  # not a model TransformerLens knows: the caller names what is offered
        return False


def _ig_steps(method: str, ig_steps: float | None) -> int:
    """Steps for IG, checked only for IG (AtP ignores the field)."""
    if method != "ig":
        return DEFAULT_IG_STEPS
    try:
        return whole_number(
            DEFAULT_IG_STEPS if ig_steps is None else ig_steps, "ig_steps", 1, MAX_IG_STEPS
        )
    except ValueError:
        raise ValueError(
            f"Integrated gradients needs a whole number of steps between 1 and {MAX_IG_STEPS}."
        ) from None


def make_settings(
    request: RequestFields,
    layers: str | Sequence[str] | None = None,
    default_release: str = PRESETS[0].release,
) -> Settings:
    """Check a request's fields (not yet against the model's tokenizer) and normalise them.

    `layers` (the page's checkboxes) overrides the request's comma-separated `layers` when given.
    A request naming neither model nor release gets the deployment's `default_release`.
    """
    if not request.text or not request.text.strip():
        raise ValueError("The prompt is empty: type some text to attribute.")
    model, release = (request.model or "").strip(), (request.release or "").strip()
    preset = _preset(model, release or ("" if model else default_release))
    method = (request.method or "atp").strip().lower()
    one_of(method, "method", tuple(METHODS))
    return Settings(
        model=preset.model,
        release=preset.release,
        sae_ids=parse_layers(request.layers if layers is None else layers, preset.release),
        prompt=PromptSpec(
            text=request.text,
            # No answer: what the model predicts next, not the text's own last token.
            answer=_optional(request.answer) or (None if request.contrast else TOP_PREDICTION),
            contrast=_optional(request.contrast),
            counterfactual=_optional_prompt(request.counterfactual),
        ),
        options=TraceOptions(method=method, ig_steps=_ig_steps(method, request.ig_steps)),
    )


# --------------------------------------------------------------------------- shareable links

#: Query parameters of a shareable link: every request field, the selected node's id, the
#: "What if" panel's edits, and the graph's pinned nodes with the graph size they come from.
NODE_PARAMETER, EDITS_PARAMETER, PINNED_PARAMETER, NODES_PARAMETER = (
    "node", "edits", "pinned", "max_nodes",
)  # fmt: skip
LINK_PARAMETERS = (
    *REQUEST_FIELDS, NODE_PARAMETER, EDITS_PARAMETER, PINNED_PARAMETER, NODES_PARAMETER,
)  # fmt: skip


@dataclass(frozen=True)
class SharedLink:
    """What a shareable link holds: the request, the selected node, the edits and the pinned
    nodes (checked), and the graph size the pins were made on."""

    request: RequestFields
    node: str | None = None
    edits: str | None = None
    pinned: tuple[str, ...] = ()
    max_nodes: int = DEFAULT_MAX_NODES


def share_query(
    request: RequestFields,
    layers: Sequence[str] | None,
    node: str | None,
    edits: str | None = None,
    pinned: Sequence[str] = (),
    max_nodes: int = DEFAULT_MAX_NODES,
) -> str:
    """The query string (`?text=...`) that reopens this request, with its selected node, its
    edits and its pinned nodes (and the graph size they were pinned on, which the page rebuilds).

    Fields left at their defaults are omitted, and so are the layers when all are chosen.
    """
    defaults = RequestFields(text="")
    values = {
        name: getattr(request, name)
        for name in REQUEST_FIELDS
        if getattr(request, name) not in ("", None, getattr(defaults, name))
    }
    values.pop("layers", None)
    release = request.release or (PRESETS[0].release if not request.model else "")
    if layers and release and list(layers) != loading.release_sae_ids(release):
        values["layers"] = ",".join(layers)
    if "ig_steps" in values:
        values["ig_steps"] = int(values["ig_steps"])
    if node:
        values[NODE_PARAMETER] = node
    if edits and edits.strip():
        values[EDITS_PARAMETER] = edits.strip()
    if pinned:
        values[PINNED_PARAMETER] = ",".join(pinned)
        values[NODES_PARAMETER] = int(max_nodes)
    return "?" + urllib.parse.urlencode(values) if values else ""


def request_from_query(params: Mapping[str, str]) -> SharedLink | None:
    """What a shareable link holds; None for a link without a request.

    Unknown parameters and bad values are errors with the form's own messages.
    """
    if not params:
        return None
    unknown = sorted(set(params) - set(LINK_PARAMETERS))
    if unknown:
        raise ValueError(
            f"The link has settings this app does not know: {', '.join(map(repr, unknown))}; "
            f"it knows {', '.join(LINK_PARAMETERS)}."
        )
    values: dict[str, object] = {name: params[name] for name in REQUEST_FIELDS if name in params}
    if "ig_steps" in values:
        try:
            values["ig_steps"] = float(values["ig_steps"])
        except ValueError as error:
            raise ValueError(
                f"ig_steps in the link must be a number, not {params['ig_steps']!r}."
            ) from error
    request = RequestFields(**{"text": "", **values})
    make_settings(request)  # the form's checks and messages
    edits = params.get(EDITS_PARAMETER) or None
    if edits is not None:
        parse_edits(edits)  # the panel's checks and messages
    pinned = parse_pins(params.get(PINNED_PARAMETER, ""))
    max_nodes = whole_number(
        params.get(NODES_PARAMETER, DEFAULT_MAX_NODES), "max_nodes in the link", 1, MAX_GRAPH_NODES
    )
    return SharedLink(request, params.get(NODE_PARAMETER) or None, edits, pinned, max_nodes)


# --------------------------------------------------------------------------- pinned nodes

MAX_PINS = 64
PINS_HELP = (
    "Comma-separated graph node ids, kept in the graph whatever the thresholds, ringed in gold, "
    "pinned in the downloaded file (Neuronpedia's pinned subgraph) and carried by the link. "
    "Click a node and press Pin, or type ids and press Enter."
)
#: A graph node id as the graph shows it: `{layer}_{feature}_{position}`, tokens `E_{id}_{pos}`.
GRAPH_NODE_ID = re.compile(r"(E|-?\d+)_(-?\d+)_(\d+)")


def parse_pins(text: str) -> tuple[str, ...]:
    """The pinned node ids a box or a link spells out (comma-separated graph node ids, in order,
    each once), or a ValueError naming the first that is not one."""
    pins = tuple(dict.fromkeys(part.strip() for part in (text or "").split(",") if part.strip()))
    for pin in pins:
        if GRAPH_NODE_ID.fullmatch(pin) is None:
            raise ValueError(
                f"Pinned node {pin!r} is not a graph node id: use layer_feature_position "
                "(errors layer_-1_position, tokens E_tokenid_position), as the graph shows them."
            )
    if len(pins) > MAX_PINS:
        raise ValueError(f"At most {MAX_PINS} pinned nodes, got {len(pins)}.")
    return pins


def toggle_pin(pins: Sequence[str], node: str | None) -> tuple[str, ...]:
    """The pins with `node` added (checked as a typed pin is), or removed when it is pinned
    already."""
    if not node:
        raise ValueError("Select a node first: click one in the graph (or a row of the table).")
    if node in pins:
        return tuple(pin for pin in pins if pin != node)
    return parse_pins(",".join((*pins, node)))


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


def load_examples(directory: Path, presets: Sequence[Preset], first: str) -> list[Example]:
    """The examples written for `presets` (the ones this deployment can run), those of the
    preset `first` first. Missing files are skipped."""
    found = []
    for preset in presets:
        path = directory / preset.examples_file if preset.examples_file else None
        if path is None or not path.is_file():
            continue
        for entry in json.loads(path.read_text()):
            found.append(
                Example(
                    name=entry["name"],
                    text=entry["text"],
                    release=preset.release,
                    answer=entry.get("answer"),
                    contrast=entry.get("contrast"),
                    counterfactual=entry.get("counterfactual"),
                )
            )
    return sorted(found, key=lambda example: example.release != first)


# --------------------------------------------------------------------------- interventions

#: Environment variable: the most tokens a "What if" request may generate on this deployment.
MAX_GENERATE_ENV = "TOKEN_TRACE_MAX_GENERATE"
MAX_GENERATE = 32
MAX_EDITS = 32
EDITS_HELP = (
    "Comma-separated edits, each NODE:ACTION. NODE is a graph node id layer_feature_position "
    "(errors layer_-1_position; * as the position: every position, generated ones too). ACTION "
    "is ablate (set to 0), xK (multiply by K), =V (set to V) or baseline (its counterfactual "
    "value). Example: 1_423_11:ablate, 2_17_*:x3"
)


def max_generate_from_env() -> int:
    """The per-deployment cap on generated tokens, from `TOKEN_TRACE_MAX_GENERATE` (32)."""
    raw = os.environ.get(MAX_GENERATE_ENV, "").strip()
    if not raw:
        return MAX_GENERATE
    return whole_number(raw, MAX_GENERATE_ENV, 0, MAX_GENERATE)


def parse_edits(text: str) -> tuple[Edit, ...]:
    """The edits a request spells out (`EDITS_HELP`), or a ValueError saying which one is wrong."""
    parts = [part.strip() for part in (text or "").split(",") if part.strip()]
    if not parts:
        raise ValueError("Name at least one edit, e.g. 1_423_11:ablate.")
    if len(parts) > MAX_EDITS:
        raise ValueError(f"At most {MAX_EDITS} edits per request, got {len(parts)}.")
    return tuple(_edit(part) for part in parts)


def _edit(part: str) -> Edit:
    node, _, action = part.rpartition(":")
    action = action.strip().lower()
    if not node:
        raise ValueError(f"Edit {part!r} has no action: write NODE:ablate, NODE:x2, NODE:=1.5 "
                         "or NODE:baseline.")  # fmt: skip
    if action == "ablate":
        return Edit(node.strip(), scale=0.0)
    if action == "baseline":
        return Edit(node.strip(), baseline=True)
    kind, number = action[:1], action[1:]
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if kind not in ("x", "=") or not math.isfinite(value):
        raise ValueError(
            f"Edit {part!r}: the action must be ablate, xK, =V or baseline with K and V numbers."
        )
    return Edit(node.strip(), scale=value) if kind == "x" else Edit(node.strip(), value=value)
