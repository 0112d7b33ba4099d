# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch: an unpinned torch pulls several GB of CUDA packages.
TORCH ?= torch==2.13.0

.PHONY: install demo test test-fast peer clean

$(BIN)/karaoke: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/karaoke

demo: install
	$(BIN)/karaoke run --config configs/demo.yaml

test: install
	$(BIN)/python -m pytest tests

# Open-Unmix for benchmarks/openunmix_peer.py, without its dependencies: its torchaudio has no wheel
# for the pinned torch, and the peer uses only its model class.
peer: install
	$(BIN)/pip install --quiet --no-deps openunmix==1.3.0

test-fast: install
	$(BIN)/python -m pytest tests -m "not slow"

clean:
	rm -rf $(VENV) runs
