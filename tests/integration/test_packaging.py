"""The wheel ships the demo's loaders and trained files, and none of the code that trained them.

`training/` sits next to the package in the repository, so a looser `packages.find` pattern, or a
training module moved back under `token_trace/demo/`, would install the corpus generator and the
training loop for every user. The wheel is built from a clean copy of the source tree rather than
the checkout: setuptools builds in place and packs whatever its `build/lib` holds, so a stale
module left there by an earlier build would end up in the wheel whatever the tree now contains.
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and installs it in a fresh directory

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "token_trace" / "demo" / "weights"

#: The only modules `token_trace/demo/` may ship: loading and serving the trained files.
SERVING_MODULES = {"__init__.py", "model.py", "tokenizer.py"}
#: Training modules by name, listed here as well as read from `training/`, so that a module moved
#: back into the package (and so gone from `training/`) is still caught.
TRAINING_MODULES = {
    "cards.py",
    "corpus.py",
    "evaluate.py",
    "lexicon.py",
    "sae.py",
    "train.py",
    "transformer.py",
    "word_tokenizer.py",
}
#: What the build must not see: the ignored build outputs and caches of `.gitignore`, and `.git`.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".venv",
    "test-artifacts",
    "flagged",
    ".gradio",
    ".whl",
)


def _missing_build_tools() -> str | None:
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed (the build runs without isolation, on the local one)"
    if (
        importlib.util.find_spec("wheel") is None
        and importlib.util.find_spec("setuptools.command.bdist_wheel") is None
    ):
        return "no bdist_wheel: install `wheel`, or setuptools >= 70.1, which includes it"
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline from a copy of the working tree."""
    reason = _missing_build_tools()
    if reason is not None:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("wheel")
    source, out = tmp / "source", tmp / "dist"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    pip_wheel = "-m pip wheel --no-deps --no-build-isolation --no-cache-dir --quiet".split()
    build = subprocess.run(
        [sys.executable, *pip_wheel, "--wheel-dir", str(out), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (path,) = out.glob("token_trace-*.whl")
    return path


@pytest.fixture(scope="module")
def names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_wheel_ships_every_trained_file_unchanged(wheel: Path, names: list[str]) -> None:
    shipped = sorted(p for p in WEIGHTS.rglob("*") if p.is_file())
    expected = {p.relative_to(ROOT).as_posix(): p for p in shipped}
    assert "token_trace/demo/weights/model.safetensors" in expected
    assert "token_trace/demo/weights/tokenizer.json" in expected
    assert any(name.endswith("/cfg.json") for name in expected)
    assert any(name.startswith("token_trace/demo/weights/feature_cards/") for name in expected)
    assert set(expected) <= set(names)
    with zipfile.ZipFile(wheel) as archive:
        for name, path in expected.items():
            assert archive.read(name) == path.read_bytes(), name


def test_demo_package_holds_only_the_loaders(names: list[str]) -> None:
    demo_modules = {
        name.removeprefix("token_trace/demo/")
        for name in names
        if name.startswith("token_trace/demo/") and name.endswith(".py")
    }
    assert demo_modules == SERVING_MODULES


def test_wheel_holds_every_package_module(names: list[str]) -> None:
    """Every module of the source tree's package (the app's subpackage included) is installed."""
    source = {path.relative_to(ROOT).as_posix() for path in (ROOT / "token_trace").rglob("*.py")}
    assert source <= set(names), sorted(source - set(names))


def test_wheel_holds_no_training_code(names: list[str]) -> None:
    training = {path.name for path in (ROOT / "training").glob("*.py")} - {"__init__.py"}
    missing = TRAINING_MODULES - training
    assert not missing, f"moved out of training/ (back into the package?): {sorted(missing)}"
    top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_level == {"token_trace"}
    assert not [name for name in names if name.rsplit("/", 1)[-1] in training]


def test_package_never_imports_training() -> None:
    """The installed package cannot depend on code the wheel leaves out."""
    offending = []
    for path in sorted((ROOT / "token_trace").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            offending += [
                f"{path.relative_to(ROOT)}:{node.lineno}"
                for module in modules
                if module.split(".")[0] == "training"
            ]
    assert not offending


def test_installed_wheel_serves_the_demo(wheel: Path, tmp_path: Path) -> None:
    """Unpacked on its own, outside the repository, the wheel loads the model, SAEs and cards."""
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    script = f"""
import sys
sys.path.insert(0, {str(target)!r})
import token_trace.demo as demo
assert demo.__file__.startswith({str(target)!r}), demo.__file__
model = demo.load_demo_model()
saes = demo.load_demo_saes()
assert list(saes) == demo.demo_hook_names()
assert demo.feature_card(demo.demo_hook_names()[0], 0) is not None
assert "training" not in sys.modules
print(model.cfg.model_name)
"""
    # -I: no current directory or PYTHONPATH on sys.path, so the checkout's code stays out of reach.
    run = subprocess.run(
        [sys.executable, "-I", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("ioi-demo")
