"""A GPT-2-like word-level tokenizer over the demo corpus vocabulary.

Byte-level pre-tokenization with GPT-2's splitting rules makes " Mary" a single token (`ĠMary`)
distinct from a text-initial "Mary", and the byte-level decoder restores spaces, so text goes
through the same path (and has the same whitespace subtleties) as with GPT-2. Word-level rather
than BPE: every name is one token by construction. The shipped `tokenizer.json` is this
tokenizer's output; `token_trace.demo.tokenizer.load_tokenizer` reads it back.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from token_trace.demo.tokenizer import END_OF_TEXT, UNKNOWN


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
