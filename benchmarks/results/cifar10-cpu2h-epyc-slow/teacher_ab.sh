#!/usr/bin/env bash
# teacher epoch A/B: current code (new) vs 77c10fb (old, the cpu2h record's commit), same venv, same machine, alternating
set -u
for rep in 1 2; do
  for side in new old; do
    src=/work/main; [ $side = old ] && src=/tmp/old77
    rd=/tmp/exp/tab-$side-$rep; rm -rf $rd
    cd $src
    s=$(date +%s.%N)
    WANDB_MODE=disabled DFAD_DATA=/work/data PYTHONPATH=$src /work/main/.venv/bin/python -m harness.cli teacher cifar10 --profile cpu2h --runs-dir $rd teacher.recipe.epochs=1 > $rd.log 2>&1
    e=$(date +%s.%N)
    echo "$side rep $rep: wall $(echo "$e - $s" | bc) s; $(grep -h 'epoch 1/1' $rd.log)"
  done
done
