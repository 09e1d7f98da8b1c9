"""Fixtures every tier shares (the builders themselves are in `tests/helpers.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sae_lens import SAE
from transformer_lens import HookedTransformer

from tests.helpers import Served, start_app, tiny_model, tiny_saes


@pytest.fixture(scope="session")
def model() -> HookedTransformer:
    return tiny_model()


@pytest.fixture(scope="session")
def saes(model: HookedTransformer) -> dict[str, SAE]:
    return tiny_saes(model)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """The app, offline on the bundled model, served in this process (one per test module)."""
    running = start_app()
    yield running
    running.demo.close()
