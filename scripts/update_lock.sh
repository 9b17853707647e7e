#!/usr/bin/env bash
# Regenerate constraints.txt: the exact versions of everything `pip install -e ".[dev]"` brings today.
#
# Run it when a dependency should move (a new torch, timm or onnxruntime release you want, a security
# fix, a range changed in pyproject.toml), then run the whole suite in a venv built from the new lock
# (`KDCOMPRESS_VENV=$(mktemp -d)/venv bash .ci/run`) and commit both. The lock is made on Linux x86_64
# with Python 3.11 (the CI machines); pip ignores pins of packages a platform does not install.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
"$work/venv/bin/pip" install -q -e ".[dev]"
{
  echo "# The tested versions of every package \`pip install -e \".[dev]\"\` installs (scripts/update_lock.sh)."
  echo "# Install through it: pip install -c constraints.txt -e \".[dev]\". pyproject.toml keeps the ranges."
  echo "# Made with $("$work/venv/bin/python" --version) on $(uname -s) $(uname -m)."
  "$work/venv/bin/pip" freeze --exclude-editable | LC_ALL=C sort -f
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
