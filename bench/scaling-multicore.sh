#!/usr/bin/env bash
# Multi-core scaling of capture (run by hand, as root, on a box with more
# cores than the lab machine): 8 generators (`bench gen`, one per veth
# queue) into an 8-queue veth, tcpcopy --capture xdp with 1, 2, 4 and 8
# workers (each worker owns the flows of its queues), then --capture tap
# with 1, 2, 4, 8 and 16 workers (MODES="xdp tap" by default).
# Results: bench/results/SCALING-16CORE.md.
set -u
# BIN: the directory with tcpcopy, intercept and bench (release builds);
# IP: the ip command (on a box without iproute2, a copied one with
# LD_LIBRARY_PATH pointing at its libraries).
D=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}; IP=${IP:-ip}
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
# Only what this script started is stopped: its own processes by pid, its
# own namespaces (tcl-gen, tcl-cap, made here; it refuses to start if they
# exist already).
PIDS=(); MADE=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null; done; sleep 1
  for n in "${MADE[@]}"; do $IP netns del "$n" 2>/dev/null; done
}
trap cleanup EXIT
for n in tcl-gen tcl-cap; do
  $IP netns add $n || { echo "namespace $n exists: not ours, left alone" >&2; exit 1; }
  MADE+=($n)
done
$IP link add g0 netns tcl-gen numrxqueues 8 numtxqueues 8 type veth peer name c0 netns tcl-cap numrxqueues 8 numtxqueues 8
$IP -n tcl-gen addr add 10.1.0.1/24 dev g0; $IP -n tcl-cap addr add 10.1.0.2/24 dev c0
for n in tcl-gen tcl-cap; do $IP -n $n link set lo up; done
$IP -n tcl-gen link set g0 up; $IP -n tcl-cap link set c0 up
$IP netns exec tcl-cap $D/intercept -i lo -F 'tcp and src port 8080' -b 127.0.0.1 2>$OUT/intercept.log &
PIDS+=($!)
sleep 1.5
RATE=${RATE:-2000000}
# Tap: the generators address a host the capture side does not have (a
# static neighbour entry gives its MAC), so the tapped frames are dropped
# by the capture side's stack instead of answered with resets.
C0MAC=$($IP -n tcl-cap -br link show c0 | awk '{print $3}')
$IP -n tcl-gen neigh add 10.1.0.9 lladdr $C0MAC dev g0
run() { # MODE WORKERS DST
  local M=$1 W=$2 DST=$3
  $IP netns exec tcl-cap env RUST_LOG=info $D/tcpcopy -s 127.0.0.1 -x 80-10.9.0.1:8080 --capture $M -i c0 --workers $W --stats-interval 60 2>$OUT/tcpcopy-$M-$W.log &
  TP=$!; PIDS+=($TP)
  sleep 2.5
  rx0=$($IP netns exec tcl-cap cat /sys/class/net/c0/statistics/rx_packets)
  GP=()
  for q in 0 1 2 3 4 5 6 7; do
    $IP netns exec tcl-gen $D/bench gen g0 10.1.0.1 $DST $RATE 3 $q > $OUT/gen-$M-$W-$q.log 2>&1 &
    GP+=($!)
  done
  wait "${GP[@]}"
  sleep 1.5
  rx1=$($IP netns exec tcl-cap cat /sys/class/net/c0/statistics/rx_packets)
  # tcpcopy's CPU seconds (user + system) over the whole run.
  cpu=$(awk -v hz=$(getconf CLK_TCK) '{printf "%.2f", ($14+$15)/hz}' /proc/$TP/stat)
  kill -INT $TP; wait $TP
  sent=$(cat $OUT/gen-$M-$W-*.log | awk '/^sent/ {s+=$2} END {print s}')
  secs=$(cat $OUT/gen-$M-$W-*.log | awk '/^sent/ {if ($4>m) m=$4} END {print m}')
  cap=$(grep -o '^[0-9]* segments captured' $OUT/tcpcopy-$M-$W.log | awk '{print $1}')
  drop=$(grep -E 'xsk_kernel_dropped' $OUT/tcpcopy-$M-$W.log | awk '{print $2}')
  steered=$(grep -E '^ *steered_to_owner' $OUT/tcpcopy-$M-$W.log | awk '{print $2}')
  echo "mode=$M workers=$W sent=$sent gen_secs=$secs arrived=$((rx1-rx0)) captured=$cap xsk_dropped=${drop:-0} steered=${steered:-0} tcpcopy_cpu_s=$cpu"
  grep -E "steered_to_owner|steer_queue_full|^  kernel|queues=" $OUT/tcpcopy-$M-$W.log
}
for M in ${MODES:-xdp tap}; do
  case $M in
    xdp) for W in 1 2 4 8; do run xdp $W 10.1.0.2; done ;;
    tap) for W in 1 2 4 8 16; do run tap $W 10.1.0.9; done ;;
  esac
done
