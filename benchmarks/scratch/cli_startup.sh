#!/usr/bin/env bash
# Wall time of short dfad-bench commands in two checkouts, alternating, one venv:
#   benchmarks/scratch/cli_startup.sh BEFORE_TREE AFTER_TREE ROUNDS > raw.txt
# Prints "tree | command | seconds" lines. Each tree gets its own runs dir with a finished MNIST smoke suite
# (for `report` and the already-done rerun) and a teacher-only copy that each training round starts from.
set -euo pipefail
before=$1 after=$2 rounds=${3:-5}
py="$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/python"
work=$(mktemp -d -t cli-startup-XXXXXX)
trap 'rm -rf "$work"' EXIT
for tree in "$before" "$after"; do
  name=$(basename "$tree")
  (cd "$tree" && "$py" -m harness.cli run mnist --profile smoke --runs-dir "$work/$name-done" >/dev/null 2>&1)
  mkdir -p "$work/$name-teacher" && cp -r "$work/$name-done/teachers" "$work/$name-teacher/"
done
time_it() {  # tree label command...
  local tree=$1 label=$2; shift 2
  local t0 t1
  t0=$(date +%s.%N)
  (cd "$tree" && "$py" -m harness.cli "$@" >/dev/null 2>&1) || true
  t1=$(date +%s.%N)
  echo "$(basename "$tree") | $label | $(echo "$t1 - $t0" | bc)"
}
for _ in $(seq "$rounds"); do
  for tree in "$before" "$after"; do
    name=$(basename "$tree")
    time_it "$tree" "--help" --help
    time_it "$tree" "validate mnist" validate mnist
    time_it "$tree" "run mnist --methods dfda (bad input)" run mnist --profile smoke --methods dfda --runs-dir "$work/x"
    time_it "$tree" "report mnist (smoke runs)" report mnist --runs-dir "$work/$name-done"
    time_it "$tree" "run mnist --profile smoke (all done)" run mnist --profile smoke --runs-dir "$work/$name-done"
    rm -rf "$work/$name-fresh" && cp -r "$work/$name-teacher" "$work/$name-fresh"
    time_it "$tree" "run mnist --profile smoke --methods dfad (trains)" run mnist --profile smoke --methods dfad \
      --no-report --runs-dir "$work/$name-fresh"
  done
done
