"""Feature explanations from Neuronpedia's public feature API: fetched concurrently when asked,
cached on disk, and never an error or a long wait for the caller.

What the API answers (read in Neuronpedia's webapp source: `app/api/feature/[modelId]/[layer]/
[index]/route.ts`, `lib/db/neuron.ts`, `middleware.ts`): GET
`{base}/api/feature/{model}/{source}/{index}` needs no key and returns the feature as JSON. Its
`explanations` list comes ordered best first (by `scoreV2`, then `scoreV1`, descending), each
with a `description` (and `typeName`, `explanationModelName`, `scores`). A feature the source
does not hold: 404 with `{"error": ...}` (older servers: 200 with `null`). An unknown model or
source: a server error. Rate limits count per IP over a sliding 60-minute window (25,000 calls
under `/api`) and answer 429 with a JSON `error` and no Retry-After: asking again within seconds
cannot help, so a 429 ends the call (after one wait when a short Retry-After is sent) and is
remembered, as is a server that cannot be reached, does not answer, or answers what Neuronpedia
never does (an HTML page or an empty 404: a proxy or captive portal), so later calls go straight
to the cache and nothing wrong is cached.

The cache: one JSON file per (server, model, source) under `$TOKEN_TRACE_CACHE/labels` (default
`~/.cache/token-trace/labels`), `{"features": {"123": {"label": "...", "at": unix time}}}`. An
empty label is an answer (no explanation, or no such feature), trusted for
`NO_EXPLANATION_DAYS` and then asked again; a feature absent from the file was never answered.
Files are read once per process (again when another process rewrites them), merged at each write,
written through `files.write_text`, and skipped when the folder is not writable.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from token_trace.files import write_text
from token_trace.network import finishes_within
from token_trace.neuronpedia import BASE_URL

BASE_URL_ENV = "TOKEN_TRACE_NEURONPEDIA_URL"
CACHE_ENV = "TOKEN_TRACE_CACHE"
#: An answer without an explanation is asked again after this long (explanations get added).
NO_EXPLANATION_DAYS = 7
#: How long an unreachable server, and a rate limit without Retry-After, keep calls offline.
UNREACHABLE_PAUSE_S = 60.0
RATE_LIMIT_PAUSE_S = 300.0
#: How long a successful probe vouches for the server.
REACHABLE_FOR_S = 60.0
_FORMAT = 1

Key = tuple[str, int]
"""A feature: its SAE's Neuronpedia id (`gpt2-small/6-res-jb`) and its index."""


def _default_base_url() -> str:
    return os.environ.get(BASE_URL_ENV, "").strip() or BASE_URL


def _default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV, "").strip()
    if root:
        return Path(root) / "labels"
    cache_home = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(cache_home) / "token-trace" / "labels"


@dataclass(frozen=True)
class Neuronpedia:
    """Where to ask for explanations, and how patiently. The defaults read
    `TOKEN_TRACE_NEURONPEDIA_URL` (else www.neuronpedia.org) and `TOKEN_TRACE_CACHE` when the
    record is made."""

    base_url: str = field(default_factory=_default_base_url)
    cache_dir: Path = field(default_factory=_default_cache_dir)
    #: Seconds per request, for connecting and for each read.
    timeout: float = 5.0
    #: Seconds the one reachability probe (a TCP connection) may take.
    probe_timeout: float = 1.0
    #: Requests in flight at once.
    workers: int = 8
    #: Features asked for per call, in the order given (most important first); the rest stay
    #: unlabelled until a later call.
    max_fetch: int = 200
    #: Seconds one call may spend asking; what has not answered by then is left for later.
    budget: float = 20.0
    #: The longest Retry-After a 429 is waited out for (once); longer ones end the call.
    max_retry_after: float = 2.0

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"Neuronpedia's URL must be http(s)://host[:port], got {self.base_url!r}."
            )
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        for name in ("timeout", "probe_timeout", "budget"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.workers < 1 or self.max_fetch < 0 or self.max_retry_after < 0:
            raise ValueError(
                "workers must be at least 1, max_fetch and max_retry_after at least 0."
            )

    def feature_api_url(self, key: Key) -> str:
        model, source = _split(key[0])
        path = "/".join(urllib.parse.quote(part, safe="") for part in (model, source))
        return f"{self.base_url}/api/feature/{path}/{int(key[1])}"

    def cache_file(self, neuronpedia_id: str) -> Path:
        """The cache file of one (server, model, source)."""
        host = urllib.parse.urlsplit(self.base_url).netloc
        model, source = _split(neuronpedia_id)
        return self.cache_dir / _safe_name(host) / _safe_name(model) / f"{_safe_name(source)}.json"


@dataclass(frozen=True)
class Explanations:
    """What one call found. `labels` holds the answered features: the best explanation, or ""
    where Neuronpedia has none; a feature absent from it was not answered (offline, not asked,
    too slow). `problem` says why some were not: "unreachable", "rate limited", "timed out",
    "not asked (max_fetch)", ... or None."""

    labels: Mapping[Key, str]
    from_cache: int
    fetched: int
    unanswered: int
    problem: str | None


def explanations(
    features: Iterable[Key], *, online: bool = False, neuronpedia: Neuronpedia | None = None
) -> Explanations:
    """The explanations of `features` ((Neuronpedia id, index) pairs, most important first):
    from the cache, and with `online` from Neuronpedia for the ones not cached (at most
    `max_fetch`). Never raises for network trouble and never waits beyond the settings."""
    source = neuronpedia or Neuronpedia()
    wanted = list(dict.fromkeys((str(nid), int(index)) for nid, index in features))
    now = time.time()
    labels: dict[Key, str] = {}
    missing: list[Key] = []
    for nid, entries in _by_id(wanted).items():
        cached = _STORE.entries(source.cache_file(nid))
        for index in entries:
            entry = cached.get(str(index))
            if _trusted(entry, now):
                labels[(nid, index)] = entry["label"]
            else:
                missing.append((nid, index))
    from_cache = len(labels)
    problem = None
    answers: dict[Key, str] = {}
    if online and missing:
        order = {key: rank for rank, key in enumerate(wanted)}
        missing.sort(key=order.__getitem__)
        asked = missing[: source.max_fetch]
        answers, problem = _fetch(source, asked)
        _store(source, answers, now)
        labels.update(answers)
        if problem is None and len(missing) > len(asked):
            problem = "not asked (max_fetch)"
    return Explanations(
        labels=labels,
        from_cache=from_cache,
        fetched=len(answers),
        unanswered=len(wanted) - len(labels),
        problem=problem,
    )


def status(neuronpedia: Neuronpedia | None = None) -> str | None:
    """Why online calls are skipped right now ("unreachable", "rate limited"), or None."""
    source = neuronpedia or Neuronpedia()
    return _blocked(source.base_url)


def best_explanation(payload: object) -> str:
    """The first non-empty description of a feature API answer (the server sorts them best
    first), on one line; "" when there is none (no explanations, or `null` for no feature)."""
    if not isinstance(payload, dict):
        return ""
    for explanation in payload.get("explanations") or ():
        description = explanation.get("description") if isinstance(explanation, dict) else None
        if isinstance(description, str) and description.strip():
            return " ".join(description.split())
    return ""


# --------------------------------------------------------------------------- fetching

_state_lock = threading.Lock()
_paused_until: dict[str, tuple[float, str]] = {}  # base URL -> (monotonic time, reason)
_reachable_until: dict[str, float] = {}


def _blocked(base_url: str) -> str | None:
    with _state_lock:
        until, reason = _paused_until.get(base_url, (0.0, ""))
    return reason if until > time.monotonic() else None


def _pause(base_url: str, seconds: float, reason: str) -> None:
    with _state_lock:
        _paused_until[base_url] = (time.monotonic() + seconds, reason)
        _reachable_until.pop(base_url, None)


def _reachable(source: Neuronpedia) -> bool:
    """One quick TCP connection to the server (or to the proxy that reaches it)."""
    with _state_lock:
        if _reachable_until.get(source.base_url, 0.0) > time.monotonic():
            return True
    parts = urllib.parse.urlsplit(source.base_url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    address = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))

    def connect() -> None:
        socket.create_connection(address, timeout=source.probe_timeout).close()

    if not finishes_within(source.probe_timeout, connect):
        return False
    with _state_lock:
        _reachable_until[source.base_url] = time.monotonic() + REACHABLE_FOR_S
    return True


def _fetch(source: Neuronpedia, keys: list[Key]) -> tuple[dict[Key, str], str | None]:
    """Ask for `keys` concurrently; the answers received and the first problem met."""
    if not keys:
        return {}, None
    reason = _blocked(source.base_url)
    if reason is not None:
        return {}, reason
    if not _reachable(source):
        _pause(source.base_url, UNREACHABLE_PAUSE_S, "unreachable")
        return {}, "unreachable"
    call = _Call(source, len(keys))
    pool = ThreadPoolExecutor(min(source.workers, len(keys)), thread_name_prefix="token-trace-np")
    futures = {pool.submit(call.ask, key): key for key in keys}
    done, late = wait(futures, timeout=source.budget)
    call.stop.set()  # requests not yet started return at once
    pool.shutdown(wait=False, cancel_futures=True)
    results = {futures[f]: f.result() for f in done if not f.cancelled()}
    answers = {key: label for key, label in results.items() if label is not None}
    if late:
        call.problems.append("timed out")
    return answers, call.problem


class _Call:
    """One call's requests, sharing what they learn: a rate limit, or a server that is not
    there or not Neuronpedia, stops them all (and pauses later calls); so does a first wave of
    requests that all time out, so a server that accepts but never answers costs one timeout."""

    def __init__(self, source: Neuronpedia, n_keys: int) -> None:
        self.source = source
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.gave_up: str | None = None
        self._lock = threading.Lock()
        self._answered = 0
        self._timeouts = 0
        self._hopeless_after = min(source.workers, n_keys)

    def ask(self, key: Key) -> str | None:
        """One feature's explanation ("" for none), or None when it got no usable answer."""
        request = urllib.request.Request(
            self.source.feature_api_url(key),
            headers={"Accept": "application/json", "User-Agent": "token-trace (feature labels)"},
        )
        for attempt in range(2):
            if self.stop.is_set():
                return None
            try:
                with urllib.request.urlopen(request, timeout=self.source.timeout) as response:
                    return self._answered_with(response.read(), found=True)
            except urllib.error.HTTPError as error:
                if error.code == 404:  # Neuronpedia's "no such feature" (a JSON error)
                    return self._answered_with(error.read(), found=False)
                if error.code != 429:
                    self.problems.append(f"HTTP {error.code}")
                    return None
                wait_s = _retry_after(error.headers.get("Retry-After"))
                if attempt == 0 and wait_s is not None and wait_s <= self.source.max_retry_after:
                    self.stop.wait(wait_s)
                    continue
                pause = RATE_LIMIT_PAUSE_S if wait_s is None else max(wait_s, 1.0)
                return self._give_up("rate limited", pause)
            except urllib.error.URLError as error:  # no connection: refused, reset, no such host
                if isinstance(error.reason, TimeoutError):
                    return self._timed_out()
                return self._give_up("unreachable", UNREACHABLE_PAUSE_S)
            except TimeoutError:
                return self._timed_out()
            except (OSError, http.client.HTTPException):  # cut off mid-answer
                self.problems.append("cut off")
                return None
        return None

    def _answered_with(self, body: bytes, found: bool) -> str | None:
        """The explanation in a JSON answer; anything else (an HTML page, an empty 404 from a
        proxy or captive portal) means the server is not Neuronpedia: nothing is cached."""
        try:
            payload = json.loads(body)
        except ValueError:
            return self._give_up("not Neuronpedia", UNREACHABLE_PAUSE_S)
        if payload is not None and not isinstance(payload, dict):
            return self._give_up("not Neuronpedia", UNREACHABLE_PAUSE_S)
        with self._lock:
            self._answered += 1
        return best_explanation(payload) if found else ""

    def _timed_out(self) -> None:
        with self._lock:
            self._timeouts += 1
            hopeless = self._answered == 0 and self._timeouts >= self._hopeless_after
        if hopeless:
            return self._give_up("not answering", UNREACHABLE_PAUSE_S)
        self.problems.append("timed out")
        return None

    @property
    def problem(self) -> str | None:
        """Why the call stopped, else the first request's problem, else None."""
        return self.gave_up or (self.problems[0] if self.problems else None)

    def _give_up(self, reason: str, pause: float) -> None:
        _pause(self.source.base_url, pause, reason)
        with self._lock:
            self.gave_up = self.gave_up or reason
        self.stop.set()


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (a number of seconds or an HTTP date), None when absent."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- the cache


class _Store:
    """Cache files in memory: each read once (again when its modification time changes) and
    replaced whole, never mutated, so a dict handed out stays consistent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[Path, tuple[int | None, dict[str, dict]]] = {}

    def entries(self, path: Path) -> dict[str, dict]:
        stamp = _mtime(path)
        with self._lock:
            known = self._files.get(path)
            if known is not None and known[0] == stamp:
                return known[1]
        entries = _read(path)
        with self._lock:
            self._files[path] = (stamp, entries)
        return entries

    def add(self, path: Path, new: Mapping[str, dict]) -> None:
        with self._lock:
            merged = {**_read(path), **self._files.get(path, (None, {}))[1], **new}
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text(path, json.dumps({"format": _FORMAT, "features": merged}))
                stamp = _mtime(path)
            except OSError:  # a read-only cache: keep the answers for this process only
                stamp = None
            self._files[path] = (stamp, merged)


_STORE = _Store()


def _store(source: Neuronpedia, answers: Mapping[Key, str], now: float) -> None:
    for nid, indices in _by_id(list(answers)).items():
        new = {str(i): {"label": answers[(nid, i)], "at": now} for i in indices}
        _STORE.add(source.cache_file(nid), new)


def _read(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return {}
    features = data.get("features")
    if not isinstance(features, dict):
        return {}
    return {k: v for k, v in features.items() if isinstance(v, dict)}


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _trusted(entry: object, now: float) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
        return False
    if entry["label"]:
        return True
    at = entry.get("at")
    return isinstance(at, (int, float)) and now - at < NO_EXPLANATION_DAYS * 86400


def _by_id(keys: list[Key]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for nid, index in keys:
        grouped.setdefault(nid, []).append(index)
    return grouped


def _split(neuronpedia_id: str) -> tuple[str, str]:
    model, sep, source = neuronpedia_id.partition("/")
    if not (model and sep and source):
        raise ValueError(f"A Neuronpedia id reads 'model/source', got {neuronpedia_id!r}.")
    return model, source


def _safe_name(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", part) or "_"
