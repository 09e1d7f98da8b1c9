"""Asking whether a server is there without ever waiting longer than the caller allows."""

from __future__ import annotations

import threading
from collections.abc import Callable


def finishes_within(timeout: float, attempt: Callable[[], object]) -> bool:
    """Whether `attempt()` returns without an OSError within `timeout` seconds.

    It runs in a daemon thread because a DNS lookup does not honour socket timeouts: an
    unresolvable host could otherwise hold the caller for many seconds, while a refused
    connection answers at once. A late attempt is left to finish on its own.
    """
    answered, finished = threading.Event(), threading.Event()

    def run() -> None:
        try:
            attempt()
            answered.set()
        except OSError:
            pass
        finally:
            finished.set()

    threading.Thread(target=run, daemon=True).start()
    finished.wait(timeout)
    return answered.is_set()
