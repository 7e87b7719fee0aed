#!/usr/bin/env bash
# per-switch A/B on this AMD EPYC instance, cifar10 cpu2h DFAD (the switches added after 77c10fb were measured on an Intel AMX CPU)
set -u
cd /work/main
export WANDB_MODE=disabled DFAD_DATA=/work/data
for what in fold allocator fusion; do
  reps=5; [ $what = allocator ] && reps=3
  echo "== $what  $(date -u +%H:%M:%S)"
  .venv/bin/python benchmarks/profile_step.py $what cifar10 --profile cpu2h --repeats $reps 2>&1 | grep -v Warning
done
echo "== end $(date -u +%H:%M:%S)"
