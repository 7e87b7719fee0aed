# DFAD-Bench. `make benchmark-mnist` and `make test` each set up .venv by themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PROFILE ?=
SEEDS   ?=
RUNS    ?= runs
ARGS    ?=
# test processes (pytest-xdist): 2 made `make test` 1.6x faster on a 2-core CPU; 0: all in one process; auto: one per core
TEST_JOBS ?= 2
export DFAD_DATA ?= $(CURDIR)/data
# Offline machines carry the datasets as archives beside the checkout; elsewhere torchvision downloads.
SHARED_DATA ?= $(firstword $(wildcard $(abspath $(CURDIR)/../shared/data) /work/shared/data))

RUN_FLAGS = $(if $(PROFILE),--profile $(PROFILE)) $(if $(SEEDS),--seeds $(SEEDS)) --runs-dir $(RUNS) $(ARGS)

.PHONY: data setup test test-slow benchmark-mnist benchmark-cifar10 benchmark-cifar100 report clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# pip byte-compiles the ~11,900 installed files one by one (~1 min here); compileall's workers do it in ~20-25 s.
	@# quiet=2: a file only newer Pythons parse (torch ships some) stays uncompiled, as pip leaves it.
	$(BIN)/pip install -q --no-compile -e '.[test]'
	$(BIN)/python -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)"
	touch $@

data:
	@# prepare.sh is idempotent (its stamp file in DFAD_DATA): it unpacks every archive once, whatever is already there
	@if [ -n "$(SHARED_DATA)" ] && [ -x "$(SHARED_DATA)/prepare.sh" ]; then \
		"$(SHARED_DATA)/prepare.sh" "$(DFAD_DATA)"; fi

test: setup data
	$(BIN)/python -m pytest -q --durations=15 -n $(TEST_JOBS)

test-slow: setup data
	$(BIN)/python -m pytest -q -m slow

benchmark-mnist: setup data
	$(BIN)/dfad-bench run mnist $(RUN_FLAGS)

benchmark-cifar10: setup data
	$(BIN)/dfad-bench run cifar10 $(RUN_FLAGS)

benchmark-cifar100: setup data
	$(BIN)/dfad-bench run cifar100 $(RUN_FLAGS)

# The paper's Table 3 (CamVid; NYUv2 needs its data under DFAD_DATA/NYUv2) and Table 2's Caltech101 column.
.PHONY: benchmark-camvid benchmark-nyuv2 benchmark-caltech101
benchmark-camvid: setup data
	$(BIN)/dfad-bench run camvid $(RUN_FLAGS)

benchmark-nyuv2: setup data
	$(BIN)/dfad-bench run nyuv2 $(RUN_FLAGS)

benchmark-caltech101: setup data
	$(BIN)/dfad-bench run caltech101 $(RUN_FLAGS)

# The DFAD loss ablation (MAE / MSE / KLD, MNIST), then its table (and curves, from the reports).
.PHONY: ablation-mnist
ablation-mnist: setup data
	$(BIN)/dfad-bench run ablation-loss $(RUN_FLAGS)
	$(BIN)/dfad-bench report ablation-loss --runs-dir $(RUNS)

# #8's accuracy parity: DFAD on the default path and on the plain eager fp32 NCHW loop (the official one),
# quick profile (PROFILE= to change), same teacher, seeds 0,1,2 (SEEDS= to change); the plain runs go to
# $(RUNS)-plain; ends with benchmarks/parity.py's comparison. Plain is ~7x slower on quick
# (benchmarks/results/speed-mnist-paper-cpu.md): about 3.4 h for three seeds on a 2-core CPU. Interrupted
# runs resume from their checkpoints when the target is run again.
.PHONY: parity-mnist
PARITY_SEEDS = $(if $(SEEDS),$(SEEDS),0,1,2)
PARITY_PROFILE = $(if $(PROFILE),$(PROFILE),quick)
parity-mnist: setup data
	$(BIN)/dfad-bench run mnist --methods dfad --seeds $(PARITY_SEEDS) --profile $(PARITY_PROFILE) --runs-dir $(RUNS) --no-report
	mkdir -p $(RUNS)-plain && cp -rn $(RUNS)/teachers $(RUNS)-plain/
	$(BIN)/dfad-bench run mnist --methods dfad --seeds $(PARITY_SEEDS) --profile $(PARITY_PROFILE) --runs-dir $(RUNS)-plain --no-report \
		runtime.precision=fp32 runtime.channels_last=off runtime.frozen_teacher=false runtime.fused_upsample=false
	$(BIN)/dfad-bench report mnist --runs-dir $(RUNS)
	$(BIN)/dfad-bench report mnist --runs-dir $(RUNS)-plain
	$(BIN)/python benchmarks/parity.py mnist --default $(RUNS) --plain $(RUNS)-plain

# Two tune workers against a real PostgreSQL server on loopback (Debian's package, installed if missing).
.PHONY: test-distributed
test-distributed: setup
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)
	$(BIN)/pip install -q -e '.[test,distributed]'
	$(BIN)/python -m pytest -q -m distributed tests/test_distributed.py

# make report SUITE=mnist
SUITE ?= mnist
report: setup
	$(BIN)/dfad-bench report $(SUITE) --runs-dir $(RUNS)

clean-venv:
	rm -rf $(VENV)
