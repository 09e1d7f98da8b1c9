"""Feature labels: Neuronpedia's explanations against a local fake server in the real API's shape
(concurrency, the disk cache, the probe, timeouts, rate limits), and the bundled model's labels
against its shipped feature cards read straight from the files."""

from __future__ import annotations

import functools
import json
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from tests.fake_neuronpedia_features import FakeNeuronpedia
from tests.helpers import PROMPT
from token_trace import Trace, loading, trace
from token_trace.demo import WEIGHTS_DIR
from token_trace.explanations import NO_EXPLANATION_DAYS, Neuronpedia, explanations, status
from token_trace.graph import graph_from_trace
from token_trace.labels import labels_for

NID = "gpt2-small/6-res-jb"


@pytest.fixture(autouse=True)
def no_real_network(monkeypatch, tmp_path):
    """Defaults point at a closed port and a temporary cache: nothing here reaches the internet
    or the user's cache, even by mistake."""
    monkeypatch.setenv("TOKEN_TRACE_NEURONPEDIA_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("TOKEN_TRACE_CACHE", str(tmp_path / "default-cache"))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings(server: FakeNeuronpedia | str, cache: Path, **kwargs) -> Neuronpedia:
    url = server if isinstance(server, str) else server.url
    return Neuronpedia(base_url=url, cache_dir=cache, **kwargs)


def cache_entries(source: Neuronpedia, nid: str = NID) -> dict:
    return json.loads(source.cache_file(nid).read_text())["features"]


# --------------------------------------------------------------------------- Neuronpedia


def test_explanations_read_the_best_description_and_tell_none_from_not_asked(tmp_path):
    features = {(NID, 1): ["names of women", "the token Mary"], (NID, 2): []}
    with FakeNeuronpedia(features) as server:
        source = settings(server, tmp_path)
        offline = explanations([(NID, 1)], neuronpedia=source)
        assert offline.labels == {} and offline.unanswered == 1 and server.requests == []
        found = explanations([(NID, 1), (NID, 2), (NID, 3)], online=True, neuronpedia=source)
    assert found.labels == {(NID, 1): "names of women", (NID, 2): "", (NID, 3): ""}
    assert found.fetched == 3 and found.unanswered == 0 and found.problem is None
    entries = cache_entries(source)
    assert {k: v["label"] for k, v in entries.items()} == {"1": "names of women", "2": "", "3": ""}
    assert sorted(server.requests) == [(NID, 1), (NID, 2), (NID, 3)]


def test_requests_run_concurrently_bounded_by_the_workers(tmp_path):
    keys = [(NID, i) for i in range(40)]
    with FakeNeuronpedia({key: [f"feature {key[1]}"] for key in keys}, latency=0.1) as server:
        start = time.perf_counter()
        found = explanations(keys, online=True, neuronpedia=settings(server, tmp_path, workers=8))
        seconds = time.perf_counter() - start
    print(f"40 features at 100 ms: {seconds:.2f} s, {server.max_in_flight} in flight at most")
    assert found.labels == {key: f"feature {key[1]}" for key in keys}
    assert 4 <= server.max_in_flight <= 8  # concurrent, and never more than the workers
    assert seconds < 40 * 0.1 / 2  # one at a time would take 4 s


def test_the_disk_cache_answers_repeat_calls_and_works_with_the_server_stopped(tmp_path):
    keys = [(NID, i) for i in range(10)]
    features = {key: [f"feature {key[1]}"] for key in keys[:8]}  # 8, 9: unknown to Neuronpedia
    server = FakeNeuronpedia(features).__enter__()
    source = settings(server, tmp_path / "cache")
    first = explanations(keys, online=True, neuronpedia=source)
    n_requests = len(server.requests)
    again = explanations(keys, online=True, neuronpedia=source)
    assert again.labels == first.labels and again.from_cache == 10
    assert len(server.requests) == n_requests == 10  # the second call asked nothing
    server.stop()
    start = time.perf_counter()
    stopped = explanations(keys, online=True, neuronpedia=source)
    assert stopped.labels == first.labels and time.perf_counter() - start < 0.1
    # Another process (a fresh cache in memory) reads the same answers from the files alone.
    shutil.copytree(tmp_path / "cache", tmp_path / "copy")
    from_disk = explanations(keys, neuronpedia=settings(server.url, tmp_path / "copy"))
    assert from_disk.labels == first.labels and from_disk.from_cache == 10


def test_an_unreachable_server_costs_one_quick_probe_and_is_remembered(tmp_path):
    source = settings(f"http://127.0.0.1:{closed_port()}", tmp_path)
    keys = [(NID, i) for i in range(50)]
    start = time.perf_counter()
    found = explanations(keys, online=True, neuronpedia=source)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = explanations(keys, online=True, neuronpedia=source)
    second = time.perf_counter() - start
    print(f"unreachable: {first * 1000:.1f} ms, then {second * 1000:.2f} ms")
    assert found.labels == {} and found.problem == again.problem == "unreachable"
    assert first < 1.5 and second < 0.05 and status(source) == "unreachable"


def test_a_server_that_accepts_but_never_answers_costs_one_timeout(tmp_path):
    with socket.socket() as silent:  # connections queue up; nothing is ever read or answered
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        source = settings(url, tmp_path, timeout=0.3)
        start = time.perf_counter()
        found = explanations([(NID, i) for i in range(50)], online=True, neuronpedia=source)
        seconds = time.perf_counter() - start
    assert found.labels == {} and found.problem == "not answering" and seconds < 0.9


def test_answers_that_are_not_neuronpedias_are_never_cached(tmp_path):
    """A proxy or captive portal answering every address with an empty 404 (as this project's
    sandbox does) or an HTML page must not be cached as "no such feature"."""

    class Portal(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Portal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = settings(f"http://127.0.0.1:{server.server_address[1]}", tmp_path, workers=2)
        found = explanations([(NID, i) for i in range(20)], online=True, neuronpedia=source)
    finally:
        server.shutdown()
        server.server_close()
    assert found.labels == {} and found.problem == "not Neuronpedia" == status(source)
    assert not source.cache_file(NID).exists()


def test_a_slow_feature_times_out_alone_and_is_not_cached(tmp_path):
    keys = [(NID, i) for i in range(6)]
    features = {key: [f"feature {key[1]}"] for key in keys}
    with FakeNeuronpedia(features, slow={(NID, 3): 2.0}) as server:
        source = settings(server, tmp_path, timeout=0.3)
        start = time.perf_counter()
        found = explanations(keys, online=True, neuronpedia=source)
        seconds = time.perf_counter() - start
    assert found.labels == {key: f"feature {key[1]}" for key in keys if key != (NID, 3)}
    assert found.problem == "timed out" and seconds < 1.0
    assert "3" not in cache_entries(source) and status(source) is None


def test_a_short_retry_after_is_waited_out_once(tmp_path):
    keys = [(NID, 1), (NID, 2)]
    features = {key: [f"feature {key[1]}"] for key in keys}
    with FakeNeuronpedia(features, rate_limited={(NID, 2): "1"}) as server:
        start = time.perf_counter()
        found = explanations(keys, online=True, neuronpedia=settings(server, tmp_path))
        seconds = time.perf_counter() - start
    assert found.labels == {(NID, 1): "feature 1", (NID, 2): "feature 2"}
    assert server.requests.count((NID, 2)) == 2 and 1.0 <= seconds < 2.0


def test_a_rate_limit_ends_the_call_serves_the_cache_and_is_remembered(tmp_path):
    keys = [(NID, i) for i in range(30)]
    features = {key: [f"feature {key[1]}"] for key in keys}
    with FakeNeuronpedia(features) as server:
        source = settings(server, tmp_path, workers=4)
        explanations(keys[:5], online=True, neuronpedia=source)  # cached before the limit
        server.exhausted = True  # Neuronpedia's 429: JSON error, no Retry-After
        before = len(server.requests)
        start = time.perf_counter()
        found = explanations(keys, online=True, neuronpedia=source)
        seconds = time.perf_counter() - start
        asked = len(server.requests) - before
        later = explanations(keys, online=True, neuronpedia=source)
        assert len(server.requests) - before == asked  # the later call asked nothing
    assert found.labels == {key: f"feature {key[1]}" for key in keys[:5]}
    assert found.problem == later.problem == "rate limited" == status(source)
    assert asked <= 4 and seconds < 0.5  # at most the requests already in flight


def test_a_stale_no_explanation_is_asked_again_but_an_explanation_is_kept(tmp_path):
    with FakeNeuronpedia({(NID, 1): ["now explained"], (NID, 2): ["new text"]}) as server:
        source = settings(server, tmp_path)
        old = time.time() - (NO_EXPLANATION_DAYS + 1) * 86400
        source.cache_file(NID).parent.mkdir(parents=True)
        source.cache_file(NID).write_text(
            json.dumps(
                {
                    "format": 1,
                    "features": {"1": {"label": "", "at": old}, "2": {"label": "old", "at": old}},
                }
            )
        )
        found = explanations([(NID, 1), (NID, 2)], online=True, neuronpedia=source)
    assert found.labels == {(NID, 1): "now explained", (NID, 2): "old"}
    assert server.requests == [(NID, 1)]


def test_max_fetch_zero_asks_nothing(tmp_path):
    with FakeNeuronpedia({(NID, 1): ["x"]}) as server:
        source = settings(server, tmp_path, max_fetch=0)
        found = explanations([(NID, 1)], online=True, neuronpedia=source)
    assert found.labels == {} and found.problem == "not asked (max_fetch)" and not server.requests


def test_settings_refuse_nonsense():
    with pytest.raises(ValueError, match="http"):
        Neuronpedia(base_url="neuronpedia.org")
    with pytest.raises(ValueError, match="timeout"):
        Neuronpedia(timeout=0)


# --------------------------------------------------------------------------- traces and graphs


def tiny_features(result: Trace) -> dict[tuple[str, int], list[str]]:
    """An explanation for every feature of the tiny run, except feature 0 of each SAE."""
    feats = result.nodes[result.nodes["node_type"] == "feature"]
    ids = {sae.hook_name: sae.neuronpedia_id for sae in result.saes}
    return {
        (ids[hook], int(i)): [f"{ids[hook]} #{i}"]
        for hook, i in zip(feats["hook_name"].astype(str), feats["feature"])
        if i != 0
    }


def test_a_trace_gets_labels_for_its_largest_features_and_round_trips(model, saes, tmp_path):
    result = trace(PROMPT, model, saes, answer=" Mary")
    with FakeNeuronpedia(tiny_features(result)) as server:
        source = settings(server, tmp_path, max_fetch=20)
        labelled = result.with_labels(online=True, neuronpedia=source)
    nodes = labelled.nodes
    assert list(nodes.columns) == [*result.nodes.columns, "label"]
    pd.testing.assert_frame_equal(nodes.drop(columns="label"), result.nodes)
    features = result.nodes[result.nodes["node_type"] == "feature"]
    keys = list(zip(features["hook_name"].astype(str), features["feature"]))
    unique_by_size = (
        features.assign(key=keys, size=features["attribution"].abs())
        .sort_values("size", ascending=False, kind="stable")
        .drop_duplicates("key")
    )
    record = {sae.hook_name: sae.neuronpedia_id for sae in result.saes}
    top = {(record[h], int(i)) for h, i in unique_by_size["key"].head(20)}
    assert set(server.requests) == top  # the 20 largest distinct features, nothing else
    expected = [
        f"{record[h]} #{i}" if t == "feature" and (record[h], i) in top and i != 0 else ""
        for h, i, t in zip(
            nodes["hook_name"].astype(str), nodes["feature"], nodes["node_type"].astype(str)
        )
    ]
    assert nodes["label"].tolist() == expected
    assert Trace.from_json(labelled.to_json()) == labelled
    assert Trace.load(labelled.save(tmp_path / "labelled.parquet")) == labelled
    offline = result.with_labels(neuronpedia=source)  # from the cache alone
    assert offline == labelled


def test_graph_labels_reach_the_neuronpedia_export(model, saes, tmp_path):
    result = trace(PROMPT, model, saes, answer=" Mary")
    with FakeNeuronpedia(tiny_features(result)) as server:
        source = settings(server, tmp_path)
        graph = graph_from_trace(result, model=model, saes=saes, max_nodes=30)
        labelled = graph.with_labels(online=True, neuronpedia=source)
    by_id = labelled.candidate_nodes.set_index("node_id")["label"]
    assert labelled.nodes["label"].tolist() == by_id[labelled.nodes["node_id"]].tolist()
    is_feature = labelled.candidate_nodes["node_type"] == "feature"
    assert (labelled.candidate_nodes.loc[~is_feature, "label"] == "").all()
    assert (labelled.candidate_nodes.loc[is_feature, "label"] != "").any()
    pruned = labelled.prune(0.5, 0.9)
    assert pruned.nodes["label"].tolist() == by_id[pruned.nodes["node_id"]].tolist()
    clerps = {n["node_id"]: n["clerp"] for n in labelled.to_neuronpedia()["nodes"]}
    for node_id, label, kind in labelled.nodes[["node_id", "label", "node_type"]].itertuples(
        index=False
    ):
        if kind in ("feature", "error", "embedding"):
            assert clerps[node_id] == label
    # A trace labelled first gives its graph the same labels.
    from_labelled = graph_from_trace(
        result.with_labels(neuronpedia=source), model=model, saes=saes, max_nodes=30
    )
    assert from_labelled.nodes["label"].tolist() == labelled.nodes["label"].tolist()


def test_neuronpedia_ids_come_from_the_registry():
    assert loading.neuronpedia_id("gpt2-small-res-jb", "blocks.11.hook_resid_post") == (
        "gpt2-small/12-res-jb"
    )
    assert loading.neuronpedia_id("ioi-demo", "blocks.0.hook_resid_pre") is None


def test_labels_for_needs_the_node_columns():
    with pytest.raises(ValueError, match="hook_name"):
        labels_for(pd.DataFrame({"feature": [1]}), ())


# --------------------------------------------------------------------------- the bundled model


@functools.cache
def card_file(hook: str) -> dict:
    return json.loads((WEIGHTS_DIR / "feature_cards" / f"{hook}.json").read_text())


def expected_card_label(hook: str, feature: int) -> str:
    """From the shipped card file itself: the first three distinct tokens the strongest
    contexts fire on, then the two most promoted tokens."""
    card = card_file(hook)["features"][feature]
    firing: list[str] = []
    for context in sorted(card["contexts"], key=lambda c: c["activation"], reverse=True):
        token = context["tokens"][context["index"]]
        if token not in firing and len(firing) < 3:
            firing.append(token)
    promoted = [token for token, effect in card["top_logits"] if effect > 0][:2]
    text = ", ".join(f'"{t}"' for t in firing)
    if promoted:
        text += (" " if text else "") + "→ promotes " + ", ".join(f'"{t}"' for t in promoted)
    return text


def test_bundled_features_are_labelled_from_their_cards_offline(tmp_path):
    result = trace(
        "When Mary and John went to the store, John gave a drink to",
        model="ioi-demo",
        answer=" Mary",
        contrast=" John",
    )
    start = time.perf_counter()
    nodes = result.with_labels().nodes
    print(f"{len(nodes)} nodes labelled in {time.perf_counter() - start:.2f} s")
    features = nodes[nodes["node_type"] == "feature"]
    expected = [
        expected_card_label(hook, int(i))
        for hook, i in zip(features["hook_name"].astype(str), features["feature"])
    ]
    assert features["label"].tolist() == expected
    assert (features["label"] != "").all()
    assert (nodes.loc[nodes["node_type"] == "error", "label"] == "").all()
    name_feature = features[features["label"].str.contains('→ promotes " Mary"')]
    assert len(name_feature) > 0  # some feature of the IOI prompt promotes the answer
    assert Trace.load(result.with_labels().save(tmp_path / "t.parquet")) == result.with_labels()
