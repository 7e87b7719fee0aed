#!/usr/bin/env bash
# venv install A/B, a fresh clone of this checkout per side, one after the other:
#   A  pip byte-compiles (the Makefile before e3697c1)
#   B  pip --no-compile, nothing after it
#   D  pip --no-compile, then compileall's workers over site-packages (the Makefile since e3697c1)
# then `import harness.cli, torch` twice and the .pyc count.  Usage: venv_ab.sh [SIDE ...]   (default: A D)
set -u
repo="$(cd "$(dirname "$0")/../.." && pwd)"
sides="${*:-A D}"
for side in $sides; do
  d=/tmp/venv$side; rm -rf $d; git clone -q "$repo" $d; cd $d
  flags="--no-compile"; [ $side = A ] && flags=""
  s=$(date +%s.%N)
  python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1
  p=$(date +%s.%N)
  .venv/bin/pip install -q $flags -e '.[test]' >/dev/null 2>&1
  e=$(date +%s.%N)
  [ $side = D ] && .venv/bin/python -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)"
  w=$(date +%s.%N)
  i1=$( { /usr/bin/time -f "%e" .venv/bin/python -c "import harness.cli, torch" ; } 2>&1 | tail -1)
  i2=$( { /usr/bin/time -f "%e" .venv/bin/python -c "import harness.cli, torch" ; } 2>&1 | tail -1)
  npyc=$(find .venv/lib/python3.11/site-packages -name "*.pyc" | wc -l)
  echo "$side venv+pip-upgrade $(echo "$p - $s" | bc) s, install $(echo "$e - $p" | bc) s, compile step $(echo "$w - $e" | bc) s, first import $i1 s, second $i2 s, pyc files $npyc"
done
