"""How the bundled `ioi-demo` model was made: corpus, tokenizer, transformer, SAEs, feature cards.

Not part of the installed package (`pyproject.toml` packages only `token_trace*`): a wheel ships
the trained files in `token_trace/demo/weights` and the code that loads them, not the code that
produced them. Run from the repository root, `python -m training.train` rewrites those files. This
code may import `token_trace.demo` (the loaders and the on-disk format); `token_trace` never
imports it.
"""
