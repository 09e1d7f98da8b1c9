"""The package's shape: no import cycles, and the request's options declared once."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from token_trace import options
from token_trace.datasets.command import parse_args as dataset_args
from token_trace.datasets.command import settings_of
from token_trace.options import DEFAULT_MAX_NODES, GraphOptions, PromptSpec, TraceOptions

PACKAGE = Path(__file__).resolve().parents[2] / "token_trace"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every package module `path` imports, anywhere in the file (function bodies and
    TYPE_CHECKING blocks included: a cycle there is still a cycle for a reader)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def test_the_package_has_no_import_cycles():
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: imports_of(path, set(files)) - {name} for name, path in files.items()}
    # The package's __init__ maps public names to modules lazily; it is nobody's dependency.
    graph = {name: deps - {"token_trace"} for name, deps in graph.items()}
    cycles = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycles.append([*trail[trail.index(dep) :], dep] if dep in trail else [name, dep])
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_options_check_their_values_once_with_clear_messages():
    for bad, message in [
        ({"method": "magic"}, "Unknown method 'magic'"),
        ({"method": "ig", "ig_steps": 0}, "ig_steps must be a whole number"),
        ({"method": "ig", "ig_steps": "abc"}, "ig_steps must be a whole number"),
        ({"method": "ig", "ig_steps": 2.5}, "ig_steps must be a whole number"),
        ({"sae_dtype": "int8"}, "Unknown SAE dtype"),
        ({"metric": "accuracy"}, "Unknown metric"),
        ({"backend": "jax"}, "Unknown backend 'jax'"),
    ]:
        with pytest.raises(ValueError, match=message):
            TraceOptions(**bad)
    for bad, message in [
        ({"max_nodes": 0}, "max_nodes must be a whole number"),
        ({"max_nodes": float("nan")}, "max_nodes must be a whole number"),
        ({"node_threshold": 2}, "node_threshold must lie between 0 and 1"),
        ({"edge_threshold": "NaN"}, "edge_threshold must lie between 0 and 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            GraphOptions(**bad)
    assert TraceOptions(method="atp", ig_steps=0) == TraceOptions()  # AtP takes no steps
    assert GraphOptions(max_nodes=None, node_threshold=None).max_nodes is None


def test_the_backend_defaults_to_hookedtransformer_or_the_environments_choice(monkeypatch):
    monkeypatch.delenv(options.BACKEND_ENV, raising=False)
    assert TraceOptions().backend == "hooked"
    monkeypatch.setenv(options.BACKEND_ENV, "bridge")
    assert TraceOptions().backend == "bridge"
    assert TraceOptions(backend="hooked").backend == "hooked"  # a named backend wins
    monkeypatch.setenv(options.BACKEND_ENV, "tl4")
    with pytest.raises(ValueError, match=r"Unknown backend in \$TOKEN_TRACE_BACKEND 'tl4'"):
        TraceOptions()
    parser = argparse.ArgumentParser()
    options.add_arguments(parser, TraceOptions)
    assert parser.parse_args(["--backend", "bridge"]).backend == "bridge"
    with pytest.raises(SystemExit):  # argparse names the choices
        parser.parse_args(["--backend", "tl4"])


def test_both_commands_are_built_from_the_records():
    parser = argparse.ArgumentParser()
    for record in (PromptSpec, TraceOptions, GraphOptions):
        options.add_arguments(parser, record)
    args = parser.parse_args(["--method", "ig", "--ig-steps", "4", "--baseline", "x y"])
    assert options.from_arguments(TraceOptions, args) == TraceOptions(method="ig", ig_steps=4)
    assert options.from_arguments(PromptSpec, args).counterfactual == "x y"  # the older flag
    assert options.from_arguments(GraphOptions, args) == GraphOptions()
    chosen = settings_of(dataset_args(["p.jsonl", "--out", "o", "--graph", "--max-nodes", "50"]))
    assert chosen.graph == GraphOptions(max_nodes=50) and chosen.trace == TraceOptions()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-nodes", "0", "--graph", "g.json"], "max_nodes must be a whole number"),
        (["--node-threshold", "2", "--graph", "g.json"], "node_threshold must lie"),
        (["--method", "ig", "--ig-steps", "x"], "ig_steps must be a whole number"),
        (["--top", "-1"], "--top must be a whole number"),
        (["--method", "ig", "--graph", "g.json"], "attribution patching"),
    ],
)
def test_the_command_refuses_bad_arguments_before_loading_anything(flags, message):
    argv = ["When John went", "--model", "ioi-demo", *flags]
    script = (
        "import sys; from token_trace import cli; code = cli.main(sys.argv[1:]); "
        "print('torch' in sys.modules, file=sys.stderr); sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    # Refused before anything loaded: torch (and so any model) was never imported.
    assert done.stderr.strip().endswith("False")


def test_help_names_each_default_once():
    done = subprocess.run(
        [sys.executable, "-m", "token_trace.cli", "--help"], capture_output=True, text=True
    )
    assert "(default: None)" not in done.stdout
    assert done.stdout.count(f"(default: {DEFAULT_MAX_NODES})") == 1
    method_help = done.stdout.split("\n  --method")[1].split("\n  --")[0]
    assert "integrated gradients" in method_help
