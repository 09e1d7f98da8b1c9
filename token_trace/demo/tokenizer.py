"""Loading the demo's word-level tokenizer (`tokenizer.json`) for `HookedTransformer`.

`training/word_tokenizer.py` builds it; the special tokens are defined here because loading needs
them and the training code imports them from the package, never the other way round.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<unk>"


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load `tokenizer.json` as a Hugging Face tokenizer for `HookedTransformer`.

    `bos_token` is left unset on purpose: `HookedTransformer.set_tokenizer` then sets it to the EOS
    token and prepends it itself, exactly as for GPT-2 (with a BOS set here it would try to reload
    the tokenizer by name with `add_bos_token=True`, which needs a hub-style directory).
    """
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), eos_token=END_OF_TEXT, pad_token=END_OF_TEXT, unk_token=UNKNOWN
    )
