"""Uploading a graph file to Neuronpedia, the way its API documents it.

Three calls, as Neuronpedia's own routes (`apps/webapp/app/api/graph/signed-put/route.ts`,
`.../save-to-db/route.ts`) and its Python client (`GraphRequest.upload`) make them:

1. POST `{site}/api/graph/signed-put` with header `x-api-key` and JSON `{filename, contentLength,
   contentType}`. The answer is `{url, key, putRequestId}`: `url` is a pre-signed S3 address for
   exactly `contentLength` bytes of `application/json`; the length must lie in 1 KiB..100 MiB.
2. PUT the gzipped file to `url` with `Content-Encoding: gzip` (S3 needs no key).
3. POST `{site}/api/graph/save-to-db` with `{putRequestId}`. Neuronpedia reads the file back,
   checks it against its graph schema and answers `{message, url}`: `url` is the graph's page.

Refusals come as JSON `{error: ...}`: 401 without a valid key, 400 for a graph that fails the
schema, a slug another user holds, or a model Neuronpedia does not host
(`ERR_MODEL_DOES_NOT_EXIST`), 429 past the daily upload limit. Each becomes an `UploadError`
that says what to do.

The key is a secret. It goes into the `x-api-key` header of the two Neuronpedia calls and nowhere
else: not to S3, not into a message, a log line or a repr, and any server text an error quotes
has it masked. Redirects are not followed, since a redirected request would carry the key to
wherever it points. Every call times out after `timeout` seconds without progress.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

API_KEY_ENV = "NEURONPEDIA_API_KEY"
BASE_URL_ENV = "TOKEN_TRACE_NEURONPEDIA_URL"
DEFAULT_BASE_URL = "https://www.neuronpedia.org"
#: Seconds a connection or a read may stall before the upload gives up.
UPLOAD_TIMEOUT = 20.0
#: Neuronpedia's Python client refuses graph files above this size.
MAX_UPLOAD_BYTES = 100 * 1024 * 1024
#: `signed-put` refuses smaller files.
MIN_UPLOAD_BYTES = 1024
#: What Neuronpedia's `save-to-db` accepts as a graph's slug and scan (model id).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
#: Neuronpedia's error codes, in words.
KNOWN_ERRORS = {
    "ERR_MODEL_DOES_NOT_EXIST": "Neuronpedia hosts no model with the graph's scan id {scan!r}; "
    "graphs can be uploaded only for models it hosts",
}


class MissingKeyError(ValueError):
    """No Neuronpedia API key was given or set in the environment."""


class UploadError(RuntimeError):
    """Neuronpedia (or its file store) refused the upload or could not be reached.

    `status` is the HTTP status, or None when no answer came.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirect)


def resolve_key(given: str | None = None) -> str:
    """The key to use: `given`, else `$NEURONPEDIA_API_KEY`."""
    key = (os.environ.get(API_KEY_ENV, "") if given is None else given).strip()
    if not key:
        raise MissingKeyError(
            f"No Neuronpedia API key: set {API_KEY_ENV} (the key is under Settings on "
            "neuronpedia.org)."
        )
    return key


def resolve_site(given: str | None = None) -> str:
    """The site to upload to: `given`, else `$TOKEN_TRACE_NEURONPEDIA_URL`, else Neuronpedia."""
    return (given or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def gzipped(text: str) -> bytes:
    """The file as `signed-put` takes it: gzipped, and at least `MIN_UPLOAD_BYTES` long (a tiny
    graph is padded with trailing spaces, which JSON ignores, and stored uncompressed)."""
    raw = text.encode("utf-8")
    if len(raw) > MAX_UPLOAD_BYTES:
        raise UploadError(
            f"The graph file is {len(raw) / 2**20:.1f} MiB; Neuronpedia takes at most "
            f"{MAX_UPLOAD_BYTES // 2**20} MiB. Prune it harder (lower max_nodes or thresholds).",
            413,
        )
    body = gzip.compress(raw, mtime=0)
    if len(body) < MIN_UPLOAD_BYTES:
        body = gzip.compress(raw.ljust(MIN_UPLOAD_BYTES), compresslevel=0, mtime=0)
    return body


def upload_graph(
    text: str,
    api_key: str | None = None,
    *,
    base_url: str | None = None,
    timeout: float = UPLOAD_TIMEOUT,
) -> str:
    """Upload a graph file's text (Neuronpedia's graph JSON) and return the graph's page."""
    key = resolve_key(api_key)
    metadata = json.loads(text).get("metadata", {})
    for name in ("slug", "scan"):
        value = metadata.get(name)
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            raise ValueError(
                f"Neuronpedia takes a graph {name} of letters, digits, '_' and '-' only; this "
                f"graph's is {value!r}."
            )
    body = gzipped(text)
    site = resolve_site(base_url)
    context = {"scan": metadata["scan"], "slug": metadata["slug"]}
    signed = _call(
        f"{site}/api/graph/signed-put",
        {
            "filename": f"{metadata['slug']}.json",
            "contentLength": len(body),
            "contentType": "application/json",
        },
        key,
        timeout,
        context,
    )
    put_url, put_request_id = signed.get("url"), signed.get("putRequestId")
    if not isinstance(put_url, str) or not put_request_id:
        raise UploadError("Neuronpedia's signed-put answer has no url and putRequestId.")
    request = urllib.request.Request(
        put_url,
        data=body,
        method="PUT",
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    _send(request, timeout, None, context)
    saved = _call(
        f"{site}/api/graph/save-to-db", {"putRequestId": put_request_id}, key, timeout, context
    )
    page = saved.get("url")
    if not isinstance(page, str) or not page:
        raise UploadError("Neuronpedia saved the graph but its answer names no url.")
    return page


def _call(
    url: str, payload: Mapping[str, Any], key: str, timeout: float, context: Mapping[str, str]
) -> dict[str, Any]:
    """One JSON call to Neuronpedia's API, the key in its header."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode("utf-8"),
        method="POST",
        headers={"Content-Type": "application/json", "x-api-key": key},
    )
    answer = _send(request, timeout, key, context)
    try:
        data = json.loads(answer)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise UploadError(f"Neuronpedia answered {_place(url)} with something other than JSON.")
    return data


def _place(url: str) -> str:
    """The address without its query: a signed URL's query is a credential too."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _send(
    request: urllib.request.Request,
    timeout: float,
    key: str | None,
    context: Mapping[str, str],
) -> bytes:
    """The answer's body; an `UploadError` for a refusal or no answer. `key`: the API key the
    request carries (None for the file store), masked in anything quoted."""
    place = _place(request.full_url)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        raise UploadError(_refusal(err, place, key, context), err.code) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UploadError(
            f"Could not reach {place}: {reason}. Check the network, and {BASE_URL_ENV} if set."
        ) from None


def _detail(err: urllib.error.HTTPError, key: str | None) -> str:
    """What the server said: its JSON `error` / `message`, else the start of its text."""
    text = err.read().decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and (data.get("error") or data.get("message")):
        text = str(data.get("error") or data.get("message"))
    text = " ".join(text.split())[:300] or (err.reason or "")
    return text.replace(key, "***") if key else text


def _refusal(
    err: urllib.error.HTTPError, place: str, key: str | None, context: Mapping[str, str]
) -> str:
    status, detail = err.code, _detail(err, key)
    if 300 <= status < 400:
        return (
            f"{place} redirects to {err.headers.get('Location')!r}; redirects are not followed "
            f"(they would carry the key): set {BASE_URL_ENV} to the site itself."
        )
    if key is None:
        return f"The file store refused the graph file (HTTP {status} at {place}): {detail}"
    if status in (401, 403):
        return (
            f"Neuronpedia refused the API key (HTTP {status} at {place}): check {API_KEY_ENV} "
            "(the key is under Settings on neuronpedia.org)."
        )
    if status == 413:
        return (
            f"Neuronpedia refused the graph as too large (HTTP 413 at {place}); it takes at most "
            f"{MAX_UPLOAD_BYTES // 2**20} MiB. Prune it harder (lower max_nodes or thresholds)."
        )
    for code, meaning in KNOWN_ERRORS.items():
        if code in detail:
            detail = f"{meaning.format(**context)} ({code})"
    return f"Neuronpedia refused the upload (HTTP {status} at {place}): {detail}"
