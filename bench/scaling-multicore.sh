#!/usr/bin/env bash
# Multi-core scaling of AF_XDP capture (run by hand, as root, on a box with
# more cores than the lab machine): 8 generators (`bench gen`, one per veth
# queue) into an 8-queue veth, tcpcopy --capture xdp with 1, 2, 4 and 8
# workers. Results: bench/results/SCALING-16CORE.md.
set -u
# BIN: the directory with tcpcopy, intercept and bench (release builds);
# IP: the ip command (on a box without iproute2, a copied one with
# LD_LIBRARY_PATH pointing at its libraries).
D=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}; IP=${IP:-ip}
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
cleanup() { pkill -INT -f "$D/tcpcopy" 2>/dev/null; pkill -INT -f "$D/intercept" 2>/dev/null; sleep 1; $IP netns del gen 2>/dev/null; $IP netns del cap 2>/dev/null; }
trap cleanup EXIT
cleanup
$IP netns add gen && $IP netns add cap
$IP link add g0 netns gen numrxqueues 8 numtxqueues 8 type veth peer name c0 netns cap numrxqueues 8 numtxqueues 8
$IP -n gen addr add 10.1.0.1/24 dev g0; $IP -n cap addr add 10.1.0.2/24 dev c0
for n in gen cap; do $IP -n $n link set lo up; done
$IP -n gen link set g0 up; $IP -n cap link set c0 up
$IP netns exec cap $D/intercept -i lo -F 'tcp and src port 8080' -b 127.0.0.1 2>$OUT/intercept.log &
sleep 1.5
RATE=${RATE:-2000000}
for W in 1 2 4 8; do
  $IP netns exec cap env RUST_LOG=info $D/tcpcopy -s 127.0.0.1 -x 80-10.9.0.1:8080 --capture xdp -i c0 --workers $W --stats-interval 60 2>$OUT/tcpcopy-$W.log &
  TP=$!
  sleep 2.5
  rx0=$($IP netns exec cap cat /sys/class/net/c0/statistics/rx_packets)
  GP=()
  for q in 0 1 2 3 4 5 6 7; do
    $IP netns exec gen $D/bench gen g0 10.1.0.1 10.1.0.2 $RATE 3 $q > $OUT/gen-$W-$q.log 2>&1 &
    GP+=($!)
  done
  wait "${GP[@]}"
  sleep 1.5
  rx1=$($IP netns exec cap cat /sys/class/net/c0/statistics/rx_packets)
  kill -INT $TP; wait $TP
  sent=$(cat $OUT/gen-$W-*.log | awk '/^sent/ {s+=$2} END {print s}')
  secs=$(cat $OUT/gen-$W-*.log | awk '/^sent/ {if ($4>m) m=$4} END {print m}')
  cap=$(grep -o '^[0-9]* segments captured' $OUT/tcpcopy-$W.log | awk '{print $1}')
  drop=$(grep -E 'xsk_kernel_dropped' $OUT/tcpcopy-$W.log | awk '{print $2}')
  echo "workers=$W sent=$sent gen_secs=$secs arrived=$((rx1-rx0)) captured=$cap xsk_dropped=${drop:-0}"
  grep -E "steered_to_owner|steer_queue_full|queues=" $OUT/tcpcopy-$W.log
done
