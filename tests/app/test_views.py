"""What the page draws from a trace, without a server: escaping, filters, exports, requests."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import demo_examples
from token_trace import Trace, trace
from token_trace.app import exports, plots, render
from token_trace.app.requests import RequestFields, make_settings


def demo_trace(**overrides: object) -> Trace:
    example = demo_examples()[0]
    request = {"answer": example["answer"], "contrast": example["contrast"], **overrides}
    return trace(example["text"], "ioi-demo", device="cpu", **request)


def test_views_escape_prompt_text() -> None:
    result = demo_trace()
    evil = '<img src=x onerror="alert(1)">'
    nodes = result.nodes.assign(token=evil)
    prompt = result.prompt.__class__(
        **{**vars(result.prompt), "tokens": (evil,) * len(result.prompt.tokens), "target": evil}
    )
    metric = result.metric.__class__(**{**vars(result.metric), "description": f"log p({evil})"})
    evil_trace = Trace(
        **{**vars(result), "nodes": nodes, "prompt": prompt, "metric": metric, "warnings": (evil,)}
    )
    pages = [
        render.tokens_html(evil_trace),
        render.summary_html(evil_trace, 0.1),
        render.feature_panel_html(evil_trace, int(nodes.index[0]), offline=True),
        plots.layer_position_heatmap(evil_trace, nodes).to_json(),
        plots.attribution_scatter(nodes).to_json(),
    ]
    for page in pages:
        assert "<img" not in page
    assert "&lt;img" in pages[0]


def test_table_filters_and_search() -> None:
    result = demo_trace()
    table = render.table_view(result, features_only=True, hide_bos=True, query="")
    assert set(table["type"]) == {"feature"}
    assert result.prompt.bos_position not in set(table["pos"])
    assert len(table) <= render.TABLE_ROWS
    assert table["attribution"].abs().is_monotonic_decreasing
    feature = int(table["feature"].iloc[0])
    assert (render.table_view(result, False, False, str(feature))["feature"] == feature).all()
    query = result.prompt.tokens[-1].strip().upper()
    found = render.table_view(result, False, False, query)["token"]
    assert len(found) and found.str.lower().str.contains(query.lower(), regex=False).all()
    assert len(result.layer_totals()) == len(result.saes)


def test_empty_table_has_the_real_headers() -> None:
    assert list(render.empty_table().columns) == list(render.TABLE_COLUMNS.values())


def test_summary_names_the_scored_token_and_warns_of_unknown_words() -> None:
    result = demo_trace(answer=" Mary", contrast=None)
    assert "scores &#x27; Mary&#x27;" in render.summary_html(result, None)
    example = demo_examples()[0]
    with pytest.warns(UserWarning, match="Zorblax"):
        unknown = trace(example["text"] + " Zorblax", "ioi-demo", device="cpu")
    assert "tt-warning" in render.summary_html(unknown, None)
    assert "tt-warning" not in render.summary_html(result, None)


def test_heatmap_labels_quote_tokens() -> None:
    result = demo_trace()
    figure = plots.layer_position_heatmap(result, result.nodes)
    labels = list(figure.layout.xaxis.ticktext)
    comma = result.prompt.tokens.index(",")
    assert labels[comma] == f"{comma}: &#x27;,&#x27;"


def test_layer_chart_colours_follow_the_sign() -> None:
    result = demo_trace()
    totals = result.layer_totals()
    figure = plots.layer_totals_figure(totals)
    features = figure.data[0]
    expected = ["#ca3e36" if value >= 0 else "#276eb0" for value in totals["features"]]
    assert list(features.marker.color) == expected


def test_exports_reproduce_the_run(tmp_path: Path) -> None:
    example = demo_examples()[0]
    settings = make_settings(
        RequestFields(example["text"], model="ioi-demo", answer=example["answer"])
    )
    result = trace(**settings.library_kwargs(), device="cpu")
    paths = exports.write_exports(settings, result, tmp_path)
    assert len(pd.read_csv(paths["csv"])) == len(result.nodes)
    pd.testing.assert_frame_equal(pd.read_parquet(paths["parquet"]), result.nodes)
    assert Trace.load(paths["trace"]) == result
    meta = json.loads(paths["json"].read_text())
    again = trace(**meta["library_call"], device="cpu")
    assert again == result
    assert meta["run"]["metric"]["value"] == result.metric.value


def test_export_folders_are_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(exports, "MAX_EXPORT_FOLDERS", 3)
    result = demo_trace()
    example = demo_examples()[0]
    kept = []
    for index in range(5):
        settings = make_settings(
            RequestFields(f"{example['text']} {index}", model="ioi-demo", answer=example["answer"])
        )
        kept.append(exports.write_exports(settings, result, tmp_path)["csv"].parent)
    folders = sorted(path.name for path in tmp_path.iterdir())
    assert len(folders) == 3
    assert folders == sorted(path.name for path in kept[-3:])  # the most recent stay
