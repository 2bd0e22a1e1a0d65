#!/usr/bin/env bash
# A fresh clone stands alone. Clone this repository's HEAD into an empty temporary folder (no
# ../shared beside it), install it as a user would (a wheel into a new virtualenv, not an
# editable install), delete the clone, and from an unrelated folder run what a new user runs
# first: `block simulate` with its defaults, `block profiles export`, and a smoke run of the live
# demo's path (engine twins + sidecars + gateway on loopback, a few requests per policy). Every
# file those commands read must come from the installed package. Run by .ci/run; locally with
# `make standalone` (it checks HEAD: commit first).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d -t block-standalone.XXXXXX)"
trap 'rm -rf "$work"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "clone $(git -C "$root" rev-parse --short HEAD) into $work/clone"
git clone --quiet "$root" "$work/clone"
if [ -e "$work/shared" ]; then echo "unexpected $work/shared" >&2; exit 1; fi

step "install into a new virtualenv (wheel, not editable)"
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
# setuptools' build warnings fill pages: keep them in a file, show it only on failure.
if ! "$work/venv/bin/pip" install -q "$work/clone" > "$work/pip.log" 2>&1; then
  cat "$work/pip.log" >&2
  exit 1
fi
rm -rf "$work/clone"  # nothing below may need the source tree

# Only the installed package's own data: no extra search folders, an empty cache.
unset BLOCK_PROFILES_DIR BLOCK_TRACES_DIR
export BLOCK_CACHE_DIR="$work/cache"
mkdir -p "$work/run"
cd "$work/run"
block="$work/venv/bin/block"

step "block simulate (defaults)"
"$block" simulate --quiet --json simulate.json
"$work/venv/bin/python" - <<'PY'
import json
report = json.load(open("simulate.json"))
assert report["completed"] == 1000, report["completed"]
profile = report["config"]["mlp_profile"]
assert "/site-packages/block/data/" in profile, profile
print(f"ok: {report['completed']} requests simulated from {profile}")
PY

step "block profiles export"
"$block" profiles export --out profiles
test -s profiles/mlp.csv
test -s profiles/attention.csv
echo "ok: $(find profiles -type f | wc -l) tables written"

step "live demo path: 2 engine twins + sidecars + gateway, 12 requests per policy"
"$block" experiment live --out live --live-replicas 2 --live-requests 12 --qps 2 \
  --policies block,least-requests --no-simulate --quiet
"$work/venv/bin/python" - <<'PY'
import csv
rows = list(csv.DictReader(open("live/comparison.csv")))
assert {r["policy"] for r in rows} == {"block", "least-requests"}, rows
for r in rows:
    assert int(r["completed"]) == 12 and int(r["failed"]) == 0, r
    assert float(r["ttft_p99_s"]) > 0, r
print("ok: live requests served through the gateway by", ", ".join(r["policy"] for r in rows))
PY
echo
echo "standalone: a clone with nothing beside it installs and runs"
