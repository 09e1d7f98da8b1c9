"""What the two commands share: library errors as one-line shell messages, and the parser style.

Imports nothing heavy, so both commands answer `--help` at once.
"""

from __future__ import annotations

import argparse
import sys

from token_trace.options import BUNDLED_MODEL


def for_the_shell(message: str) -> str:
    """Library messages name Python arguments; say the command's own flags instead."""
    return (
        message.replace(f"the bundled model {BUNDLED_MODEL!r}", f"--model {BUNDLED_MODEL}")
        .replace("counterfactual=", "--counterfactual ")
        .replace("method='atp'", "--method atp")
    )


def refuse(prog: str, error: BaseException | str) -> int:
    """Print why a command cannot go on, as one line on stderr; the exit status for it."""
    print(f"{prog}: {for_the_shell(str(error))}", file=sys.stderr)
    return 2


def parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A parser whose help shows each default once (the options write their own)."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
