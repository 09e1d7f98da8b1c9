"""A local stand-in for Neuronpedia's feature API, answering in the real shapes.

Shapes read in Neuronpedia's webapp source (`app/api/feature/[modelId]/[layer]/[index]/route.ts`,
`lib/db/neuron.ts`, `middleware.ts`): a known feature is a JSON object with the feature's fields
(`modelId`, `layer`, `index` as a string, `pos_str`, `frac_nonzero`, `activations`, ...) and
`explanations`, sorted best first, each `{id, description, explanationModelName, typeName,
scores, triggeredByUser}`; an unknown feature is 404 `{"error": "Not Found"}`; a rate limit is
429 with a JSON `error` (and here, optionally, a Retry-After header).

The server counts requests and the most it had in flight at once, can add latency to every
answer, and serves chosen features slowly or rate-limited.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FakeNeuronpedia:
    """Run with `with FakeNeuronpedia(...) as server:`; `server.url` is its base URL."""

    #: (neuronpedia id, index) -> the feature's explanation descriptions, best first ([] = none).
    features: dict[tuple[str, int], list[str]]
    latency: float = 0.0
    #: Features answered only after this many seconds.
    slow: dict[tuple[str, int], float] = field(default_factory=dict)
    #: Features answered 429 the first time, with this Retry-After ("" for none).
    rate_limited: dict[tuple[str, int], str] = field(default_factory=dict)
    #: Every feature request answers 429 (without Retry-After), as when the hour's quota is spent.
    exhausted: bool = False

    def __post_init__(self) -> None:
        self.requests: list[tuple[str, int]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._limited_once: set[tuple[str, int]] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeNeuronpedia:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop answering and free the port (later connections are refused)."""
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, path: str) -> tuple[int, dict[str, str], object]:
        parts = path.strip("/").split("/")
        if len(parts) != 5 or parts[:2] != ["api", "feature"]:
            return 404, {}, {"error": "Not Found"}
        model, source, index = parts[2], parts[3], parts[4]
        key = (f"{model}/{source}", int(index))
        with self._lock:
            self.requests.append(key)
            first_time = key not in self._limited_once
            self._limited_once.add(key)
        if self.exhausted or (key in self.rate_limited and first_time):
            retry = "" if self.exhausted else self.rate_limited[key]
            headers = {"Retry-After": retry} if retry else {}
            message = "Rate limit exceeded for this endpoint. The limit for this endpoint (/api)"
            body = {"endpoint": "/api", "limitPerWindow": 25000, "requestWindow": "60 m"}
            return 429, headers, {**body, "error": message + " is 25000 requests per 60 m."}
        time.sleep(self.slow.get(key, 0.0))
        if key not in self.features:
            return 404, {}, {"error": "Not Found"}
        return 200, {}, _feature(model, source, index, self.features[key])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with fake._lock:
                    fake._in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
                try:
                    time.sleep(fake.latency)
                    status, headers, body = fake._answer(self.path)
                    data = json.dumps(body).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to answer
                finally:
                    with fake._lock:
                        fake._in_flight -= 1

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def _feature(model: str, source: str, index: str, descriptions: list[str]) -> dict:
    """A feature as Neuronpedia's feature API returns it (the fields a reader might use)."""
    return {
        "modelId": model,
        "layer": source,
        "index": index,
        "sourceSetName": source.split("-", 1)[-1],
        "creatorId": "clsxqq2xd0000vvp2k5itlhqj",
        "createdAt": "2024-03-21T05:33:13.436Z",
        "maxActApprox": 31.2,
        "hasVector": False,
        "vector": [],
        "vectorLabel": None,
        "hookName": None,
        "topkCosSimIndices": [],
        "topkCosSimValues": [],
        "neuron_alignment_indices": [],
        "neuron_alignment_values": [],
        "neuron_alignment_l1": [],
        "correlated_neurons_indices": [],
        "correlated_neurons_pearson": [],
        "correlated_neurons_l1": [],
        "correlated_features_indices": [],
        "correlated_features_pearson": [],
        "correlated_features_l1": [],
        "neg_str": [" Hungarian", " Danish"],
        "neg_values": [-0.71, -0.69],
        "pos_str": [" Mary", " Maria"],
        "pos_values": [1.02, 0.98],
        "frac_nonzero": 0.00123,
        "freq_hist_data_bar_heights": [],
        "freq_hist_data_bar_values": [],
        "logits_hist_data_bar_heights": [],
        "logits_hist_data_bar_values": [],
        "decoder_weights_dist": [],
        "umap_cluster": None,
        "umap_log_feature_sparsity": None,
        "umap_x": None,
        "umap_y": None,
        "model": {"id": model, "displayName": model, "layers": 12},
        "lists": [],
        "creator": {"name": "jbloom"},
        "source": {"id": source, "modelId": model, "hasDashboards": True},
        "sourceSet": {"modelId": model, "name": source.split("-", 1)[-1]},
        "comments": [],
        "activations": [
            {
                "id": f"act-{index}",
                "tokens": [" When", " Mary", " and"],
                "values": [0.0, 12.5, 0.0],
                "maxValue": 12.5,
                "maxValueTokenIndex": 1,
                "minValue": 0.0,
            }
        ],
        "explanations": [
            {
                "id": f"exp-{index}-{rank}",
                "description": description,
                "explanationModelName": "gpt-4o-mini",
                "typeName": "oai_token-act-pair",
                "scores": [],
                "triggeredByUser": {"id": "u1", "name": "bot"},
            }
            for rank, description in enumerate(descriptions)
        ],
    }
