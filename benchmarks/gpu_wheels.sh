#!/usr/bin/env bash
# Fetch, into .whl/, the wheels that benchmarks/gpu_check.sh installs on a GPU machine that has no network.
# The H200 image (Python 3.12, torch 2.11, timm, onnx, typer, ...) lacks pydantic and what it needs;
# the versions are this environment's, so the pydantic / pydantic-core pair stays consistent.
#
#   bash benchmarks/gpu_wheels.sh                  # the default set below
#   bash benchmarks/gpu_wheels.sh NAME [NAME ...]  # other distributions (gpu_check.sh names missing ones)
#
# Settings: PYTHON (the interpreter whose versions are pinned; python3), PY_VERSION (3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PY_VERSION=${PY_VERSION:-3.12}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(pydantic pydantic-core annotated-types typing-inspection typing-extensions)
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
mkdir -p .whl
for name in "${names[@]}"; do
    version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
        --implementation cp "${platforms[@]}" -d .whl "$name==$version"
done
ls -l .whl
