# The two commands: `make serve` and `make test`. Each sets up .venv by itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is installed first and alone, as the CPU build: a wheel pip finds without an index
# (--no-index: the machine's --find-links) if there is one, else
# PyTorch's CPU index, because PyPI's Linux torch is the CUDA build (several GB of nvidia-*).
# On a CUDA machine: make TORCH_INDEX=https://download.pytorch.org/whl/cu128 (or TORCH_INDEX=
# empty for PyPI's build).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PYTEST_ARGS ?=
# Python writes byte-code as each module is first imported, into .venv and the checkout's
# __pycache__, even where the environment sets PYTHONDONTWRITEBYTECODE: without it every Ray
# worker would compile torch and Ray again at start (4 s -> 9 s each). pip's byte-compiling of
# all 14,000 installed files cost 55 s here; the modules actually imported, a fraction of that.
export PYTHONDONTWRITEBYTECODE :=
ARGS ?=

.PHONY: install test serve clean help

help:
	@echo "make serve   install, start a local Ray cluster and serve the shipped models on http://127.0.0.1:8000"
	@echo "make test    install and run the test suite"

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first and alone: an unpinned resolve would pull the multi-GB CUDA build.
	@# --no-compile: byte-code is written on first import instead (PYTHONDONTWRITEBYTECODE above).
	@# The torch wheel alone (--no-deps: a local wheel directory holds torch, not filelock,
	@# sympy, ...); its dependencies come with the project's below, torch itself being satisfied.
	$(BIN)/python -m pip install -q --no-compile --no-index --no-deps "$(TORCH_SPEC)" 2>/dev/null \
	  || $(BIN)/python -m pip install -q --no-compile --no-deps "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	@# The rest with uv when it installs (about 10 s here, where pip took 50 s: uv fetches and
	@# unpacks in parallel), else with pip. uv keeps the torch above (it satisfies torch>=2.3)
	@# and, like --no-compile, writes no byte-code.
	{ $(BIN)/python -m pip install -q uv 2>/dev/null && \
	  $(BIN)/uv pip install -q --python $(BIN)/python -e ".[test,tune]"; } || \
	{ echo "make: installing with pip (uv unavailable or failed)" >&2; \
	  $(BIN)/python -m pip install -q --no-compile "$(TORCH_SPEC)" && \
	  $(BIN)/python -m pip install -q --no-compile -e ".[test,tune]"; }
	@# s3fs silently falls back to 0.4.2 (2019) when boto3 leaves aiobotocore's band.
	$(BIN)/python -c "import s3fs, sys; v = tuple(int(x) for x in s3fs.__version__.split('.')[:2]); sys.exit(0 if v >= (2024, 1) else 'stale s3fs ' + s3fs.__version__)"
	$(BIN)/python -m pip check
	@touch $(STAMP)

install: $(STAMP)

# Two workers: the tests on a Ray cluster run in order on one, the others beside them at low
# priority (tests/conftest.py). PYTEST_WORKERS=0 runs everything in this one process.
PYTEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadgroup) $(PYTEST_ARGS)

# Starts a local Ray cluster and serves models/base.pt + models/lowlight.pt on
# http://127.0.0.1:8000 (Ctrl-C stops it). Extra settings: make serve ARGS="--port 8080".
# One machine: the models run inside the ingress replica, which saves a Ray call per image
# (bench/serve.py); serve_app/config.yaml keeps `separate` for clusters (per-model scaling, GPUs).
SERVE_ARGS ?= model_deployment.placement=ingress
serve: $(STAMP)
	$(BIN)/python -m serve_app $(SERVE_ARGS) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
