"""A local server that answers graph uploads as Neuronpedia and its S3 bucket do.

Shapes read from Neuronpedia's source (`apps/webapp/app/api/graph/signed-put/route.ts`,
`save-to-db/route.ts`, `lib/with-user.ts`, `app/[modelId]/graph/utils.ts`):

- `POST /api/graph/signed-put`, key in `x-api-key` (else 401 `{error}` with Neuronpedia's
  text), JSON `{filename, contentLength, contentType}`; a filename not ending in `.json` is a 400,
  a `contentLength` outside 1024..100 MiB fails its yup schema inside the handler's try: a 500
  `{error: "Failed to generate signed URL"}`. Answers `{url, key, putRequestId}`, the url a
  pre-signed address, here pointing back at this server's `/s3/...` with a signature query.
- `PUT /s3/<key>?X-Amz-...`: S3's pre-signed PUT, signed for the content length and content
  type, so a different `Content-Length` is S3's 403 `SignatureDoesNotMatch` XML.
- `POST /api/graph/save-to-db` `{putRequestId}`: reads the stored file back (gzip-decoded, as
  `fetch` does), refuses a scan or slug with other characters than `[a-zA-Z0-9_-]` (400), a scan
  that is not a hosted model (400 `ERR_MODEL_DOES_NOT_EXIST`), and answers `{message, url}` with
  url `{site}/{scan}/graph?slug={slug}`.

Every request is recorded (method, path, headers, body) so tests can check what was sent, and
`refuse` makes the next API call answer a given status and JSON body.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KEY = "np-test-key-5f1c9a"
HOSTED_MODELS = frozenset({"gpt2-small", "gemma-2-2b"})
MAX_BYTES = 100 * 1024 * 1024
UNAUTHORIZED = (
    "This endpoint requires authorization. Specify your API key in the header x-api-key. "
    "Your API key is under Settings on neuronpedia.org."
)
NAME = re.compile(r"[^a-zA-Z0-9_-]")


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeNeuronpedia:
    site: str = ""
    requests: list[Seen] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    put_requests: dict[str, tuple[str, int]] = field(default_factory=dict)
    refusals: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    redirect_to: str | None = None
    hosted: frozenset[str] = HOSTED_MODELS

    def refuse(self, status: int, body: dict[str, Any]) -> None:
        """The next API call answers `status` with the JSON `body`."""
        self.refusals.append((status, body))

    def stored_graph(self, key: str) -> dict[str, Any]:
        return json.loads(gzip.decompress(self.files[key]))


def _handler(fake: FakeNeuronpedia) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: dict[str, Any]) -> None:
            self._answer(status, json.dumps(data).encode(), "application/json")

        def _read(self) -> bytes:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {name.lower(): value for name, value in self.headers.items()}
            fake.requests.append(Seen(self.command, self.path, headers, body))
            return body

        def do_POST(self) -> None:
            body = self._read()
            if fake.redirect_to is not None:
                self.send_response(307)
                self.send_header("Location", fake.redirect_to + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.headers.get("x-api-key") != KEY:
                return self._json(401, {"error": UNAUTHORIZED})
            if fake.refusals:
                return self._json(*fake.refusals.pop(0))
            payload = json.loads(body)
            if self.path == "/api/graph/signed-put":
                return self._signed_put(payload)
            if self.path == "/api/graph/save-to-db":
                return self._save_to_db(payload)
            self._json(404, {"error": "Not found"})

        def _signed_put(self, payload: dict[str, Any]) -> None:
            filename, length = payload.get("filename"), payload.get("contentLength")
            if not isinstance(length, int) or not 1024 <= length <= MAX_BYTES:
                return self._json(500, {"error": "Failed to generate signed URL"})
            if not str(filename).endswith(".json"):
                return self._json(400, {"error": "Invalid file extension - must be .json"})
            key = f"user-graphs/user-1/{filename.removesuffix('.json')}-1700000000000.json"
            put_id = f"put-{len(fake.put_requests) + 1}"
            fake.put_requests[put_id] = (key, length)
            signature = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0badc0de"
            url = f"{fake.site}/s3/{key}?{signature}"
            self._json(200, {"url": url, "key": key, "putRequestId": put_id})

        def _save_to_db(self, payload: dict[str, Any]) -> None:
            put_id = payload.get("putRequestId")
            if put_id not in fake.put_requests:
                return self._json(500, {"error": "Failed to generate signed URL"})
            key, _ = fake.put_requests[put_id]
            graph = fake.stored_graph(key)
            scan, slug = graph["metadata"]["scan"], graph["metadata"]["slug"]
            if NAME.search(scan) or NAME.search(slug):
                return self._json(
                    400,
                    {
                        "error": "Invalid scan or slug. They must be alphanumeric and contain only "
                        "underscores and hyphens."
                    },
                )
            if scan not in fake.hosted:
                return self._json(400, {"error": "ERR_MODEL_DOES_NOT_EXIST"})
            url = f"{fake.site}/{scan}/graph?slug={slug}"
            self._json(200, {"message": "Graph saved to database", "url": url})

        def do_PUT(self) -> None:
            body = self._read()
            path, _, query = self.path.partition("?")
            key = path.removeprefix("/s3/")
            signed = {k: length for k, length in fake.put_requests.values()}
            if "X-Amz-Signature" not in query or key not in signed:
                return self._answer(403, b"<Error><Code>AccessDenied</Code></Error>", "text/xml")
            if len(body) != signed[key] or self.headers.get("Content-Type") != "application/json":
                error = b"<Error><Code>SignatureDoesNotMatch</Code></Error>"
                return self._answer(403, error, "application/xml")
            fake.files[key] = body
            self._answer(200, b"", "text/plain")

    return Handler


@contextmanager
def fake_neuronpedia(hosted: frozenset[str] = HOSTED_MODELS) -> Iterator[FakeNeuronpedia]:
    """The fake site on a free port of 127.0.0.1, for the length of the block; `hosted`: the
    model ids it has (a self-hosted Neuronpedia may have others than the public site)."""
    fake = FakeNeuronpedia(hosted=hosted)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.site = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
