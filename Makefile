PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The demo: SNASNet search (100 candidates) -> train the best cell -> evaluate, on the bundled data. One thread,
# whatever the machine's cores: training results move with the thread count (reduction order).
DEMO_ARGS ?= --exp_name demo --num_search 100 --seed 1234 --threads 1 --overwrite

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	touch $@

demo: install
	$(BIN)/spikesearch snasnet $(DEMO_ARGS)

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache build *.egg-info src/*.egg-info

bench: install
	$(BIN)/python benchmarks/bench.py
