#!/usr/bin/env bash
# Instructions per proxied request, under callgrind: steady where wall-clock CPU is not
# (a shared host). Needs valgrind and wrk, and release builds of the proxy and upstream:
#   cargo build --release --bin retrace && cargo build --release -p retrace-sim --example bench_sse
#   bench/proxy_instructions.sh [SECONDS]        (default 10; prints one line)
# The proxy runs with --threads 1 and recording on, in front of bench_sse (16 events a
# response); wrk keeps 8 connections busy. Counters are zeroed after a 2 s warm-up, so
# start-up is not counted; every thread (the recorder's encoding too) is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-10}
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done; return 1; }
up=$(free_port); rp=$(free_port)
target/release/examples/bench_sse "127.0.0.1:$up" 16 >"$work/up.log" 2>&1 & pids+=($!)
wait_port "$up"
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" target/release/retrace proxy \
  --threads 1 --listen "127.0.0.1:$rp" --upstream "http://127.0.0.1:$up" --out "$work/rec" \
  --admin off >"$work/proxy.log" 2>&1 & vg=$!; pids+=("$vg")
wait_port "$rp"
wrk -t1 -c8 -d2s -s bench/post.lua "http://127.0.0.1:$rp/v1/completions" >/dev/null
callgrind_control -z "$vg" >/dev/null 2>&1
wrk -t1 -c8 -d"${secs}s" -s bench/post.lua "http://127.0.0.1:$rp/v1/completions" >"$work/wrk.out"
callgrind_control -d "$vg" >/dev/null 2>&1
sleep 1
requests=$(grep -o '"requests":[0-9]*' "$work/wrk.out" | cut -d: -f2)
instructions=$(grep -m1 '^summary:' "$work"/cg.out.* | awk '{print $2}')
echo "requests=$requests instructions=$instructions instructions_per_request=$((instructions / requests))"
