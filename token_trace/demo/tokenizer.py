"""A GPT-2-like word-level tokenizer over the demo corpus vocabulary.

Byte-level pre-tokenization with GPT-2's splitting rules makes " Mary" a single token (`ĠMary`)
distinct from a text-initial "Mary", and the byte-level decoder restores spaces, so text goes
through the same path (and has the same whitespace subtleties) as with GPT-2. Word-level rather
than BPE: every name is one token by construction.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<unk>"


def _pre_tokenizer() -> pre_tokenizers.ByteLevel:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def build_tokenizer(words: Iterable[str]) -> Tokenizer:
    """Word-level tokenizer with ids: <|endoftext|> 0, <unk> 1, then each word bare and with a
    leading space, in sorted order (so the vocabulary, and the ids, depend only on `words`)."""
    pre = _pre_tokenizer()
    pieces = {
        piece
        for word in words
        for text in (word, " " + word)
        for piece, _ in pre.pre_tokenize_str(text)
    }
    vocab = {END_OF_TEXT: 0, UNKNOWN: 1}
    vocab.update({piece: i for i, piece in enumerate(sorted(pieces), start=len(vocab))})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNKNOWN))
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([END_OF_TEXT, UNKNOWN])
    return tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load `tokenizer.json` as a Hugging Face tokenizer for `HookedTransformer`.

    `bos_token` is left unset on purpose: `HookedTransformer.set_tokenizer` then sets it to the EOS
    token and prepends it itself, exactly as for GPT-2 (with a BOS set here it would try to reload
    the tokenizer by name with `add_bos_token=True`, which needs a hub-style directory).
    """
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), eos_token=END_OF_TEXT, pad_token=END_OF_TEXT, unk_token=UNKNOWN
    )
