#!/usr/bin/env bash
# Wheels for running the benchmark on this workplace's lent GPU machines (the `device` tool).
#
# Those machines hold PyTorch, transformers and a scientific stack, but neither TransformerLens
# nor SAELens, and they cannot reach a package index. This resolves what token-trace needs (at
# the versions installed here), leaves out what the GPU image already holds (the package list in
# the device tool's KINDS.md) and downloads the rest as CPython 3.12 x86-64 wheels into .whl/
# (git-ignored), for `run` to carry. Then one device call does the whole check:
#
#   bash benchmarks/gpu_wheels.sh
#   # device run, carry [".whl"], timeout_s 540:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#   PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/bench_attribution.py \
#     --device cuda --half-saes bfloat16 --skip-app 2>&1 | tee $OUT/bench.txt
set -euo pipefail
cd "$(dirname "$0")/.."

kinds=${DEVICE_KINDS:-/work/.library/device/KINDS.md}
report=$(mktemp)
trap 'rm -f "$report"' EXIT

pins=$(python - <<'EOF'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("transformer-lens", "sae-lens")))
EOF
)
# shellcheck disable=SC2086  # two requirement specifiers
python -m pip install --dry-run --ignore-installed --quiet --report "$report" $pins

missing=$(python - "$report" "$kinds" <<'EOF'
import json
import re
import sys

report, kinds = sys.argv[1:]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


text = open(kinds, encoding="utf-8").read()
listed = re.search(r"## Python packages already there.*?Packages: (.*?)\.\n", text, re.S)
if listed is None:
    sys.exit(f"No package list found in {kinds}")
present = {canonical(name) for name in listed.group(1).split(", ")}
for item in json.load(open(report, encoding="utf-8"))["install"]:
    meta = item["metadata"]
    if canonical(meta["name"]) not in present:
        print(f"{meta['name']}=={meta['version']}")
EOF
)

rm -rf .whl && mkdir .whl
platforms=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
  manylinux1_x86_64)
for spec in $missing; do
  # Some dependencies (transformers-stream-generator) ship no wheel; none is imported at run time.
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]/#/--platform=}" -d .whl "$spec" 2>/dev/null ||
    echo "no wheel for $spec: left out"
done
echo "$(find .whl -name '*.whl' | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
