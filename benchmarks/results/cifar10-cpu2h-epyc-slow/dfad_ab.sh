#!/usr/bin/env bash
# DFAD cpu2h iteration A/B: current code (new) vs 77c10fb (old), same venv and machine, alternating
set -u
for rep in 1 2; do
  for side in new old; do
    src=/work/main; [ $side = old ] && src=/tmp/old77
    cd $src
    s=$(date +%s.%N)
    WANDB_MODE=disabled DFAD_DATA=/work/data PYTHONPATH=$src /work/main/.venv/bin/python -m harness.cli speed cifar10 --profile cpu2h --method dfad --iters 5 --repeats 3 > /tmp/exp/dab-$side-$rep.json 2>/tmp/exp/dab-$side-$rep.err
    e=$(date +%s.%N)
    echo "$side rep $rep: wall $(echo "$e - $s" | bc) s"
  done
done
