#!/bin/bash
# usage: scripts/planning-cpu.sh BATON N...   — coordinator CPU seconds to run an N-noop-task package
B=$1; shift
D=$(mktemp -d /tmp/baton-planning.XXXX)
PORT=$((20000 + RANDOM % 20000))
$B coordinator --insecure --listen 127.0.0.1:$PORT --data-dir $D/data >$D/log 2>&1 &
CP=$!
for i in $(seq 50); do grep -q "listening" $D/log 2>/dev/null && break; sleep 0.2; done
tck=$(getconf CLK_TCK)
cpu() { awk -v t=$tck '{print ($14+$15)/t}' /proc/$CP/stat; }
for n in "$@"; do
  python3 - $n $D/p$n.toml <<'PY'
import sys
n=int(sys.argv[1])
with open(sys.argv[2],"w") as f:
    f.write("name='big'\n")
    for i in range(n):
        f.write(f"[tasks.t{i:05}]\nnoop=true\n")
PY
  before=$(cpu); t0=$(date +%s.%N)
  out=$(BATON_COORDINATOR=http://127.0.0.1:$PORT timeout 600 $B run $D/p$n.toml --wait 2>&1 | tail -1)
  t1=$(date +%s.%N); after=$(cpu)
  echo "N=$n coordinator_cpu_s=$(echo "$after - $before" | bc) wall_s=$(echo "$t1 - $t0" | bc) :: $out"
done
kill $CP; wait $CP 2>/dev/null; rm -rf $D
