"""The Space's requirements resolve for the Space's Python (README front matter), by pip itself.

`scripts/check_space_requirements.py` runs pip's resolver as a dry run for that interpreter
and Linux x86-64, with Gradio pinned at `sdk_version` as the Space pins it. It needs the package
index and takes minutes (pip reads the metadata of every candidate, torch's CUDA wheels
included), so it is slow-marked, and skipped when the index cannot be reached.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

EXIT_UNREACHABLE = 3


def front_matter_value(key: str) -> str:
    """A value of the README's front matter (read here too, not only by the script)."""
    head = (ROOT / "README.md").read_text().split("\n---\n", 1)[0]
    match = re.search(rf"^{key}:\s*\"?([^\"\n]+)\"?\s*$", head, re.MULTILINE)
    assert match, f"README front matter has no {key}"
    return match.group(1)


def test_requirements_resolve_for_the_spaces_python() -> None:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_space_requirements.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    print(f"resolver dry run: {time.perf_counter() - start:.0f} s")
    if done.returncode == EXIT_UNREACHABLE:
        pytest.skip(f"the package index cannot be reached: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert result["python_version"] == front_matter_value("python_version")
    versions = result["versions"]
    assert versions["gradio"] == front_matter_value("sdk_version")
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    for line in lines:
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            name = requirement.name.lower()
            if name in versions:
                assert versions[name] is not None, f"{name} was not resolved"
                assert Version(versions[name]) in requirement.specifier, (name, versions[name])
    assert versions["torch"] is not None and versions["spaces"] is not None
    print(json.dumps(result))
