"""A local HTTP server that answers as the Hugging Face hub does, for the repositories of a fake
cache (`tests/fake_hub.py`).

SAELens's Gemma Scope 2 loader asks the hub for a file's tensor shapes by HTTP range requests
before it downloads anything, so its online path cannot run from a cache alone. This server
serves each repository's snapshot at the hub's file URL, `/{repo_id}/resolve/{revision}/{path}`,
with what huggingface_hub's `file_download.py` reads (`get_hf_file_metadata`, `http_get`): on
HEAD and GET, `X-Repo-Commit` (the snapshot's commit), `ETag` (the blob's name in the cache, the
sha256 of the content, quoted, as the hub sends for LFS files), `Content-Length`,
`Accept-Ranges: bytes`; a `Range: bytes=a-b` GET gets `206 Partial Content` with
`Content-Range`; unknown repositories, revisions and files get 404 with the hub's `X-Error-Code`
(`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`), which huggingface_hub turns into its own
errors. `HEAD /` answers 200, as the hub's front page does (token-trace's reachability probe).
Each request is recorded (`Request`) so tests can check what the loaders asked for.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.fake_hub import FakeHub, repo_folder

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class HubServer:
    """A running server: its URL (for HF_ENDPOINT) and the requests it has answered."""

    url: str
    requests: list[Request] = field(default_factory=list)


def _handler(hub: FakeHub, log: list[Request]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            log.append(Request(self.command, path, self.headers.get("Range")))
            if path == "/":
                return self._send(200, b"", {}, body)
            repo_id, marker, rest = path.lstrip("/").partition("/resolve/")
            if not marker:
                return self._error("RepoNotFound", body)
            folder = repo_folder(hub.hub_cache, repo_id)
            if not (folder / "refs" / "main").is_file():
                return self._error("RepoNotFound", body)
            commit = (folder / "refs" / "main").read_text().strip()
            revision, _, filename = rest.partition("/")
            if revision not in ("main", commit):
                return self._error("RevisionNotFound", body)
            file = folder / "snapshots" / commit / filename
            if not file.is_file():
                return self._error("EntryNotFound", body, commit)
            size = file.stat().st_size
            headers = {
                "X-Repo-Commit": commit,
                "ETag": f'"{file.resolve().name}"',  # the blob's name: its content's sha256
                "Accept-Ranges": "bytes",
            }
            wanted = _RANGE.match(self.headers.get("Range") or "")
            start, end, status = 0, size - 1, 200
            if wanted is not None:
                start = int(wanted.group(1))
                end = min(int(wanted.group(2) or size - 1), size - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                status = 206
            with file.open("rb") as handle:
                handle.seek(start)
                data = handle.read(end - start + 1) if body else b""
            self._send(status, data, headers, body, length=end - start + 1)

        def _error(self, code: str, body: bool, commit: str | None = None) -> None:
            headers = {"X-Error-Code": code, "Content-Type": "application/json"}
            if commit:
                headers["X-Repo-Commit"] = commit
            message = f'{{"error": "{code}"}}'.encode()
            self._send(404, message, headers, body)

        def _send(
            self,
            status: int,
            data: bytes,
            headers: dict[str, str],
            body: bool,
            length: int | None = None,
        ) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data) if length is None else length))
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler


@contextmanager
def serve_hub(hub: FakeHub) -> Iterator[HubServer]:
    """Serve `hub`'s repositories on a free local port while the block runs."""
    log: list[Request] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub, log))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HubServer(f"http://127.0.0.1:{server.server_address[1]}", log)
    finally:
        server.shutdown()
        server.server_close()


def online_env(hub_server: HubServer, cache: Path, base: FakeHub) -> dict[str, str]:
    """An environment that downloads from `hub_server` into the empty cache folder `cache`."""
    env = base.env()
    env.pop("HF_HUB_OFFLINE")
    env.update(HF_ENDPOINT=hub_server.url, HF_HOME=str(cache), HF_HUB_CACHE=str(cache / "hub"))
    return env
