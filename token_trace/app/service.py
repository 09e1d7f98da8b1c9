"""The app's service: load and cache, run on the GPU, and turn failures into messages.

ZeroGPU: weights are loaded in the main process, outside the GPU handler (the default preset's at
startup on a Space, others on first use), where ZeroGPU keeps them and hands them to each GPU
worker; only the attribution itself runs under `@spaces.GPU`, which is a no-op anywhere else. The
handler's argument (`Settings`) and result (`Trace`) are plain picklable records, as ZeroGPU's
forked workers need.
"""

from __future__ import annotations

import functools
import html
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr
import pandas as pd
import spaces
import torch

from token_trace import loading
from token_trace.ablation import Verification, verify
from token_trace.app.requests import MAX_GENERATE, MAX_TOKENS_ENV, PRESETS_BY_RELEASE, Settings
from token_trace.backend import Model
from token_trace.circuit import Faithfulness, faithfulness_curve
from token_trace.graph import Graph, graph_of
from token_trace.interventions import Edit, Intervention, intervene
from token_trace.options import GraphOptions
from token_trace.pipeline import resolve, run_traces
from token_trace.prompts import tokenizer_length
from token_trace.records import Trace

logger = logging.getLogger("token_trace.app")

# --------------------------------------------------------------------------- loading


def _load(model: str, release: str, sae_ids: Sequence[str]) -> Model:
    """The model, with the SAEs loaded too (the library caches both and loads each only once)."""
    return resolve(model, [(release, sae_id) for sae_id in sae_ids]).model


def preload(release: str) -> None:
    """Load a preset's model and all its SAEs now (at a Space's startup, before any request)."""
    _load(PRESETS_BY_RELEASE[release].model, release, loading.release_sae_ids(release))


def load_and_check(settings: Settings, max_tokens: int) -> None:
    """Load (or find cached) the request's model and SAEs, and apply the deployment's token cap.

    Runs in the main process, outside the GPU handler, on purpose: on ZeroGPU, weights loaded
    there are handed to every GPU worker, while weights loaded inside a worker would be loaded
    again for each request. The rest of the prompt is checked by the library during the run.
    """
    model = _load(settings.model, settings.release, settings.sae_ids)
    n_tokens = tokenizer_length(model, settings.text)
    if n_tokens is not None and n_tokens > max_tokens:
        raise ValueError(
            f"The prompt is {n_tokens} tokens; this deployment attributes at most {max_tokens} "
            f"({MAX_TOKENS_ENV}). Shorten it."
        )


def gpu_seconds(settings: Settings) -> int:
    """A ZeroGPU reservation for the request: short ones get scheduled sooner.

    AtP is one forward and backward pass; IG runs `ig_steps` batched passes per SAE layer.
    """
    options = settings.options
    passes = 2 if options.method == "atp" else 2 + options.ig_steps * len(settings.sae_ids) // 4
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


def user_errors(fn: Callable[..., Any], *, escape: bool = True) -> Callable[..., Any]:
    """Show every error as a `gr.Error` (in the page and to API clients) and keep serving.

    Applied inside the GPU handler too: ZeroGPU forwards only `gr.Error` messages from its worker.
    For the page, messages are escaped because Gradio renders them as HTML and they may quote the
    prompt; API and MCP clients (`escape=False`) get the plain text.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error as error:
            if not escape:
                raise
            # Raised plain (a GPU worker's): escape it for the page now.
            raise gr.Error(html.escape(str(error.message), quote=False)) from error
        except Exception as error:
            message = user_message(error)
            if is_out_of_memory(error):
                release_memory()
            expected = message is not None
            if not expected:
                logger.exception("token-trace request failed")
                message = f"token-trace failed unexpectedly ({type(error).__name__}: {error})."
            shown = html.escape(message, quote=False) if escape else message
            raise gr.Error(shown, print_exception=not expected) from error

    return wrapper


def plain_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`user_errors` without escaping: for GPU handlers, whose callers escape for the page."""
    return user_errors(fn, escape=False)


# --------------------------------------------------------------------------- running


@spaces.GPU(duration=gpu_seconds)
@plain_errors
def trace_on_gpu(settings: Settings) -> Trace:
    """The one step that needs the accelerator: the library's attribution run (which holds the
    model's lock while it tokenises and runs, so concurrent requests never mix)."""
    loaded = resolve(settings.model, settings.saes, settings.options)  # cached: loaded before
    (result,), _ = run_traces([settings.prompt], loaded, settings.options)
    return result


def graph_seconds(settings: Settings, max_nodes: int) -> int:
    """ZeroGPU reservation for a graph: the AtP pass, then one backward per 64 kept nodes."""
    return int(min(120, 20 + 4 + 2 * max_nodes // 64))


def verify_seconds(result: Trace, k: int) -> int:
    """ZeroGPU reservation for real ablations: one batched forward of k + layers rows."""
    return int(min(120, 20 + (k + len(result.saes)) // 16))


@spaces.GPU(duration=graph_seconds)
@plain_errors
def graph_on_gpu(settings: Settings, max_nodes: int) -> Graph:
    """A request's graph (AtP nodes and edges; pruned again later, off the GPU)."""
    options = replace(settings.options, method="atp")  # graphs come from attribution patching
    loaded = resolve(settings.model, settings.saes, options)
    return graph_of(settings.prompt, loaded, options, GraphOptions(max_nodes, None, None))


@spaces.GPU(duration=verify_seconds)
@plain_errors
def verify_on_gpu(result: Trace, k: int) -> Verification:
    """Real ablations of a trace's top nodes and whole layers."""
    return verify(result, k)


def intervene_seconds(result: Trace, edits: Sequence[Edit], generate: int) -> int:
    """ZeroGPU reservation for an edit: two forwards per generated token, before and after."""
    return int(min(120, 20 + generate // 4))


@spaces.GPU(duration=intervene_seconds)
@plain_errors
def intervene_on_gpu(result: Trace, edits: Sequence[Edit], generate: int) -> Intervention:
    """The trace's prompt rerun with `edits` (and `generate` tokens continued both ways)."""
    return intervene(result, edits, generate)


def faithfulness_seconds(graph: Graph) -> int:
    return int(min(120, 20 + len(graph.candidate_nodes) // 64))


@spaces.GPU(duration=faithfulness_seconds)
@plain_errors
def faithfulness_on_gpu(graph: Graph) -> tuple[pd.DataFrame, Faithfulness]:
    """How much of the metric the graph's kept nodes carry, and the curve over sizes in the
    graph's own influence order (batched real reruns)."""
    kept = graph.faithfulness()
    sizes = sorted({*FAITHFULNESS_SIZES, kept.n_nodes})
    curve = faithfulness_curve(graph.trace, [*sizes, "all"], "influence", graph=graph)
    return curve, kept


#: Circuit sizes of the app's faithfulness curve (the kept graph's own size is added).
FAITHFULNESS_SIZES = (5, 10, 20, 50, 100, 200, 500)


@dataclass(frozen=True)
class Run:
    """A finished request: its settings, the library's trace, and the compute time."""

    settings: Settings
    trace: Trace
    seconds: float


class ResultCache:
    """Finished results per key (LRU), shared by all sessions and threads.

    Results are never modified after they are stored: views filter copies of their tables.
    """

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class Service:
    """Runs requests for one deployment: its token cap, its result cache, and whether feature
    labels may be fetched from Neuronpedia (online deployments; the bundled cards always label)."""

    def __init__(
        self,
        max_tokens: int,
        cache: ResultCache | None = None,
        online_labels: bool = False,
        max_generate: int = MAX_GENERATE,
    ) -> None:
        self.max_tokens = max_tokens
        self.cache = cache or ResultCache()
        self.online_labels = online_labels
        #: The most tokens a "What if" request may generate on this deployment.
        self.max_generate = max_generate

    def obtain(self, settings: Settings, progress: Callable[..., Any] | None = None) -> Run:
        """The run for `settings`: from the cache, or loaded, checked and computed now."""
        report = progress or (lambda *args, **kwargs: None)
        run = self.cache.get(settings)
        if run is None:
            report(0.05, desc=f"Loading {settings.model} and its SAEs")
            load_and_check(settings, self.max_tokens)
            report(0.35, desc=f"Attributing over {len(settings.sae_ids)} SAEs")
            start = time.perf_counter()
            result = trace_on_gpu(settings)
            seconds = time.perf_counter() - start
            report(0.8, desc="Labelling the features")
            # Labels are fetched here, in the main process: GPU workers get no network time.
            run = Run(settings, result.with_labels(online=self.online_labels), seconds)
            self.cache.put(settings, run)
        report(0.9, desc="Drawing")
        return run

    def graph(
        self, settings: Settings, max_nodes: int, progress: Callable[..., Any] | None = None
    ) -> Graph:
        """The request's graph of its `max_nodes` largest nodes, unpruned (cached)."""
        report = progress or (lambda *args, **kwargs: None)
        key = ("graph", settings, max_nodes)
        graph = self.cache.get(key)
        if graph is None:
            report(0.05, desc=f"Loading {settings.model} and its SAEs")
            load_and_check(settings, self.max_tokens)
            report(0.3, desc=f"Computing the edges between {max_nodes} nodes")
            graph = graph_on_gpu(settings, max_nodes).with_labels(online=self.online_labels)
            self.cache.put(key, graph)
        return graph

    def intervene(
        self,
        settings: Settings,
        edits: tuple[Edit, ...],
        generate: int,
        progress: Callable[..., Any] | None = None,
    ) -> Intervention:
        """The request's prompt rerun with `edits` (cached)."""
        key = ("intervene", settings, edits, generate)
        found = self.cache.get(key)
        if found is None:
            result = self.obtain(settings, progress).trace
            if progress is not None:
                progress(0.6, desc=f"Rerunning with {len(edits)} edits")
            found = intervene_on_gpu(result, edits, generate)
            self.cache.put(key, found)
        return found

    def faithfulness(
        self, settings: Settings, graph: Graph, key: tuple
    ) -> tuple[pd.DataFrame, Faithfulness]:
        """The pruned `graph`'s faithfulness and curve (cached under the graph's `key`)."""
        found = self.cache.get(("faithfulness", settings, *key))
        if found is None:
            found = faithfulness_on_gpu(graph)
            self.cache.put(("faithfulness", settings, *key), found)
        return found

    def verify(self, settings: Settings, k: int, progress: Callable[..., Any] | None = None):
        """Real ablations of the request's top `k` nodes and whole layers (cached)."""
        key = ("verify", settings, k)
        check = self.cache.get(key)
        if check is None:
            result = self.obtain(settings, progress).trace
            if progress is not None:
                progress(0.6, desc=f"Ablating {k} nodes and {len(result.saes)} layers")
            check = verify_on_gpu(result, k)
            self.cache.put(key, check)
        return check
