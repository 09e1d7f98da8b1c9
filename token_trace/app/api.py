"""The app's named API endpoints, their parameters declared once (`RequestFields`).

Gradio's `gr.api` reads an endpoint's parameters from its function's signature and type hints.
`endpoint` writes that signature from `RequestFields` (plus an endpoint's own extras), so
`/attribute`, `/summary` and any later endpoint take exactly the fields the page sends, with the
same names, types and defaults, and a change to the request is made in one place.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, fields
from typing import Any

from token_trace.app.requests import FIELD_HELP, RequestFields

_HINTS = typing.get_type_hints(RequestFields)


def endpoint(
    handler: Callable[..., Any],
    *,
    name: str,
    doc: str,
    returns: object,
    extra: Sequence[inspect.Parameter] = (),
    extra_help: Mapping[str, str] | None = None,
) -> Callable[..., Any]:
    """A function `name(text, model, ..., *extra)` that calls `handler(RequestFields, **extra)`.

    The docstring gets an `Args:` section (the request fields' `FIELD_HELP` and `extra_help`), which
    Gradio shows in the API page and gives MCP clients as each tool's parameter descriptions.
    """
    parameters = [
        inspect.Parameter(
            field.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=_default(field),
            annotation=_HINTS[field.name],
        )
        for field in fields(RequestFields)
    ]
    parameters += list(extra)
    signature = inspect.Signature(parameters, return_annotation=returns)
    request_names = [field.name for field in fields(RequestFields)]

    def call(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        request = RequestFields(**{key: values.pop(key) for key in request_names})
        return handler(request, **values)

    call.__name__ = call.__qualname__ = name
    helps = {**FIELD_HELP, **(extra_help or {})}
    args = "\n".join(f"    {p.name}: {helps.get(p.name, '')}" for p in parameters)
    call.__doc__ = f"{inspect.cleandoc(doc)}\n\nArgs:\n{args}"
    call.__signature__ = signature  # type: ignore[attr-defined]
    call.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": returns}
    return call


def _default(field: Field) -> object:
    return inspect.Parameter.empty if field.default is MISSING else field.default


def parameter(name: str, annotation: object, default: object) -> inspect.Parameter:
    """An endpoint's own parameter beside the request fields."""
    return inspect.Parameter(
        name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation
    )
