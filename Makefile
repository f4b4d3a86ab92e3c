# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Nothing in tests, demo or benchmarks touches the network.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE := offline
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[quant,dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m vkvtrain demo

test: install
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/python -m ruff check --select F vkvtrain tests benchmarks
	$(BIN)/python -m mypy

bench: install
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# Every real recipe at real shapes: meta checks, memory plans and a 2-step CPU run at the 0.5B shape (not in CI;
# takes an hour or more on 2 cores).
.PHONY: smoke-real
smoke-real: install
	$(BIN)/python benchmarks/smoke_real.py

# The model organism and every intervention on it (CPU; README "The model organism"). The build is cached
# (organism://llava_onevision); SEEDS=0,1,2 trains each arm once per seed.
SEEDS ?= 0
.PHONY: organism
organism: install
	$(BIN)/python -m vkvtrain organism build --threads 2
	$(BIN)/python -m vkvtrain organism experiment --seeds '[$(SEEDS)]' --output_dir outputs/organism
