"""The app's request rules and API signatures, without a server or a model."""

from __future__ import annotations

import inspect

import pytest

from tests.helpers import ROOT
from token_trace.app.api import Extra, endpoint
from token_trace.app.requests import (
    PRESETS,
    PRESETS_BY_RELEASE,
    REQUEST_FIELDS,
    RequestFields,
    default_release,
    load_examples,
    make_settings,
)
from token_trace.options import DEFAULT_IG_STEPS

TEXT = "When Mary and John went to the store, John gave a drink to"


def test_ig_steps_are_checked_only_for_ig():
    atp = make_settings(RequestFields(TEXT, model="ioi-demo", ig_steps=0))
    assert atp.method == "atp" and atp.ig_steps == DEFAULT_IG_STEPS
    assert (
        make_settings(RequestFields(TEXT, model="ioi-demo", method="ig", ig_steps=3)).ig_steps == 3
    )
    with pytest.raises(ValueError, match="between 1 and 64"):
        make_settings(RequestFields(TEXT, model="ioi-demo", method="ig", ig_steps=0))


def test_presets_are_registry_data():
    assert [preset.model for preset in PRESETS] == [
        "gpt2-small",
        "gpt2-small",
        "pythia-70m-deduped",
        "google/gemma-3-270m",
        "gemma-2-2b",
        "ioi-demo",
    ]
    settings = make_settings(RequestFields(TEXT, release="ioi-demo"))
    assert settings.model == "ioi-demo" and len(settings.sae_ids) == 4
    with pytest.raises(ValueError, match="belongs to model"):
        make_settings(RequestFields(TEXT, model="gpt2-small", release="ioi-demo"))


def test_examples_are_those_of_the_presets_that_can_run():
    bundled = [PRESETS_BY_RELEASE["ioi-demo"]]
    offline = load_examples(ROOT / "examples", bundled, "ioi-demo")
    online = load_examples(ROOT / "examples", PRESETS, PRESETS[0].release)
    assert offline and {example.release for example in offline} == {"ioi-demo"}
    assert online[0].release == PRESETS[0].release and len(online) > len(offline)
    assert load_examples(ROOT / "examples", PRESETS, "ioi-demo")[0].release == "ioi-demo"


def test_endpoint_signature_is_the_request_fields_plus_extras():
    seen = {}

    def handler(request: RequestFields, top_k: float) -> list[dict]:
        seen.update(request=request, top_k=top_k)
        return []

    fn = endpoint(
        handler,
        name="attribute",
        doc="nodes",
        returns=list[dict],
        extra=[Extra("top_k", int, 0, "How many nodes.")],
    )
    signature = inspect.signature(fn)
    assert list(signature.parameters) == [*REQUEST_FIELDS, "top_k"]
    assert signature.parameters["text"].default is inspect.Parameter.empty
    assert signature.parameters["model"].default == ""
    assert fn.__annotations__["ig_steps"] is int  # integers in the API's and MCP's schema
    fn(TEXT, top_k=5)
    assert seen == {"request": RequestFields(TEXT), "top_k": 5}


def test_a_request_naming_no_model_gets_the_deployments_preset():
    assert make_settings(RequestFields(TEXT), default_release="ioi-demo").model == "ioi-demo"
    only_release = RequestFields(TEXT, release="pythia-70m-deduped-res-sm")
    assert make_settings(only_release, default_release="ioi-demo").model == "pythia-70m-deduped"
    only_model = RequestFields(TEXT, model="gpt2-small")
    assert make_settings(only_model, default_release="ioi-demo").release == "gpt2-small-res-jb"


def test_the_opening_preset_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("TOKEN_TRACE_PRESET", raising=False)
    assert default_release(offline=False) == PRESETS[0].release
    monkeypatch.setenv("TOKEN_TRACE_PRESET", "pythia-70m-deduped-res-sm")
    assert default_release(offline=False) == "pythia-70m-deduped-res-sm"
    assert default_release(offline=True, available=[PRESETS_BY_RELEASE["ioi-demo"]]) == "ioi-demo"
    monkeypatch.setenv("TOKEN_TRACE_PRESET", "gpt2-xl")
    with pytest.raises(ValueError, match="TOKEN_TRACE_PRESET='gpt2-xl' is not a preset"):
        default_release(offline=False)


def test_a_shareable_link_carries_the_edits():
    import urllib.parse

    from token_trace.app.requests import SharedLink, request_from_query, share_query

    request = RequestFields(TEXT, model="ioi-demo")
    query = share_query(request, None, "1_2_3", "1_2_3:ablate, 2_17_*:x3")
    params = dict(urllib.parse.parse_qsl(query.lstrip("?")))
    assert request_from_query(params) == SharedLink(request, "1_2_3", "1_2_3:ablate, 2_17_*:x3")
    with pytest.raises(ValueError, match="the action must be"):
        request_from_query({**params, "edits": "1_2_3:xNaN"})


def test_models_are_matched_under_any_of_their_names():
    for model in ("gemma-3-270m", "google/gemma-3-270m"):
        settings = make_settings(
            RequestFields(TEXT, model=model, release="gemma-scope-2-270m-pt-res")
        )
        assert settings.release == "gemma-scope-2-270m-pt-res"
        assert make_settings(RequestFields(TEXT, model=model)).release == settings.release
    assert make_settings(RequestFields(TEXT, model="gpt2")).release == "gpt2-small-res-jb"
    with pytest.raises(ValueError, match="belongs to model"):
        make_settings(RequestFields(TEXT, model="gpt2", release="gemma-scope-2-270m-pt-res"))
    with pytest.raises(ValueError, match="This app offers the models"):
        make_settings(RequestFields(TEXT, model="gpt-7"))
