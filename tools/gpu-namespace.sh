#!/usr/bin/env bash
# For GPU machines where Block is not pip-installed (they have torch, not pydantic): build a
# symlink view of the `block.*` namespace (top-level folders -> block.<name>, as setuptools'
# package-dir does) and print the directory to put on PYTHONPATH. Never put the repository root
# itself on the path: `operator/` would shadow the standard library.
#   export PYTHONPATH=$(tools/gpu-namespace.sh) && python3 -m block.profiler profile ...
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
view="${1:-${TMPDIR:-/tmp}/block-namespace}"
rm -rf "$view"
mkdir -p "$view/block"
for f in "$root"/block/*; do ln -s "$f" "$view/block/$(basename "$f")"; done
for pkg in simulator predictor scheduler estimator operator profiler experiments data; do
  [ -d "$root/$pkg" ] && ln -s "$root/$pkg" "$view/block/$pkg"
done
echo "$view"
