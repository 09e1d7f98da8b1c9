"""Would a Hugging Face Space install this repository's requirements? A pip resolver dry run.

A Space installs `requirements.txt` with the Python of the README's front matter
(`python_version`) and Gradio at its `sdk_version`, on Linux x86-64. This machine has another
Python, so the check asks pip to resolve for the Space's interpreter instead of this one:

    pip install --dry-run --ignore-installed --only-binary=:all: --python-version 3.10
        --implementation cp --abi cp310 --abi abi3 --abi none --platform manylinux_2_36_x86_64 ...
        --target <tmp> --report <json> -r requirements.txt "gradio[mcp]==<sdk_version>"

pip accepts `--python-version`/`--platform`/`--abi` only with `--only-binary=:all:` (it cannot
run another interpreter's build scripts) and with `--target` or `--dry-run`; `--dry-run` resolves
from wheel metadata without installing anything. Platform tags cover manylinux up to glibc 2.36
(Debian 12, assumed for the Space's image; `--glibc-minor` changes it).

Requirements published only as source distributions (pure-Python ones such as
`transformers-stream-generator`, which TransformerLens needs) have no wheel to resolve against;
the Space builds them from source. Each is built into a temporary wheelhouse here with
`pip wheel --no-deps` and offered with `--find-links`, once before the dry run for those known
(`SDIST_ONLY`), and again after a dry run that names another one it could not find.

The machine's pip configuration (local wheel folders, extra indexes, constraints) is switched off
for the run, as a Space has none of it; the index, proxy and certificate settings are kept, so
the check reaches the same package index as any other pip call here.

Exit status: 0 resolved (a JSON summary on stdout: the Python, the number of packages and the
versions of the main ones); 1 did not resolve (pip's error on stderr); 3 the package index could not
be reached (so nothing was checked).

    python scripts/check_space_requirements.py [--report FILE] [--glibc-minor 36]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Requirements (of this project's dependencies) published as source distributions only.
SDIST_ONLY = ("transformers-stream-generator",)
#: Packages whose resolved versions the summary lists.
MAIN_PACKAGES = ("torch", "gradio", "spaces", "transformer-lens", "sae-lens", "transformers")
#: pip's words for a package index it could not reach.
UNREACHABLE = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ProxyError",
    "Could not fetch URL",
    "Max retries exceeded",
)
EXIT_RESOLVED, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 3


def front_matter(readme: Path) -> dict[str, str]:
    """The README's YAML front matter as flat `key: value` strings (quotes removed)."""
    text = readme.read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    if match is None:
        raise SystemExit(f"{readme} has no front matter (--- ... ---) at its top.")
    values = {}
    for line in match.group(1).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip().strip("\"'")
    return values


def platforms(glibc_minor: int) -> list[str]:
    """Every Linux x86-64 wheel tag a glibc 2.`glibc_minor` system accepts, newest first."""
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(glibc_minor, 16, -1)]
    return [*tags, "manylinux2014_x86_64", "linux_x86_64"]


#: pip settings a Space's pip would also have (how to reach the index); all others are dropped.
KEPT_SETTINGS = ("index-url", "cert", "client-cert", "proxy", "trusted-host", "timeout")


def pip_env() -> dict[str, str]:
    """This environment without the machine's pip configuration files (PIP_CONFIG_FILE=/dev/null
    makes pip skip them all) or PIP_* variables, except the settings that say how to reach the
    package index, which are carried over as variables."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    for line in listed.splitlines():
        name, sep, value = line.partition("=")
        key = name.rsplit(".", 1)[-1]
        if sep and key in KEPT_SETTINGS:
            env["PIP_" + key.upper().replace("-", "_")] = value.strip().strip("'\"")
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def run_pip(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args, "--retries", "2", "--timeout", "60"],
        capture_output=True,
        text=True,
        env=pip_env(),
        cwd=ROOT,
    )


def unreachable(output: str) -> bool:
    return any(marker in output for marker in UNREACHABLE)


def build_wheel(requirement: str, wheelhouse: Path) -> subprocess.CompletedProcess:
    """A wheel of `requirement` built from its source distribution, for the dry run to find."""
    return run_pip(["wheel", "--no-deps", "-w", str(wheelhouse), requirement])


def dry_run(
    python_version: str, sdk_version: str, glibc_minor: int, wheelhouse: Path, report: Path
) -> subprocess.CompletedProcess:
    abi = "cp" + python_version.replace(".", "")
    args = [
        "install", "--dry-run", "--ignore-installed", "--quiet",
        "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
        "--abi", abi, "--abi", "abi3", "--abi", "none",
        *[option for tag in platforms(glibc_minor) for option in ("--platform", tag)],
        "--target", str(wheelhouse.parent / "target"), "--find-links", str(wheelhouse),
        "--report", str(report),
        "-r", str(ROOT / "requirements.txt"), f"gradio[mcp]=={sdk_version}",
    ]  # fmt: skip
    return run_pip(args)


def summary(report: Path, python_version: str) -> dict[str, object]:
    installs = json.loads(report.read_text())["install"]
    versions = {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
        for item in installs
    }
    return {
        "python_version": python_version,
        "packages": len(versions),
        "versions": {name: versions.get(name) for name in MAIN_PACKAGES},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, help="keep pip's JSON report here")
    parser.add_argument("--glibc-minor", type=int, default=36, help="the Space's glibc 2.N")
    options = parser.parse_args(argv)
    space = front_matter(ROOT / "README.md")
    python_version, sdk_version = space["python_version"], space["sdk_version"]

    with tempfile.TemporaryDirectory() as scratch:
        wheelhouse = Path(scratch) / "wheels"
        wheelhouse.mkdir()
        report = options.report or Path(scratch) / "report.json"
        pending = list(SDIST_ONLY)
        for _ in range(4):
            for requirement in pending:
                built = build_wheel(requirement, wheelhouse)
                if built.returncode != 0:
                    output = built.stdout + built.stderr
                    print(output[-4000:], file=sys.stderr)
                    return EXIT_UNREACHABLE if unreachable(output) else EXIT_FAILED
            done = dry_run(python_version, sdk_version, options.glibc_minor, wheelhouse, report)
            output = done.stdout + done.stderr
            if done.returncode == 0:
                print(json.dumps(summary(report, python_version), indent=2))
                return EXIT_RESOLVED
            if unreachable(output):
                print(output[-4000:], file=sys.stderr)
                return EXIT_UNREACHABLE
            missing = re.search(r"No matching distribution found for (\S+)", output)
            if missing is None or missing.group(1) in pending:
                break
            pending = [missing.group(1)]  # perhaps published as a source distribution only
        print(output[-6000:], file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
