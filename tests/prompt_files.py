"""Prompt files for the dataset tests: real IOI records for the bundled model and bad records of
every kind a dataset run must record and get past."""

from __future__ import annotations

import json
from pathlib import Path

from sae_lens import SAE
from transformer_lens import HookedTransformer

from tests.helpers import ROOT, tiny_model, tiny_saes

IOI_FILE = ROOT / "examples" / "ioi_dataset.jsonl"
MAX_TOKENS = 40  # the run's cap in these tests; `LONG` goes past it


def ioi_records(n: int) -> list[dict]:
    lines = IOI_FILE.read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def with_swapped_names(record: dict) -> str:
    """The record's text with its two names swapped: a counterfactual of the same length."""
    answer, contrast = record["answer"].strip(), record["contrast"].strip()
    return record["text"].replace(answer, "\0").replace(contrast, answer).replace("\0", contrast)


LONG = "When Mary and John went to the store, John gave a drink to Mary. " * 4

#: Records that cannot be attributed, by id, with a word their error message must contain.
BAD = {
    "empty": ({"text": ""}, "empty"),
    "two-token-answer": (
        {"text": "When Mary and John went to the store, John gave a drink to",
         "answer": " Mary Mary", "contrast": " John"},
        "2 tokens",
    ),
    "unknown-answer": (
        {"text": "When Mary and John went to the store, John gave a drink to",
         "answer": " Zyzzogeton"},
        "Zyzzogeton",
    ),
    "too-long": ({"text": LONG}, f"at most {MAX_TOKENS}"),
    "text-not-string": ({"text": 12}, "not a string"),
}  # fmt: skip
MALFORMED_LINE = "{this is not json"


def mixed_records() -> list[dict]:
    """Six good IOI records (two with counterfactuals, one scoring its own last token, one with
    an unknown word in its text) and the bad ones, interleaved."""
    good = ioi_records(6)
    good[1]["baseline_text"] = with_swapped_names(good[1])
    good[4]["baseline_text"] = with_swapped_names(good[4])
    del good[2]["answer"], good[2]["contrast"]  # log p(its own last token)
    good[5]["text"] = "Blorptastic. " + good[5]["text"]  # a word the tokenizer does not know
    bad = [{"id": key, **record} for key, (record, _) in BAD.items()]
    order = [good[0], bad[0], good[1], good[2], bad[1], bad[2], good[3], bad[3], good[4], *bad[4:]]
    return [*order, good[5]]


def write_jsonl(path: Path, records: list[dict], malformed_after: int | None = None) -> Path:
    """`records` as JSONL, with one malformed line after record `malformed_after`."""
    lines = [json.dumps(record) for record in records]
    if malformed_after is not None:
        lines.insert(malformed_after + 1, MALFORMED_LINE)
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_pair(device: str | None) -> tuple[HookedTransformer, dict[str, SAE]]:
    """A dataset run's `loader`: the tests' tiny model and SAEs (seeded, the same every call)."""
    model = tiny_model()
    return model, tiny_saes(model)
