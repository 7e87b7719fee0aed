# DFAD-Bench. `make benchmark-mnist` and `make test` each set up .venv by themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PROFILE ?=
SEEDS   ?=
RUNS    ?= runs
ARGS    ?=
export DFAD_DATA ?= $(CURDIR)/data

RUN_FLAGS = $(if $(PROFILE),--profile $(PROFILE)) $(if $(SEEDS),--seeds $(SEEDS)) --runs-dir $(RUNS) $(ARGS)

.PHONY: setup test test-slow benchmark-mnist benchmark-cifar10 benchmark-cifar100 report clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

benchmark-mnist: setup
	$(BIN)/dfad-bench run mnist $(RUN_FLAGS)

benchmark-cifar10: setup
	$(BIN)/dfad-bench run cifar10 $(RUN_FLAGS)

benchmark-cifar100: setup
	$(BIN)/dfad-bench run cifar100 $(RUN_FLAGS)

# make report SUITE=mnist
SUITE ?= mnist
report: setup
	$(BIN)/dfad-bench report $(SUITE) --runs-dir $(RUNS)

clean-venv:
	rm -rf $(VENV)
