"""The app's named API endpoints and MCP tools, their parameters declared once (`RequestFields`).

Gradio's `gr.api` reads an endpoint's parameters from its function's signature and type hints.
`endpoint` writes that signature from `RequestFields` (plus an endpoint's own extras), so every
endpoint takes exactly the fields the page sends, with the same names, types and defaults.

Each endpoint is served twice from the same handler: for `gradio_client` (`/attribute`, ...:
lists and dicts, as the README shows) and as an MCP tool of the same name (endpoint
`/attribute_json`, ...), whose result is JSON text: Gradio's MCP server writes a tool's result with
`str()`, which turns lists and dicts into Python reprs, and gives agents a smaller default table.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any

import gradio as gr

from token_trace.app.page import DEFAULT_VERIFY_NODES, MAX_VERIFY_NODES, Page
from token_trace.app.requests import (
    EDITS_HELP,
    FIELD_HELP,
    MAX_GENERATE,
    MAX_GRAPH_NODES,
    RequestFields,
)
from token_trace.options import DEFAULT_EDGE_THRESHOLD, DEFAULT_MAX_NODES, DEFAULT_NODE_THRESHOLD

_HINTS = typing.get_type_hints(RequestFields)
#: Top nodes an MCP `attribute` call returns unless asked for more (a whole table of a short
#: prompt is half a megabyte of text: more than an agent's context holds).
MCP_TOP_K = 50


@dataclass(frozen=True)
class Extra:
    """An endpoint's own parameter beside the request fields."""

    name: str
    annotation: object
    default: object
    help: str

    def parameter(self, default: object | None = None) -> inspect.Parameter:
        return inspect.Parameter(
            self.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=self.default if default is None else default,
            annotation=self.annotation,
        )


def endpoint(
    handler: Callable[..., Any],
    *,
    name: str,
    doc: str,
    returns: object,
    extra: Sequence[Extra] = (),
    defaults: Mapping[str, object] | None = None,
) -> Callable[..., Any]:
    """A function `name(text, model, ..., *extra)` that calls `handler(RequestFields, **extra)`.

    The docstring gets an `Args:` section (the request fields' `FIELD_HELP` and each extra's help,
    with its default), which Gradio shows in the API page and gives MCP clients as each tool's
    parameter descriptions. `defaults` overrides extras' defaults for this function.
    """
    defaults = dict(defaults or {})
    parameters = [
        inspect.Parameter(
            spec.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=_default(spec),
            annotation=_HINTS[spec.name],
        )
        for spec in fields(RequestFields)
    ]
    parameters += [item.parameter(defaults.get(item.name)) for item in extra]
    signature = inspect.Signature(parameters, return_annotation=returns)
    request_names = [spec.name for spec in fields(RequestFields)]

    def call(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        request = RequestFields(**{key: values.pop(key) for key in request_names})
        return handler(request, **values)

    call.__name__ = call.__qualname__ = name
    helps = {**FIELD_HELP, **{item.name: item.help for item in extra}}
    args = "\n".join(f"    {p.name}: {helps.get(p.name, '')}{_default_note(p)}" for p in parameters)
    call.__doc__ = f"{inspect.cleandoc(doc)}\n\nArgs:\n{args}"
    call.__signature__ = signature  # type: ignore[attr-defined]
    call.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": returns}
    return call


def _default(spec: Field) -> object:
    return inspect.Parameter.empty if spec.default is MISSING else spec.default


def _default_note(parameter: inspect.Parameter) -> str:
    default = parameter.default
    if default is inspect.Parameter.empty or default == "":
        return ""
    return f" Default: {default}."


def as_json(fn: Callable[..., Any], name: str) -> Callable[..., str]:
    """`fn` with its result written as JSON text (NaN as null), for MCP clients."""

    def call(*args: Any, **kwargs: Any) -> str:
        return json.dumps(_plain(fn(*args, **kwargs)), ensure_ascii=False, allow_nan=False)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{fn.__doc__}\n\nReturns: JSON text."
    call.__signature__ = inspect.signature(fn).replace(return_annotation=str)  # type: ignore[attr-defined]
    call.__annotations__ = {**fn.__annotations__, "return": str}
    return call


def _plain(value: Any) -> Any:
    """NaN and infinities as null, recursively (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _hidden_from_mcp(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Serve `fn` to API clients but not as an MCP tool (its JSON twin is the tool): Gradio's MCP
    server lists only functions whose `_mcp_type` is unset or "tool"."""
    fn._mcp_type = "client-api"  # type: ignore[attr-defined]
    return fn


EXTRAS = {
    "attribute": [
        Extra(
            "top_k",
            int,
            0,
            "How many nodes of largest |attribution| to return (0 or more); 0: every node, in "
            "the table's order.",
        ),
    ],
    "summary": [],
    "graph": [
        Extra(
            "max_nodes",
            int,
            DEFAULT_MAX_NODES,
            f"Nodes of largest |attribution| to compute edges between (1-{MAX_GRAPH_NODES}).",
        ),
        Extra(
            "node_threshold",
            float,
            DEFAULT_NODE_THRESHOLD,
            "Keep the nodes carrying this share of the influence (0-1).",
        ),
        Extra(
            "edge_threshold",
            float,
            DEFAULT_EDGE_THRESHOLD,
            "Keep the edges carrying this share of the influence (0-1).",
        ),
        Extra(
            "pinned",
            str,
            "",
            "Comma-separated graph node ids to keep whatever the thresholds and to pin in the "
            "viewer (qParams.pinnedIds).",
        ),
    ],
    "verify": [
        Extra(
            "top_k",
            int,
            DEFAULT_VERIFY_NODES,
            f"How many top nodes (BOS excluded) to ablate one by one (1-{MAX_VERIFY_NODES}).",
        ),
    ],
}
EXTRAS["intervene"] = [
    Extra("edits", str, "", EDITS_HELP),
    Extra(
        "generate",
        int,
        0,
        f"Greedy tokens to continue with and without the edits (0-{MAX_GENERATE}).",
    ),
]
#: Defaults an agent gets that differ from a Python client's.
MCP_DEFAULTS = {"attribute": {"top_k": MCP_TOP_K}}
MCP_NOTES = {
    "attribute": f" By default the top {MCP_TOP_K} nodes; ask for more with top_k (0: every node, "
    "which for a long prompt is a large result).",
}


def add_endpoints(page: Page, errors: Callable[..., Callable[..., Any]]) -> None:
    """`/attribute`, `/summary`, `/graph`, `/verify` and `/intervene` for API clients, and the
    same five as MCP tools (JSON text). `errors(fn, escape=False)` turns library errors into
    plain-text messages."""
    handlers = {
        "attribute": (page.attribute, list[dict]),
        "summary": (page.summary, dict),
        "graph": (page.graph_json, dict),
        "verify": (page.verify_json, dict),
        "intervene": (page.intervene_json, dict),
    }
    for name, (handler, returns) in handlers.items():
        doc = handler.__doc__ or ""
        tool = endpoint(
            handler, name=name, doc=doc + MCP_NOTES.get(name, ""), returns=returns,
            extra=EXTRAS[name], defaults=MCP_DEFAULTS.get(name),
        )  # fmt: skip
        gr.api(errors(as_json(tool, name), escape=False), api_name=f"{name}_json")
        client = endpoint(handler, name=f"{name}_for_clients", doc=doc, returns=returns,
                          extra=EXTRAS[name])  # fmt: skip
        gr.api(_hidden_from_mcp(errors(client, escape=False)), api_name=name)
