#!/usr/bin/env bash
# Run a command; print its wall time and the machine's busy core-seconds meanwhile (user+nice+system+irq+softirq
# from /proc/stat), to stderr. Unlike `time`, it counts processes the command does not wait for (a fork server's
# children); it also counts anything else the machine runs, so measure on an idle machine.
# usage: benchmarks/busy.sh CMD [ARGS...]
read -r _ u n s _ _ q sq _ < /proc/stat; b0=$((u + n + s + q + sq)); t0=$(date +%s.%N)
"$@"; rc=$?
read -r _ u n s _ _ q sq _ < /proc/stat; b1=$((u + n + s + q + sq)); t1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
echo "WALL $(echo "$t1 - $t0" | bc) s BUSY $(( (b1 - b0) / hz )) core-s rc $rc" >&2
exit $rc
