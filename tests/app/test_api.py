"""The Gradio app, launched in-process on the bundled offline model and driven with gradio_client.

Checks that the API returns exactly the library's results, that every kind of bad input comes back
as a readable error while the server keeps serving, that concurrent requests do not mix, and that
`python app.py` starts offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pandas as pd
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from transformer_lens import HookedTransformer

from tests.helpers import CAP, ROOT, Served, app_py_offline, demo_examples
from token_trace import (
    TOP_PREDICTION,
    compute_graph,
    load_model,
    trace,
    verify,
)
from token_trace.app import exports, service
from token_trace.loading import release_sae_ids


@pytest.fixture(scope="module")
def demo_model() -> HookedTransformer:
    return load_model("ioi-demo", "cpu")


def api_request(example: dict, **overrides: object) -> dict:
    """An `/attribute` request for a demo example (the API's parameter names)."""
    request = {
        "text": example["text"],
        "model": "ioi-demo",
        "answer": example.get("answer") or "",
        "contrast": example.get("contrast") or "",
    }
    return {**request, **overrides}


def library_result(request: dict) -> pd.DataFrame:
    """What the library itself returns for an API request (mapped here, not by the app), with
    the labels the app adds (`Trace.with_labels`; offline: the bundled cards')."""
    layers = request.get("layers")
    return (
        trace(
            request["text"],
            model=request["model"],
            saes=[("ioi-demo", sae_id) for sae_id in layers.split(",")] if layers else None,
            answer=app_answer(request),
            contrast=request.get("contrast") or None,
            method=request.get("method", "atp"),
            ig_steps=request.get("ig_steps", 10),
            baseline_text=request.get("counterfactual") or None,
            device="cpu",
        )
        .with_labels()
        .to_frame()
    )


def library_trace(request: dict):
    """The library's trace for an API request without layers or method options."""
    return trace(
        request["text"],
        "ioi-demo",
        answer=app_answer(request),
        contrast=request.get("contrast") or None,
        device="cpu",
    )


def app_answer(request: dict) -> str | None:
    """The library's answer for the API's: an empty one scores the model's top prediction."""
    return request.get("answer") or (None if request.get("contrast") else TOP_PREDICTION)


def swapped_names(example: dict) -> str:
    """The example with its answer and contrast names exchanged: a same-length counterfactual."""
    answer, contrast = example["answer"].strip(), example["contrast"].strip()
    words = example["text"].split(" ")
    swap = {answer: contrast, contrast: answer}
    return " ".join(swap.get(word, word) for word in words)


# --------------------------------------------------------------------------- results


def requests_to_compare() -> list[dict]:
    first, *others = demo_examples()
    second = others[0] if others else first
    return [
        api_request(first),
        api_request(first, answer="", contrast=""),  # score the model's top prediction
        api_request(second, contrast="", method="ig", ig_steps=3),
        api_request(first, counterfactual=swapped_names(first)),
    ]


@pytest.mark.parametrize("index", range(4))
def test_attribute_returns_the_library_table(served: Served, index: int) -> None:
    request = requests_to_compare()[index]
    nodes = served.client.predict(**request, api_name="/attribute")
    expected = library_result(request)
    assert list(nodes[0]) == list(expected.columns)
    assert nodes == exports.records(expected)


def test_top_k_and_layers(served: Served) -> None:
    example = demo_examples()[0]
    layer = release_sae_ids("ioi-demo")[-1]
    request = api_request(example, layers=layer)
    nodes = served.client.predict(**request, top_k=5, api_name="/attribute")
    expected = library_result(request)
    top = expected.loc[expected["attribution"].abs().nlargest(5).index]
    assert nodes == exports.records(top)
    assert {node["sae_id"] for node in nodes} == {layer}


def test_summary_matches_the_library_metadata(served: Served) -> None:
    request = api_request(demo_examples()[0])
    run = served.client.predict(**request, api_name="/summary")
    expected = library_result(request)
    for key in ("tokens", "metric", "metric_description", "target", "bos_position"):
        assert run[key] == expected.attrs[key]
    assert run["metric_value"] == pytest.approx(expected.attrs["metric_value"], rel=1e-6)
    assert [p["token"] for p in run["top_predictions"]] == [
        p["token"] for p in expected.attrs["top_predictions"]
    ]
    assert len(run["position_totals"]) == len(expected.attrs["tokens"])


def test_repeated_requests_come_from_the_cache(served: Served, monkeypatch) -> None:
    request = api_request(demo_examples()[0])
    first = served.client.predict(**request, api_name="/attribute")

    def no_recompute(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached request was recomputed")

    monkeypatch.setattr(service, "run_traces", no_recompute)
    assert served.client.predict(**request, api_name="/attribute") == first


# --------------------------------------------------------------------------- bad input


def longer_than(model: HookedTransformer, text: str, n_tokens: int) -> str:
    """`text` with its own words appended until it has just over `n_tokens` tokens."""
    words, out = text.split(" "), text
    while model.to_tokens(out, truncate=False).shape[1] <= n_tokens:
        out += " " + words[len(out) % len(words)]
    return out


#: (name, request overrides from (example, model), expected message)
BAD_INPUTS = [
    ("empty prompt", lambda ex, m: {"text": ""}, "The prompt is empty"),
    ("blank prompt", lambda ex, m: {"text": "  \n "}, "The prompt is empty"),
    ("multi-token answer", lambda ex, m: {"answer": ex["answer"] * 2}, "is 2 tokens"),
    ("answer is contrast", lambda ex, m: {"contrast": ex["answer"]}, "are the same token"),
    ("contrast alone", lambda ex, m: {"answer": ""}, "needs an answer"),
    (
        "counterfactual length",
        lambda ex, m: {"counterfactual": ex["text"].rsplit(" ", 1)[0]},
        "patching needs the same number of tokens",
    ),
    # The cap counts the text's own tokens; `longer_than` counts BOS too.
    (
        "over the token cap",
        lambda ex, m: {"text": longer_than(m, ex["text"], CAP + 1)},
        f"at most {CAP}",
    ),
    ("unknown model", lambda ex, m: {"model": "llama-7b"}, "This app offers the models"),
    ("unknown release", lambda ex, m: {"release": "gpt2-xl-res"}, "This app offers the SAE"),
    ("unknown layer", lambda ex, m: {"layers": "blocks.9.hook_z"}, "has no SAE 'blocks.9.hook_z'"),
    ("IG steps", lambda ex, m: {"method": "ig", "ig_steps": 0}, "between 1 and 64"),
    ("fractional IG steps", lambda ex, m: {"method": "ig", "ig_steps": 2.5}, "whole number"),
    ("unknown answer word", lambda ex, m: {"answer": " Zorblax"}, "does not know .'Zorblax'"),
    (
        "unknown contrast word",
        lambda ex, m: {"contrast": " Zorblax"},
        "would score the unknown token",
    ),
    ("unknown method", lambda ex, m: {"method": "magic"}, "Unknown method 'magic'"),
]


@pytest.mark.parametrize(
    ("overrides", "message"), [pytest.param(f, msg, id=name) for name, f, msg in BAD_INPUTS]
)
def test_bad_input_returns_its_message(
    served: Served, demo_model: HookedTransformer, overrides, message: str
) -> None:
    example = demo_examples()[0]
    request = api_request(example, **overrides(example, demo_model))
    with pytest.raises(AppError, match=message):
        served.client.predict(**request, api_name="/attribute")


def test_negative_top_k_is_an_error(served: Served) -> None:
    with pytest.raises(AppError, match="top_k must be 0"):
        served.client.predict(**api_request(demo_examples()[0]), top_k=-1, api_name="/attribute")


def test_atp_ignores_the_ig_steps_field(served: Served) -> None:
    request = api_request(demo_examples()[0])
    nodes = served.client.predict(**request, ig_steps=0, top_k=3, api_name="/attribute")
    assert nodes == served.client.predict(**request, top_k=3, api_name="/attribute")


def test_unknown_prompt_words_are_a_warning_in_the_summary(served: Served) -> None:
    example = demo_examples()[0]
    text = example["text"].replace(" museum", " Zorblax")
    run = served.client.predict(**api_request(example, text=text), api_name="/summary")
    assert len(run["warnings"]) == 1
    assert "'Zorblax'" in run["warnings"][0] and "<unk>" in run["warnings"][0]
    clean = served.client.predict(**api_request(example), api_name="/summary")
    assert clean["warnings"] == []


def test_prompt_over_the_model_context(
    served: Served, demo_model: HookedTransformer, monkeypatch
) -> None:
    monkeypatch.setattr(served.page.service, "max_tokens", 10_000)
    example = demo_examples()[0]
    text = longer_than(demo_model, example["text"], demo_model.cfg.n_ctx + 1)
    with pytest.raises(AppError, match="reads at most 64"):
        served.client.predict(**api_request(example, text=text), api_name="/attribute")


def test_model_load_failure(served: Served, monkeypatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network in this test")

    monkeypatch.setattr(HookedTransformer, "from_pretrained", offline)
    request = {"text": "When John and Mary went to the shops", "model": "gpt2-small"}
    with pytest.raises(AppError, match="Could not load model 'gpt2'"):
        served.client.predict(**request, api_name="/attribute")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "Out of memory"),
        (KeyError("bug"), "failed unexpectedly"),
    ],
)
def test_compute_errors_are_reported_and_the_server_keeps_serving(
    served: Served, monkeypatch, error: Exception, message: str
) -> None:
    example = demo_examples()[0]

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(service, "run_traces", fail)
    fresh = api_request(example, text=example["text"] + " " + type(error).__name__)
    with pytest.raises(AppError, match=message):
        served.client.predict(**fresh, api_name="/attribute")
    monkeypatch.undo()
    assert served.client.predict(**api_request(example), api_name="/attribute")


# --------------------------------------------------------------------------- concurrency


def test_concurrent_requests_match_sequential_library_runs(served: Served, monkeypatch) -> None:
    monkeypatch.setattr(served.page.service, "cache", service.ResultCache())  # nothing cached
    examples = demo_examples()
    layer_ids = release_sae_ids("ioi-demo")
    requests = [
        api_request(
            examples[i % len(examples)],
            method="ig" if i % 2 else "atp",
            ig_steps=2 + i,
            layers=",".join(layer_ids[i % len(layer_ids) :]),
        )
        for i in range(8)
    ]
    expected = [exports.records(library_result(request)) for request in requests]
    jobs = [served.client.submit(**request, api_name="/attribute") for request in requests]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: job.result(timeout=120), jobs))
    for got, want in zip(results, expected):
        assert got == want


# --------------------------------------------------------------------------- page, views, files


def test_an_offline_request_naming_no_model_gets_the_bundled_model(served: Served) -> None:
    config = httpx.get(f"{served.url}config", timeout=30).text
    assert "Offline mode" in config
    endpoint = served.client.view_api(print_info=False, return_format="dict")
    parameters = endpoint["named_endpoints"]["/attribute"]["parameters"]
    assert [p["parameter_name"] for p in parameters[:2]] == ["text", "model"]
    assert parameters[1]["parameter_default"] == ""  # empty: the deployment's preset
    run = served.client.predict(text=demo_examples()[0]["text"], api_name="/summary")
    assert run["model"] == "ioi-demo"


@pytest.mark.slow
def test_python_app_py_starts_offline_and_answers() -> None:
    with app_py_offline({**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120) as (url, serving):
        start = time.perf_counter()
        nodes = Client(url, verbose=False).predict(
            **api_request(demo_examples()[0]), top_k=3, api_name="/attribute"
        )
        assert len(nodes) == 3
        first = serving + time.perf_counter() - start
        print(f"python app.py: first result {first:.1f} s after start")


@pytest.mark.slow
def test_example_client_reports_a_model_it_cannot_load_without_a_traceback(
    served: Served, monkeypatch
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network in this test")

    monkeypatch.setattr(HookedTransformer, "from_pretrained", offline)
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "client.py"), served.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "Could not load model 'gpt2'" in done.stderr and "--demo" in done.stderr
    demo = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "client.py"),
            served.url,
            "--demo",
            "--top-k",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr
    assert "logit(" in demo.stdout


# --------------------------------------------------------------------------- graph and checks


def test_graph_endpoint_returns_the_library_graph_as_neuronpedia_json(served: Served) -> None:
    request = api_request(demo_examples()[0])
    exported = served.client.predict(**request, max_nodes=50, api_name="/graph")
    assert set(exported) == {"metadata", "qParams", "nodes", "links"}
    expected = compute_graph(
        request["text"],
        "ioi-demo",
        answer=request["answer"],
        contrast=request["contrast"],
        max_nodes=50,
        device="cpu",
    )
    assert [node["node_id"] for node in exported["nodes"]] == list(expected.nodes["node_id"])
    assert len(exported["links"]) == len(expected.edges)
    looser = served.client.predict(**request, max_nodes=50, edge_threshold=1.0, api_name="/graph")
    assert len(looser["links"]) >= len(exported["links"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_nodes": 0}, "max_nodes must be a whole number"),
        ({"max_nodes": 20.5}, "max_nodes must be a whole number"),
        ({"node_threshold": 1.5}, "node_threshold must lie between 0 and 1"),
        ({"text": ""}, "The prompt is empty"),
    ],
)
def test_graph_endpoint_bad_input(served: Served, overrides: dict, message: str) -> None:
    request = {**api_request(demo_examples()[0]), **overrides}
    with pytest.raises(AppError, match=message):
        served.client.predict(**request, api_name="/graph")


def test_verify_endpoint_matches_the_library(served: Served) -> None:
    request = api_request(demo_examples()[0])
    result = served.client.predict(**request, top_k=10, api_name="/verify")
    expected = verify(library_trace(request), 10)
    assert result["sign_agreement"] == pytest.approx(expected.sign_agreement)
    assert result["rank_correlation"] == pytest.approx(expected.rank_correlation)
    assert [row["real"] for row in result["nodes"]] == pytest.approx(list(expected.nodes["real"]))
    assert [row["hook_name"] for row in result["layers"]] == list(expected.layers["hook_name"])
    assert result["layers_with_wrong_sign"] == expected.layers_with_wrong_sign
    with pytest.raises(AppError, match="top_k must be a whole number"):
        served.client.predict(**request, top_k=0, api_name="/verify")


def test_endpoints_are_mcp_tools_with_their_descriptions(served: Served) -> None:
    schema = httpx.get(f"{served.url}gradio_api/mcp/schema", timeout=30).json()
    # As MCP clients list them (the client-API twins are marked apart and not listed as tools).
    tools = {tool["name"]: tool for tool in schema if tool["meta"]["mcp_type"] == "tool"}
    assert set(tools) == {"attribute", "summary", "graph", "verify", "intervene"}
    for tool in tools.values():
        properties = tool["inputSchema"]["properties"]
        assert "text" in properties and properties["text"]["description"]
        assert tool["description"]
    assert "Neuronpedia" in tools["graph"]["description"]
    assert "max_nodes" in tools["graph"]["inputSchema"]["properties"]
    assert (
        "leading space" in tools["attribute"]["inputSchema"]["properties"]["answer"]["description"]
    )
