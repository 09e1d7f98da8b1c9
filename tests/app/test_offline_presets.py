"""Offline, the app offers the bundled model and every preset whose files are in the local
Hugging Face cache, and serves each of them.

`python app.py` runs with HF_HUB_OFFLINE=1 and the fake cache of `tests/fake_hub.py` (a subprocess:
huggingface_hub fixes the cache location at import); the test reads the page's config and calls
`/attribute` for every preset through gradio_client. The page's parts are also checked without a
server, and the opening preset's rules as plain functions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from gradio_client import Client

from tests.fake_hub import PRESET_RELEASES, FakeHub
from tests.helpers import CAP, app_py_offline, load_app_module
from token_trace.app.page import Page
from token_trace.app.requests import (
    PRESET_ENV,
    PRESETS,
    PRESETS_BY_RELEASE,
    default_release,
    load_examples,
)
from token_trace.app.service import Service
from token_trace.loading import BUNDLED_MODEL, release_info, release_is_cached, release_sae_ids

TEXT = "When John and Mary went to the shops, John gave the bag to"
DROPDOWN_LABEL = "Model · SAE release"
#: The presets `tests/fake_hub.py`'s cache holds (the Gemma ones have their own cache and tests,
#: `tests/integration/test_fake_gemma.py`), in the app's order.
CACHED = [preset for preset in PRESETS if preset.release in (*PRESET_RELEASES, BUNDLED_MODEL)]


def page_parts(config: dict) -> tuple[list[str], str, str]:
    """The model dropdown's choices and value, and the banner's HTML, from a Blocks config."""
    components = config["components"]
    (dropdown,) = [c for c in components if c.get("props", {}).get("label") == DROPDOWN_LABEL]
    (banner,) = [c for c in components if c.get("props", {}).get("elem_id") == "tt-banner"]
    props = dropdown["props"]
    return [value for _, value in props["choices"]], props["value"], banner["props"]["value"]


def test_offline_page_offers_the_cached_presets_and_names_them(fake_hub: FakeHub) -> None:
    cached = [p for p in PRESETS if release_is_cached(p.release, fake_hub.hub_cache)]
    bundled_only = [PRESETS_BY_RELEASE[BUNDLED_MODEL]]
    module = load_app_module()
    for presets in (cached, bundled_only):
        page = Page(True, Service(CAP), module.EXAMPLES_DIR, presets=presets)
        choices, value, banner = page_parts(module.build(page).get_config_file())
        assert choices == [preset.release for preset in presets]
        assert value == BUNDLED_MODEL
        assert "Offline mode" in banner and f"<code>{BUNDLED_MODEL}</code>" in banner
        for preset in PRESETS:
            assert (f"<code>{preset.release}</code>" in banner) == (preset in presets)
    # the cached GPT-2 preset's examples are offered too, the opening preset's first
    examples = load_examples(module.EXAMPLES_DIR, cached, BUNDLED_MODEL)
    assert {example.release for example in examples} == {"gpt2-small-res-jb", BUNDLED_MODEL}
    assert examples[0].release == BUNDLED_MODEL


def test_offline_the_environment_picks_a_cached_preset_only(monkeypatch) -> None:
    available = [PRESETS_BY_RELEASE["pythia-70m-deduped-res-sm"], PRESETS_BY_RELEASE[BUNDLED_MODEL]]
    monkeypatch.delenv(PRESET_ENV, raising=False)
    assert default_release(offline=True, available=available) == BUNDLED_MODEL
    monkeypatch.setenv(PRESET_ENV, "pythia-70m-deduped-res-sm")
    assert default_release(offline=True, available=available) == "pythia-70m-deduped-res-sm"
    monkeypatch.setenv(PRESET_ENV, "gpt2-small-res-jb")  # a preset, but not cached here
    assert default_release(offline=True, available=available) == BUNDLED_MODEL
    monkeypatch.setenv(PRESET_ENV, "gpt2-xl")
    with pytest.raises(ValueError, match="is not a preset"):
        default_release(offline=True, available=available)


# --------------------------------------------------------------------------- python app.py


@pytest.fixture(scope="module")
def offline_app(fake_hub: FakeHub) -> Iterator[tuple[str, float]]:
    """`python app.py` with no hub and the fake cache: its URL and the seconds it took to serve."""
    env = fake_hub.env()
    env.pop(PRESET_ENV, None)
    with app_py_offline(env) as served:
        yield served


@pytest.mark.slow
def test_python_app_py_offline_offers_every_cached_preset(offline_app) -> None:
    url, seconds = offline_app
    print(f"python app.py served its page {seconds:.1f} s after start (fake cache)")
    choices, value, banner = page_parts(httpx.get(f"{url}config", timeout=10).json())
    assert choices == [preset.release for preset in CACHED]
    assert value == BUNDLED_MODEL  # the default stays the bundled model
    assert all(f"<code>{preset.release}</code>" in banner for preset in CACHED)


@pytest.mark.slow
@pytest.mark.parametrize("release", [preset.release for preset in CACHED])
def test_every_preset_answers_offline_through_the_api(offline_app, release: str) -> None:
    url, _ = offline_app
    start = time.perf_counter()
    nodes = Client(url, verbose=False).predict(
        text=TEXT,
        model=PRESETS_BY_RELEASE[release].model,
        release=release,
        top_k=0,
        api_name="/attribute",
    )
    print(f"{release}: {time.perf_counter() - start:.1f} s (the first request loads the weights)")
    sae_ids = release_sae_ids(release)
    assert {node["sae_id"] for node in nodes} == set(sae_ids)  # every SAE, every node
    pages = {} if release == BUNDLED_MODEL else release_info(release).neuronpedia_id
    features = [node for node in nodes if node["node_type"] == "feature"]
    assert len(features) >= len(sae_ids)
    for node in nodes:
        if node["node_type"] == "feature" and pages.get(node["sae_id"]):
            expected = f"https://www.neuronpedia.org/{pages[node['sae_id']]}/{node['feature']}"
            assert node["neuronpedia_url"] == expected
        else:
            assert node["neuronpedia_url"] is None
    assert bool(pages) == (release != BUNDLED_MODEL)  # the URLs above were checked
