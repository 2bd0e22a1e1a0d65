#!/usr/bin/env bash
# mypy and import-linter cannot follow setuptools' package-dir mapping (top-level folders ->
# block.<name>), so build a symlink view of the import namespace and check that instead.
# The view is rebuilt every run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${BIN:-$root/.venv/bin}"
view="$root/.cache/namespace-view"
rm -rf "$view"
mkdir -p "$view/block"
for f in "$root"/block/*; do ln -s "$f" "$view/block/$(basename "$f")"; done
for pkg in simulator predictor scheduler estimator operator profiler experiments data; do
  [ -d "$root/$pkg" ] && ln -s "$root/$pkg" "$view/block/$pkg"
done
cd "$view"
"$bin/mypy" --config-file "$root/pyproject.toml" --cache-dir "$root/.cache/mypy" block
PYTHONPATH="$view" "$bin/lint-imports" --config "$root/.importlinter" --no-cache
