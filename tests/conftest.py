"""Fixtures every tier shares (the builders themselves are in `tests/helpers.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from sae_lens import SAE
from transformer_lens import HookedTransformer

from tests.helpers import PROMPT, Served, res_jb_saes, start_app, tiny_model, tiny_saes
from token_trace import trace
from token_trace.graph import Graph, graph_from_trace

if TYPE_CHECKING:
    from tests.fake_hub import FakeHub


@pytest.fixture(scope="session")
def model() -> HookedTransformer:
    return tiny_model()


@pytest.fixture(scope="session")
def saes(model: HookedTransformer) -> dict[str, SAE]:
    return tiny_saes(model)


@pytest.fixture(scope="session")
def ioi_graph(model: HookedTransformer) -> Graph:
    """The tiny model's logit-difference graph, its SAEs carrying GPT-2 res-jb's Neuronpedia ids
    (so the file names a real Neuronpedia model and source set)."""
    saes = res_jb_saes(model)
    result = trace(PROMPT, model, saes, answer=" Mary", contrast=" John")
    return graph_from_trace(result, model=model, saes=saes, max_nodes=60)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """The app, offline on the bundled model, served in this process (one per test module)."""
    running = start_app()
    yield running
    running.demo.close()


@pytest.fixture(scope="session")
def fake_hub(tmp_path_factory: pytest.TempPathFactory) -> FakeHub:
    """A Hugging Face cache holding every non-bundled preset's files (built once, in seconds).

    Load from it in a subprocess with `fake_hub.env()`: see `tests/fake_hub.py` for why.
    """
    from tests.fake_hub import build_fake_hub  # only sessions that use it pay for the build

    return build_fake_hub(tmp_path_factory.mktemp("fake-hf-home"))


@pytest.fixture(scope="session")
def gemma_hub(tmp_path_factory: pytest.TempPathFactory) -> FakeHub:
    """A Hugging Face cache holding Gemma-3-270M at its real shapes and the four Gemma Scope 2
    SAEs its preset loads (built once per session: ~40 s, 840 MB; see `tests/fake_gemma.py`)."""
    from tests.fake_gemma import build_gemma3_hub

    return build_gemma3_hub(tmp_path_factory.mktemp("fake-gemma-home"))
