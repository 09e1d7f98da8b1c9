"""Fixtures every tier shares (the builders themselves are in `tests/helpers.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from sae_lens import SAE
from transformer_lens import HookedTransformer

from tests.helpers import Served, start_app, tiny_model, tiny_saes

if TYPE_CHECKING:
    from tests.fake_hub import FakeHub


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


@pytest.fixture(scope="session")
def fake_hub(tmp_path_factory: pytest.TempPathFactory) -> FakeHub:
    """A Hugging Face cache holding every non-bundled preset's files (built once, in seconds).

    Load from it in a subprocess with `fake_hub.env()`: see `tests/fake_hub.py` for why.
    """
    from tests.fake_hub import build_fake_hub  # only sessions that use it pay for the build

    return build_fake_hub(tmp_path_factory.mktemp("fake-hf-home"))
