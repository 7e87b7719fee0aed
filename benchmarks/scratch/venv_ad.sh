#!/usr/bin/env bash
set -u
repo="$(cd "$(dirname "$0")/../.." && pwd)"
for side in A D; do
  d=/tmp/venv$side; rm -rf $d; git clone -q "$repo" $d; cd $d
  flags=--no-compile; [ $side = A ] && flags=""
  s=$(date +%s.%N)
  python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1
  p=$(date +%s.%N)
  .venv/bin/pip install -q $flags -e '.[test]' >/dev/null 2>&1
  e=$(date +%s.%N)
  if [ $side = A ]; then :; elif false; then
    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -c "
import importlib, pkgutil
import torch, torchvision, wandb, optuna, pandas, matplotlib.pyplot, rich, pydantic, typer, jinja2, torchmetrics, pytest, xdist
for pkg in ('harness', 'methods', 'reports'):
    m = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(m.__path__, pkg + '.'):
        importlib.import_module(info.name)
"
  else
    .venv/bin/python -m compileall -q -j 0 .venv/lib/python3.11/site-packages >/dev/null 2>&1
  fi
  w=$(date +%s.%N)
  i1=$( { /usr/bin/time -f "%e" .venv/bin/python -c "import harness.cli, torch" ; } 2>&1 | tail -1)
  i2=$( { /usr/bin/time -f "%e" .venv/bin/python -c "import harness.cli, torch" ; } 2>&1 | tail -1)
  npyc=$(find .venv/lib/python3.11/site-packages -name "*.pyc" | wc -l)
  echo "$side venv+pip-upgrade $(echo "$p - $s" | bc) s, install $(echo "$e - $p" | bc) s, compile step $(echo "$w - $e" | bc) s, first import $i1 s, second $i2 s, pyc files $npyc"
done
