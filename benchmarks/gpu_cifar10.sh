#!/usr/bin/env bash
# #8's GPU figures in one call of a lent GPU machine, every stage bounded so that one failing stage
# leaves the others' results:
#   0. the tests that need a GPU (tests/test_graphs.py, tests/test_teacher.py: pytest from .whl/);
#   1. `speed` on the CIFAR-10 paper configuration (ResNet-34-8x -> ResNet-18-8x, batch 256), both paths;
#   2. the same with runtime.cuda_graph=true: the default path replays the iteration as one CUDA graph;
#   3. `run cifar10 --profile gpu --methods dfad`: the 5-minute ResNet-34-8x teacher, then DFAD's
#      25,000-iteration schedule until the deadline (SIGTERM: the loop checkpoints and stops cleanly),
#      with runtime.cuda_graph=true if stage 2 captured and beat stage 1 (RUN_ARGS overrides the choice).
# Usage, from the repository root: benchmarks/gpu_cifar10.sh OUTDIR [TOTAL_SECONDS]
# Data: DFAD_DATA if it holds cifar10/, else the archive named by CIFAR_ARCHIVE, unpacked to /tmp/data.
# SPEED_PROFILE / RUN_PROFILE / SPEED_ARGS override the stages (smoke profiles try the script on a CPU).
# DFAD_GIT_COMMIT: the host's commit (`git rev-parse HEAD` there); the runs record it, since a copied tree's
# .git can be stale.
set -u
OUT=${1:?usage: gpu_cifar10.sh OUTDIR [TOTAL_SECONDS]}
TOTAL=${2:-540}
START=$(date +%s)
PY=${PYTHON:-python3}
CLI="$PY -m harness.cli"
RUNS=${RUNS:-/tmp/gpu-runs}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
left() { echo $(( TOTAL - ($(date +%s) - START) )); }
# bounded CAP [timeout options] CMD...: CMD under `timeout`, for at most CAP seconds and never past TOTAL; skipped
# (status 124) when under 30 s are left, since `timeout 0` would not limit it and a negative one would fail it
bounded() {
  local t; t=$(left); [ "$t" -gt "$1" ] && t=$1; shift
  if [ "$t" -lt 30 ]; then echo "skipped: ${t}s left" | tee -a "$OUT/stages.log" >&2; return 124; fi
  local opts=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do opts+=("$1"); shift; done
  [ $# -gt 0 ] || { echo "bounded: no -- before the command" >&2; return 2; }; shift
  timeout ${opts[@]+"${opts[@]}"} "$t" "$@"
}
stage() { echo "== $(date -u +%H:%M:%S) [$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/stages.log"; }

stage machine
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 || true
  $PY -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', platform.python_version()); print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
  nproc; echo "commit (DFAD_GIT_COMMIT, from the host): ${DFAD_GIT_COMMIT:-unset}; git here: $(git rev-parse HEAD 2>/dev/null || echo none)"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

if [ ! -d "${DFAD_DATA:-/nonexistent}/cifar10/train" ]; then
  stage "unpack ${CIFAR_ARCHIVE:?set DFAD_DATA or CIFAR_ARCHIVE}"
  export DFAD_DATA=/tmp/data
  mkdir -p "$DFAD_DATA/cifar10" && tar -xzf "$CIFAR_ARCHIVE" -C "$DFAD_DATA/cifar10"
fi
stage "decode cifar10 into the tensor cache"
bounded 120 -- $PY -c "from harness.data import get_dataset as g; d = g('cifar10'); print(len(d.load('train')), len(d.load('test')))"

stage "CUDA-only tests (skipped on a CPU): graph capture, a CPU checkpoint resumed and captured, crop/flip"
bounded 120 -- $PY -m pytest -q -p no:cacheprovider -rs tests/test_graphs.py tests/test_teacher.py -k "cuda or gpu" \
  > "$OUT/cuda-tests.log" 2>&1
echo "cuda tests rc=$?"; tail -6 "$OUT/cuda-tests.log"

stage "speed ${SPEED_PROFILE:-paper}"
bounded 200 -- $CLI speed cifar10 --profile "${SPEED_PROFILE:-paper}" --method dfad \
  ${SPEED_ARGS:---iters 10 --warmup 3 --repeats 3} > "$OUT/speed.json" 2> "$OUT/speed.err"
echo "speed rc=$?"; cat "$OUT/speed.json"; tail -5 "$OUT/speed.err"

stage "speed ${SPEED_PROFILE:-paper}, runtime.cuda_graph=true"
bounded 200 -- $CLI speed cifar10 runtime.cuda_graph=true --profile "${SPEED_PROFILE:-paper}" \
  --method dfad ${SPEED_ARGS:---iters 10 --warmup 3 --repeats 3} > "$OUT/speed-graph.json" 2> "$OUT/speed-graph.err"
echo "speed (graph) rc=$?"; cat "$OUT/speed-graph.json"; tail -5 "$OUT/speed-graph.err"
# the run replays graphs only if the capture worked and was faster than eager steps
GRAPH=$($PY -c "
import json, sys
try:
    e, g = (json.load(open(f'$OUT/{n}.json'))['default'] for n in ('speed', 'speed-graph'))
    print('runtime.cuda_graph=true' if g['cuda_graph']['mode'] == 'graph' and g['s_per_iter'] < e['s_per_iter'] else '')
except Exception as x:
    print(f'no graph choice: {x}', file=sys.stderr)
")
RUN_ARGS=${RUN_ARGS-$GRAPH}
echo "run overrides: ${RUN_ARGS:-none}" | tee -a "$OUT/stages.log"

stage "teacher + dfad (${RUN_PROFILE:-gpu}), $(left)s left"
bounded "$TOTAL" -s TERM -k 30 -- $CLI run cifar10 $RUN_ARGS --profile "${RUN_PROFILE:-gpu}" --methods dfad --seeds 0 \
  --runs-dir "$RUNS" --no-report > "$OUT/run.log" 2>&1
echo "run rc=$?"
stage "collect"
(cd "$RUNS" && find . -name '*.pt' -prune -o -type f -print | tar -czf "$OUT/runs.tgz" -T -) || true
grep -E "teacher|error|Error" "$OUT/run.log" | tail -8
tail -3 "$OUT/run.log"
tail -4 "$RUNS"/cifar10/dfad/seed-0/metrics.csv 2>/dev/null
stage done
