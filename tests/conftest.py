"""Fixtures every tier shares (the builders themselves are in `tests/helpers.py`)."""

from __future__ import annotations

import pytest
from sae_lens import SAE
from transformer_lens import HookedTransformer

from tests.helpers import tiny_model, tiny_saes


@pytest.fixture(scope="session")
def model() -> HookedTransformer:
    return tiny_model()


@pytest.fixture(scope="session")
def saes(model: HookedTransformer) -> dict[str, SAE]:
    return tiny_saes(model)
