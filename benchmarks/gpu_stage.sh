#!/usr/bin/env bash
# Stage what benchmarks/gpu_cifar10.sh needs on a lent GPU machine, then print the device command.
# The device image has torch but not this project's pure-Python dependencies: pydantic's (and pytest's) wheels for its Python
# (3.12, x86_64) go in .whl/, the CIFAR-10 JPEG archive in .gpu/. Both stay out of git (.git/info/exclude) and
# travel with the call as `carry: [".gpu", ".whl"]` (well under the 64 MiB a call may carry).
# Usage, from the repository root: benchmarks/gpu_stage.sh [SECONDS_FOR_THE_SCRIPT]   (default 545)
set -eu
TOTAL=${1:-545}
PY=${PYTHON:-python3}
# the archive: CIFAR_ARCHIVE, else the shared data folder beside the checkout (as the Makefile looks for it)
SHARED=${SHARED_DATA:-$(for d in ../shared/data /work/shared/data; do [ -d "$d" ] && echo "$d" && break; done)}
ARCHIVE=${CIFAR_ARCHIVE:-${SHARED:-../shared/data}/cifar10-jpg.tar.gz}
[ -f "$ARCHIVE" ] || { echo "error: no CIFAR-10 archive at $ARCHIVE (set CIFAR_ARCHIVE)" >&2; exit 2; }
mkdir -p .whl .gpu
for p in /.whl/ /.gpu/; do grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >> .git/info/exclude; done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 -d .whl \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 \
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 pygments==2.21.0  # the CUDA-only tests
cp -n "$ARCHIVE" .gpu/
git diff --quiet HEAD 2>/dev/null || echo "warning: uncommitted changes: commit first, or DFAD_GIT_COMMIT below will not name the tree" >&2
du -sh .whl .gpu >&2
cat <<CMD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:\$PWD || exit; export WANDB_MODE=disabled DFAD_GIT_COMMIT=$(git rev-parse HEAD) CIFAR_ARCHIVE=.gpu/$(basename "$ARCHIVE"); bash benchmarks/gpu_cifar10.sh \$OUT $TOTAL
CMD
