"""Prompt files (JSONL, CSV, Parquet) -> one normalised prompt table, with bad records marked.

A dataset run must not stop at the 9,000th line because one record is malformed, so reading never
fails on a record: a record that cannot become a prompt (not a JSON object, no text, a number where
a word belongs) keeps its row with the reason in `problem`, and the run records it as an error. What
does fail at once is what makes the whole file unusable: an unknown format, no `text` column, or
two records with the same `id` (outputs are keyed by it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

#: The columns a prompt file may have; only `text` is required. Other columns are ignored.
INPUT_COLUMNS = ("id", "text", "answer", "contrast", "counterfactual")
OPTIONAL_TEXT_COLUMNS = ("answer", "contrast", "counterfactual")
#: Older column names still read: `baseline_text` is the counterfactual's former name.
ALIASES = {"baseline_text": "counterfactual"}

#: The normalised table: `prompt_id` (the record's `id`, else its row number), `row` (0-based
#: position in the file), the four text fields (None when not given), and `problem` (None, or why
#: the record cannot be attributed).
PROMPT_TABLE_COLUMNS = [
    "prompt_id",
    "row",
    "text",
    "answer",
    "contrast",
    "counterfactual",
    "problem",
]

PromptSource = str | os.PathLike[str] | pd.DataFrame | Sequence[Mapping[str, Any]]


def read_prompts(source: PromptSource) -> pd.DataFrame:
    """The prompts of a JSONL / CSV / Parquet file, a DataFrame, or a list of dicts."""
    if isinstance(source, pd.DataFrame):
        records = source.to_dict("records")
        columns = list(source.columns)
    elif isinstance(source, (str, os.PathLike)):
        records, columns = _read_file(Path(source))
    else:
        records = [dict(r) if isinstance(r, Mapping) else r for r in source]
        columns = sorted({key for r in records if isinstance(r, Mapping) for key in r})
    if not records:
        raise ValueError("The prompt file holds no records.")
    if "text" not in columns:
        raise ValueError(
            f"The prompts have no 'text' column (columns: {', '.join(map(str, columns)) or 'none'}"
            "). Each record needs a 'text'; 'answer', 'contrast', 'counterfactual' and 'id' are "
            "optional."
        )
    table = pd.DataFrame(
        [_normalised(record, row, "id" in columns) for row, record in enumerate(records)],
        columns=PROMPT_TABLE_COLUMNS,
    )
    _check_unique_ids(table)
    return table


def fingerprint(prompts: pd.DataFrame) -> str:
    """A hash of the prompt table: a resumed run must be reading the same prompts."""
    hashed = pd.util.hash_pandas_object(prompts[PROMPT_TABLE_COLUMNS].astype(str), index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16]


def _read_file(path: Path) -> tuple[list[Any], list[str]]:
    if not path.is_file():
        raise ValueError(f"No prompt file at {str(path)!r}.")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".csv":
        # Everything as text, and empty cells as empty strings: "0" stays a word, not a number.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        return frame.to_dict("records"), list(frame.columns)
    if suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
        return frame.to_dict("records"), list(frame.columns)
    raise ValueError(
        f"Cannot read prompts from {path.name!r}: use a .jsonl, .csv or .parquet file."
    )


def _read_jsonl(path: Path) -> tuple[list[Any], list[str]]:
    records: list[Any] = []
    columns: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                records.append(_Malformed(f"line {number} is not valid JSON ({error.msg})"))
                continue
            if not isinstance(record, dict):
                records.append(_Malformed(f"line {number} is not a JSON object"))
                continue
            records.append(record)
            columns.update(record)
    return records, sorted(columns)


class _Malformed:
    """A record that could not even be parsed; it still takes its row."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _normalised(record: Any, row: int, has_ids: bool) -> dict[str, Any]:
    fields: dict[str, Any] = dict.fromkeys(PROMPT_TABLE_COLUMNS)
    fields.update(row=row, prompt_id=str(row))
    if isinstance(record, _Malformed):
        fields["problem"] = record.problem
        return fields
    if has_ids:
        identifier = _missing_to_none(record.get("id"))
        if identifier is None:
            fields["problem"] = "the record has no id"
            fields["prompt_id"] = f"row {row}"
            return fields
        fields["prompt_id"] = str(identifier)
    problems = []
    record = {ALIASES.get(key, key): value for key, value in record.items()}
    text = _missing_to_none(record.get("text"))
    if not isinstance(text, str):
        problems.append("text is missing" if text is None else "text is not a string")
    fields["text"] = text if isinstance(text, str) else None
    for name in OPTIONAL_TEXT_COLUMNS:
        value = _missing_to_none(record.get(name))
        if value == "":
            value = None  # an empty cell means "not given", as in the app's form
        if value is not None and not isinstance(value, str):
            problems.append(f"{name} is not a string")
            value = None
        fields[name] = value
    fields["problem"] = "; ".join(problems) or None
    return fields


def _missing_to_none(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _check_unique_ids(table: pd.DataFrame) -> None:
    repeated = table["prompt_id"][table["prompt_id"].duplicated()].unique()
    if len(repeated):
        shown = ", ".join(repr(i) for i in repeated[:5])
        raise ValueError(
            f"{len(repeated)} ids are used by more than one record ({shown}); outputs are keyed "
            "by id, so ids must be unique."
        )
