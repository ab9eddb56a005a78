#!/usr/bin/env bash
# Instructions per proxied request under callgrind, retrace beside nginx: steady where
# wall-clock CPU is not (a shared host). Needs valgrind and wrk, nginx for the peer line,
# and release builds of the proxy and upstream:
#   cargo build --release --bin retrace && cargo build --release -p retrace-sim --example bench_sse
#   bench/proxy_instructions.sh [SECONDS]        (default 10; one line per proxy, then the ratios)
# retrace runs with --threads 1 and recording on; nginx with bench/nginx.conf.tmpl and
# `master_process off` (its one worker is the process callgrind counts), once as configured
# there (no access log) and once writing a buffered JSON access log. All sit in front
# of bench_sse (16 events a response); wrk keeps 8 connections busy. Counters are zeroed
# after a 2 s warm-up, so start-up is not counted; every thread (retrace's recorder's
# encoding too) is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-10}
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done; return 1; }
up=$(free_port)
target/release/examples/bench_sse "127.0.0.1:$up" 16 >"$work/up.log" 2>&1 & pids+=($!)
wait_port "$up"

# Runs callgrind on "$@" (a proxy listening on $port), prints "NAME requests=… instructions=…
# instructions_per_request=…", and leaves the count in $per_request.
measure() {
  local name=$1 port=$2; shift 2
  valgrind --tool=callgrind --callgrind-out-file="$work/cg-$name.out" "$@" \
    >"$work/$name.log" 2>&1 & local vg=$!; pids+=("$vg")
  wait_port "$port"
  wrk -t1 -c8 -d2s -s bench/post.lua "http://127.0.0.1:$port/v1/completions" >/dev/null
  callgrind_control -z "$vg" >/dev/null 2>&1
  wrk -t1 -c8 -d"${secs}s" -s bench/post.lua "http://127.0.0.1:$port/v1/completions" >"$work/wrk-$name.out"
  callgrind_control -d "$vg" >/dev/null 2>&1
  sleep 1
  kill "$vg" 2>/dev/null || true
  wait "$vg" 2>/dev/null || true
  local requests instructions
  requests=$(grep -o '"requests":[0-9]*' "$work/wrk-$name.out" | cut -d: -f2)
  instructions=$(cat "$work"/cg-"$name".out.* | awk '/^summary:/ {s += $2} END {print s}')
  per_request=$((instructions / requests))
  echo "$name requests=$requests instructions=$instructions instructions_per_request=$per_request"
}

rp=$(free_port)
measure retrace "$rp" target/release/retrace proxy --threads 1 --listen "127.0.0.1:$rp" \
  --upstream "http://127.0.0.1:$up" --out "$work/rec" --admin off
retrace_per_request=$per_request

nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
if [[ -x $nginx_bin ]]; then
  np=$(free_port)
  mkdir -p "$work/nginx/tmp"
  sed -e "s#@DIR@#$work/nginx#g" -e "s#@PORT@#$np#" -e "s#@UPSTREAM_PORT@#$up#" \
    bench/nginx.conf.tmpl >"$work/nginx/nginx.conf"
  measure nginx "$np" "$nginx_bin" -g 'master_process off;' -e "$work/nginx/error.log" \
    -p "$work/nginx" -c "$work/nginx/nginx.conf"
  awk -v a="$retrace_per_request" -v b="$per_request" \
    'BEGIN {printf "retrace / nginx instructions per request: %.2fx\n", a / b}'
  # nginx doing the nearest thing it can to recording: a JSON access log line a request
  # (times, status, sizes, the upstream's head and response times), buffered as its docs
  # advise for busy servers. retrace records more (tokens, TTFT, chunk gaps, prefix hashes).
  np=$(free_port)
  log_line='{"msec":$msec,"method":"$request_method","uri":"$uri","status":$status,'
  log_line+='"request_length":$request_length,"bytes_sent":$bytes_sent,"request_time":$request_time,'
  log_line+='"upstream_connect_time":"$upstream_connect_time","upstream_header_time":"$upstream_header_time",'
  log_line+='"upstream_response_time":"$upstream_response_time","upstream_status":"$upstream_status"}'
  logging="log_format shape escape=json '$log_line'; access_log $work/nginx/access.log shape buffer=64k flush=1s;"
  sed -e "s#@DIR@#$work/nginx#g" -e "s#@PORT@#$np#" -e "s#@UPSTREAM_PORT@#$up#" \
    -e "s#access_log off;#${logging//#/\\#}#" bench/nginx.conf.tmpl >"$work/nginx/nginx-log.conf"
  measure nginx-access-log "$np" "$nginx_bin" -g 'master_process off;' -e "$work/nginx/error.log" \
    -p "$work/nginx" -c "$work/nginx/nginx-log.conf"
  [[ -s $work/nginx/access.log ]] || { echo "nginx wrote no access log" >&2; exit 1; }
  awk -v a="$retrace_per_request" -v b="$per_request" \
    'BEGIN {printf "retrace / nginx-access-log instructions per request: %.2fx\n", a / b}'
else
  echo "nginx not installed: no peer line"
fi
