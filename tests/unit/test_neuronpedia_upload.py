"""Uploads against a local server that answers as Neuronpedia and its S3 bucket do
(`tests/fake_neuronpedia.py`): the three calls, their headers and gzip body, the page it returns,
and the refusals, none of which ever shows the key."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys

import pytest

from tests.fake_neuronpedia import KEY, fake_neuronpedia
from tests.helpers import ROOT
from token_trace import cli
from token_trace.neuronpedia_graph import content_slug, dumps
from token_trace.neuronpedia_upload import (
    API_KEY_ENV,
    BASE_URL_ENV,
    MIN_UPLOAD_BYTES,
    MissingKeyError,
    UploadError,
    gzipped,
    upload_graph,
)


@pytest.fixture()
def site():
    with fake_neuronpedia() as fake:
        yield fake


def assert_secret_kept(err: BaseException, key: str = KEY) -> None:
    for shown in (str(err), repr(err), repr(err.args), str(err.__cause__), str(err.__context__)):
        assert key not in shown


def test_an_upload_makes_the_three_documented_calls(ioi_graph, site, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, KEY)
    monkeypatch.setenv(BASE_URL_ENV, site.site + "/")
    page = ioi_graph.upload_to_neuronpedia(slug="ioi-tiny")
    assert page == f"{site.site}/gpt2-small/graph?slug=ioi-tiny"
    signed, put, saved = site.requests
    assert (signed.method, signed.path) == ("POST", "/api/graph/signed-put")
    assert (saved.method, saved.path) == ("POST", "/api/graph/save-to-db")
    assert signed.headers["x-api-key"] == saved.headers["x-api-key"] == KEY
    request = json.loads(signed.body)
    assert request == {
        "filename": "ioi-tiny.json",
        "contentLength": len(put.body),
        "contentType": "application/json",
    }
    assert json.loads(saved.body) == {"putRequestId": "put-1"}
    # the file store gets the gzipped file and never the key
    assert put.method == "PUT" and put.path.startswith("/s3/user-graphs/")
    assert "x-api-key" not in put.headers
    assert put.headers["content-encoding"] == "gzip"
    assert put.headers["content-type"] == "application/json"
    assert int(put.headers["content-length"]) == len(put.body)
    assert json.loads(gzip.decompress(put.body)) == ioi_graph.to_neuronpedia("ioi-tiny")


def test_without_a_slug_the_graph_is_named_by_its_content(ioi_graph, site):
    first = ioi_graph.upload_to_neuronpedia(KEY, base_url=site.site)
    again = ioi_graph.upload_to_neuronpedia(KEY, base_url=site.site)
    pruned = ioi_graph.prune(0.5, 0.9).upload_to_neuronpedia(KEY, base_url=site.site)
    slug = content_slug(ioi_graph.to_neuronpedia())
    assert first == again == f"{site.site}/gpt2-small/graph?slug={slug}"
    assert pruned != first and slug.startswith("token-trace-")


def test_a_wrong_key_is_named_and_never_shown(ioi_graph, site):
    wrong = "np-wrong-key-000000"
    with pytest.raises(UploadError) as caught:
        ioi_graph.upload_to_neuronpedia(wrong, base_url=site.site, slug="ioi")
    assert caught.value.status == 401 and API_KEY_ENV in str(caught.value)
    assert_secret_kept(caught.value, wrong)
    assert len(site.requests) == 1  # nothing went further


def test_refusals_say_what_neuronpedia_said_with_the_key_masked(ioi_graph, site):
    text = dumps(ioi_graph.to_neuronpedia("ioi"))
    site.refuse(400, {"error": f"bad request from key {KEY}"})
    with pytest.raises(UploadError) as caught:
        upload_graph(text, KEY, base_url=site.site)
    assert caught.value.status == 400 and "bad request from key ***" in str(caught.value)
    assert_secret_kept(caught.value)
    site.refuse(413, {"error": "Request Entity Too Large"})
    with pytest.raises(UploadError, match=r"too large.*100 MiB") as caught:
        upload_graph(text, KEY, base_url=site.site)
    assert caught.value.status == 413
    site.refuse(429, {"error": "Too many put requests today. The maximum is 100."})
    with pytest.raises(UploadError, match=r"HTTP 429.*maximum is 100"):
        upload_graph(text, KEY, base_url=site.site)


def test_a_model_neuronpedia_does_not_host_is_explained(ioi_graph, site):
    document = ioi_graph.to_neuronpedia("ioi")
    document["metadata"]["scan"] = "tiny-test"
    with pytest.raises(UploadError, match=r"hosts no model.*'tiny-test'.*ERR_MODEL_DOES_NOT_EXIST"):
        upload_graph(dumps(document), KEY, base_url=site.site)


def test_names_neuronpedia_would_refuse_are_refused_before_any_call(ioi_graph, site):
    with pytest.raises(ValueError, match="slug of letters, digits"):
        ioi_graph.upload_to_neuronpedia(KEY, slug="my graph", base_url=site.site)
    assert site.requests == []


def test_an_unreachable_site_is_a_clear_error(ioi_graph):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UploadError, match=f"Could not reach http://127.0.0.1:{port}") as caught:
        ioi_graph.upload_to_neuronpedia(KEY, slug="ioi", base_url=f"http://127.0.0.1:{port}")
    assert caught.value.status is None
    assert_secret_kept(caught.value)


def test_redirects_are_not_followed_with_the_key(ioi_graph, site):
    with fake_neuronpedia() as elsewhere:
        site.redirect_to = elsewhere.site
        with pytest.raises(UploadError, match=f"redirects to '{elsewhere.site}.*{BASE_URL_ENV}"):
            ioi_graph.upload_to_neuronpedia(KEY, slug="ioi", base_url=site.site)
        assert elsewhere.requests == []


def test_a_missing_key_is_named(ioi_graph, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with pytest.raises(MissingKeyError, match=API_KEY_ENV):
        ioi_graph.upload_to_neuronpedia(slug="ioi")


def test_tiny_files_are_padded_to_what_signed_put_accepts():
    text = json.dumps({"metadata": {"slug": "s", "scan": "gpt2-small"}})
    body = gzipped(text)
    assert len(body) >= MIN_UPLOAD_BYTES
    assert json.loads(gzip.decompress(body)) == json.loads(text)
    with pytest.raises(UploadError, match="at most 100 MiB") as caught:
        gzipped(" " * (100 * 1024 * 1024 + 1))
    assert caught.value.status == 413


def test_the_cli_upload_needs_a_graph_and_a_key(capsys, monkeypatch):
    assert cli.main(["When Mary and John", "--upload"]) == 2
    assert "--upload needs --graph" in capsys.readouterr().err
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert cli.main(["When Mary and John", "--graph", "g.json", "--upload"]) == 2
    assert API_KEY_ENV in capsys.readouterr().err


def test_the_upload_module_is_light_enough_for_the_cli_to_check_the_key_first():
    """`token-trace --upload` checks the key before torch loads: the module needs none of it."""
    code = (
        "import sys, token_trace.neuronpedia_upload; "
        "print(sorted(m for m in ('torch', 'pandas', 'numpy', 'token_trace.app') "
        "if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"
