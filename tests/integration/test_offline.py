"""Without a reachable hub, a model that is neither bundled nor cached fails at once and clearly.

Runs in fresh interpreters (the hub is probed once per process), with an empty Hugging Face cache
and the hub's address pointing at a closed local port, as on a machine without network.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, free_port

pytestmark = pytest.mark.slow  # two fresh interpreters importing torch and TransformerLens

MEASURE = """
import time
import token_trace.pipeline
from token_trace import LoadError, trace
start = time.perf_counter()
try:
    trace("When John and Mary went to the shops", "gpt2-small", device="cpu")
except LoadError as error:
    print(f"{time.perf_counter() - start:.2f}")
    print(error)
"""


def offline_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_HOME"] = str(tmp_path / "hf-home")  # an empty cache
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    return env


def test_the_library_fails_within_three_seconds_naming_the_way_out(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", MEASURE], cwd=ROOT, env=offline_env(tmp_path),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    seconds, message = done.stdout.split("\n", 1)
    print(f"failed after {seconds} s: {message.strip()}")
    assert float(seconds) < 3.0
    assert "HF_HUB_OFFLINE" in message and "'ioi-demo'" in message


def test_the_cli_says_the_same_with_its_own_flag(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "token_trace.cli", "When John and Mary went", "--device", "cpu"],
        cwd=ROOT, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "HF_HUB_OFFLINE" in done.stderr and "--model ioi-demo" in done.stderr
