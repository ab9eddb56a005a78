#!/usr/bin/env bash
# retrace benchmarks beside the tools users would pick instead, on loopback, in one command.
#
#   bench/run.sh            full run (about an hour), writes docs/benchmarks.md
#   bench/run.sh --quick    under 10 minutes, 3 runs per cell, writes docs/benchmarks.md
#   bench/run.sh --smoke    under a minute for CI: each harness starts and produces one row;
#                           installs and builds nothing (uses what is built), writes the
#                           report to $BENCH_OUT (default: a temporary file)
#
# Environment: BENCH_ONLY="proxy fidelity recorder rss analyzer sim" (a subset),
# BENCH_RUNS=N (repetitions of every cell; default 5 full, 3 quick, 1 smoke),
# BENCH_PROFILE=release|debug, BENCH_NO_BUILD=1, BENCH_BIN_DIR, RETRACE_BIN, BENCH_OUT,
# BENCH_KEEP=1 (keep the work dir), BENCH_RESULTS_COPY=FILE (the raw results.jsonl).
#
# Peers (nginx, wrk, h2load from Debian; GuideLLM from PyPI in a venv under
# ${RETRACE_CACHE:-$HOME/.cache/retrace}) are installed when missing, except in --smoke,
# where a missing peer is skipped with a message. RETRACE_REQUIRE_BENCH=1 turns every skip
# into a failure. Everything talks to 127.0.0.1 only; every run is bounded in time and
# count; every process started here is stopped on exit (trap).
set -euo pipefail

MODE=full
case "${1:-}" in
  --quick) MODE=quick ;;
  --smoke) MODE=smoke ;;
  "") ;;
  -h|--help) sed -n 2,14p "$0"; exit 0 ;;
  *) echo "usage: bench/run.sh [--quick|--smoke]" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
CACHE=${RETRACE_CACHE:-$HOME/.cache/retrace}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
REQUIRE=${RETRACE_REQUIRE_BENCH:-0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/retrace-bench.XXXXXX")
RESULTS=$WORK/results.jsonl
NOTES=$WORK/notes.txt
: >"$RESULTS"
: >"$NOTES"
START_S=$(date +%s)

# Sizes per mode. RUNS: repetitions of every cell (medians and min–max over them).
case $MODE in
  full)  RUNS=5; WRK_S=10; TTFB_N=2000; FID_S=30; FID_LEVELS="100 500 1000"; FID_RATES="50 100 200 400 800"
         REC_ROWS=10000000; RSS_REQS=1000000; AN_ROWS=100000000; SIM_STREAMS=1000; SIM_TOKENS=500; PROFILE=${BENCH_PROFILE:-release} ;;
  quick) RUNS=3; WRK_S=3;  TTFB_N=300;  FID_S=6;  FID_LEVELS="100 500 1000"; FID_RATES="100 400"
         REC_ROWS=2000000;  RSS_REQS=100000;  AN_ROWS=5000000;   SIM_STREAMS=1000; SIM_TOKENS=200; PROFILE=${BENCH_PROFILE:-release} ;;
  smoke) RUNS=1; WRK_S=1;  TTFB_N=20;   FID_S=2;  FID_LEVELS="10"; FID_RATES="20"
         REC_ROWS=20000;    RSS_REQS=500;     AN_ROWS=20000;     SIM_STREAMS=20;   SIM_TOKENS=20;  PROFILE=${BENCH_PROFILE:-debug} ;;
esac
# More repetitions tighten the medians of noisy cells (the p99s on a shared host).
if [[ -n ${BENCH_RUNS:-} ]]; then
  [[ $BENCH_RUNS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_RUNS must be a positive integer, got '$BENCH_RUNS'" >&2; exit 2; }
  RUNS=$BENCH_RUNS
fi
if [[ $MODE == smoke ]]; then
  OUT_DOC=${BENCH_OUT:-$WORK/benchmarks.md}
else
  OUT_DOC=${BENCH_OUT:-$ROOT/docs/benchmarks.md}
fi
BIN_DIR=${BENCH_BIN_DIR:-$TARGET_DIR/$PROFILE}
RETRACE=${RETRACE_BIN:-$BIN_DIR/retrace}
EX=$BIN_DIR/examples

log() { printf '[bench %4ss] %s\n' "$(( $(date +%s) - START_S ))" "$*" >&2; }
note() { log "$*"; printf '%s\n' "$*" >>"$NOTES"; }
SKIPPED=0
skip() { note "SKIPPED: $*"; SKIPPED=$((SKIPPED + 1)); }

# ---- processes: everything started in the background is recorded and stopped on exit ----
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # Bounded wait, then KILL what is left.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background with output in $WORK/NAME.log; sets PID.
start() {
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
}
# stop PID: SIGTERM, wait (bounded) for it to exit.
stop() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # PORT [SECONDS]
  local i
  for i in $(seq $(( ${2:-30} * 10 ))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
# emit JSON-OBJECT: one result row.
emit() { printf '%s\n' "$1" >>"$RESULTS"; }
# bench_line FILE: the JSON after "BENCH " (our harnesses' marker), or the last JSON line.
bench_line() {
  local l
  l=$(grep -a '^BENCH ' "$1" | tail -1 | sed 's/^BENCH //') || true
  [[ -n $l ]] || l=$(grep -a '^{' "$1" | tail -1) || true
  printf '%s' "$l"
}
# /proc readings: total CPU ticks (utime+stime) and RSS kB of a process and its children.
proc_tree() { echo "$1" $(pgrep -P "$1" 2>/dev/null || true); }
cpu_ticks() { local t=0 p; for p in $(proc_tree "$1"); do
    t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) )); done; echo "$t"; }
rss_kb() { local t=0 p; for p in $(proc_tree "$1"); do
    t=$(( t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0) )); done; echo "$t"; }
CLK_TCK=$(getconf CLK_TCK)
# Two CPUs this process may run on: load tool + upstream/sim on CPU_A, the measured proxy or
# client on CPU_B (the same CPU on a one-CPU machine).
read -r CPU_A CPU_B < <(python3 -c 'import os; c = sorted(os.sched_getaffinity(0)); print(c[0], c[1] if len(c) > 1 else c[0])')

# ---- peers ----
install_peers() {
  local missing=()
  command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v h2load >/dev/null || missing+=(nghttp2-client)
  if ((${#missing[@]})); then
    if [[ $MODE == smoke ]]; then
      note "not installing ${missing[*]} in --smoke"
    elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      log "apt-get install ${missing[*]}"
      timeout 600 apt-get update -qq >/dev/null 2>&1 || true
      DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${missing[@]}" >"$WORK/apt.log" 2>&1 \
        || note "apt-get install ${missing[*]} failed: $(tail -2 "$WORK/apt.log" | tr '\n' ' ')"
    else
      note "cannot install ${missing[*]} (needs root and apt-get)"
    fi
  fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  # GuideLLM in its own venv (no GPU needed: it is an HTTP client).
  GUIDELLM=$CACHE/venv-guidellm/bin/guidellm
  if [[ ! -x $GUIDELLM && $MODE != smoke ]]; then
    log "pip install guidellm into $CACHE/venv-guidellm"
    mkdir -p "$CACHE"
    { python3 -m venv "$CACHE/venv-guidellm" && timeout 900 "$CACHE/venv-guidellm/bin/pip" install -q guidellm; } \
      >"$WORK/pip.log" 2>&1 || note "guidellm did not install: $(tail -2 "$WORK/pip.log" | tr '\n' ' ')"
  fi
  # pyarrow for joining results with the sim's truth file: any python that has it.
  PYARROW=""
  local py
  for py in python3 "$CACHE/venv-guidellm/bin/python" "$CACHE/venv-bench/bin/python"; do
    if "$py" -c 'import pyarrow.parquet' 2>/dev/null; then PYARROW=$py; break; fi
  done
  if [[ -z $PYARROW && $MODE != smoke ]]; then
    { python3 -m venv "$CACHE/venv-bench" && timeout 600 "$CACHE/venv-bench/bin/pip" install -q pyarrow; } \
      >"$WORK/pip-pyarrow.log" 2>&1 && PYARROW=$CACHE/venv-bench/bin/python
  fi
  [[ -n $PYARROW ]] || note "no python with pyarrow: TTFT errors cannot be computed"
}

# ---- build ----
build() {
  if [[ $MODE == smoke || ${BENCH_NO_BUILD:-0} == 1 ]]; then
    log "using the $PROFILE build in $BIN_DIR (nothing is built)"
    return
  fi
  # A release build may already be running (cargo waits on its lock rather than racing).
  log "cargo build --release (retrace + bench examples)"
  (cd "$ROOT" && cargo build --release -q -p retrace \
    && cargo build --release -q -p retrace-sim --example bench_sse --example sim_bench \
    && cargo build --release -q -p retrace-traces --example recorder_bench \
    && cargo build --release -q -p retrace-analyze --example gen_results)
}

have() { # have FILE LABEL: is the built binary there?
  if [[ -x $1 ]]; then return 0; fi
  skip "$2: $1 is not built"
  return 1
}

# ---- 1. proxy overhead ----
WRK_CONNS=32
FIXED_CONNS=10
FIXED_DELAY_MS=10 # 10 connections × (10 ms + latency) ≈ 900–1000 requests/s offered
# Paced streams: bench_sse sends a response's 18 events 1 ms apart (~18 ms a response), so
# a proxy reads and forwards every event on its own, as in front of a model server; 32
# connections ≈ 1,700 requests/s, ~30,000 events/s.
PACED_CONNS=32
PACED_GAP_US=1000
bench_proxy() {
  have "$EX/bench_sse" "proxy overhead (upstream)" || return 0
  have "$RETRACE" "proxy overhead (retrace)" || return 0
  local wrk_ok=1 nginx_ok=1
  command -v wrk >/dev/null || { skip "proxy overhead with wrk: wrk is not installed"; wrk_ok=0; }
  [[ -x $NGINX ]] || { skip "proxy overhead through nginx: nginx is not installed"; nginx_ok=0; }
  local up np rp
  up=$(free_port); np=$(free_port); rp=$(free_port)
  start upstream taskset -c "$CPU_A" "$EX/bench_sse" "127.0.0.1:$up" 16
  local up_pid=$PID
  wait_port "$up" 30 || { skip "upstream did not start: $(tail -3 "$WORK/upstream.log")"; return 0; }
  local ngpid="" rtpid
  if ((nginx_ok)); then
    mkdir -p "$WORK/nginx/tmp"
    sed -e "s#@DIR@#$WORK/nginx#g" -e "s#@PORT@#$np#" -e "s#@UPSTREAM_PORT@#$up#" \
      "$BENCH/nginx.conf.tmpl" >"$WORK/nginx/nginx.conf"
    start nginx taskset -c "$CPU_B" "$NGINX" -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
    ngpid=$PID
    wait_port "$np" 30 || { skip "nginx did not start: $(tail -3 "$WORK/nginx.log" "$WORK/nginx/error.log")"; nginx_ok=0; }
  fi
  # retrace: one event loop on one core, like nginx's one worker; recording on.
  start retrace-proxy taskset -c "$CPU_B" "$RETRACE" proxy --threads 1 \
    --listen "127.0.0.1:$rp" --upstream "http://127.0.0.1:$up" --out "$WORK/recording" --admin off
  rtpid=$PID
  wait_port "$rp" 30 || { skip "retrace proxy did not start: $(tail -3 "$WORK/retrace-proxy.log")"; return 0; }
  CMD_PROXY_UP="taskset -c 0 target/release/examples/bench_sse 127.0.0.1:UP 16"
  CMD_PROXY_RT="taskset -c 1 retrace proxy --threads 1 --listen 127.0.0.1:RP --upstream http://127.0.0.1:UP --out DIR --admin off"
  CMD_PROXY_NG="taskset -c 1 nginx -c bench/nginx.conf.tmpl (worker_processes 1, keepalive 256, proxy_buffering off, proxy_http_version 1.1, access_log off)"
  CMD_PROXY_WRK="taskset -c 0 wrk -t1 -c$WRK_CONNS -d${WRK_S}s --latency -s bench/post.lua http://127.0.0.1:PORT/v1/completions; fixed rate: BENCH_DELAY_MS=$FIXED_DELAY_MS ... -c$FIXED_CONNS; paced streams: BENCH_GAP_US=$PACED_GAP_US ... -c$PACED_CONNS"
  CMD_PROXY_TTFB="bench/ttfb.py PORT $TTFB_N"
  local targets=("direct:$up:$up_pid" "retrace:$rp:$rtpid")
  ((nginx_ok)) && targets+=("nginx:$np:$ngpid")
  local run t name port pid
  for run in $(seq "$RUNS"); do
    for t in "${targets[@]}"; do
      IFS=: read -r name port pid <<<"$t"
      if ((wrk_ok)); then
        local mode
        for mode in max fixed paced; do
          local c0 c1 line conns=$WRK_CONNS shape=()
          case $mode in
            fixed) conns=$FIXED_CONNS; shape=("BENCH_DELAY_MS=$FIXED_DELAY_MS") ;;
            paced) conns=$PACED_CONNS; shape=("BENCH_GAP_US=$PACED_GAP_US") ;;
          esac
          c0=$(cpu_ticks "$pid")
          env "${shape[@]}" timeout $((WRK_S + 30)) taskset -c "$CPU_A" wrk -t1 -c"$conns" -d"${WRK_S}s" --latency \
            -s "$BENCH/post.lua" "http://127.0.0.1:$port/v1/completions" >"$WORK/wrk.out" 2>&1 || true
          c1=$(cpu_ticks "$pid")
          line=$(bench_line "$WORK/wrk.out")
          if [[ -z $line ]]; then note "wrk gave no result for $name/$mode: $(tail -2 "$WORK/wrk.out" | tr '\n' ' ')"; continue; fi
          emit "{\"cmp\":\"proxy\",\"target\":\"$name\",\"mode\":\"$mode\",\"run\":$run,\"cpu_s\":$(awk -v a="$c0" -v b="$c1" -v h="$CLK_TCK" 'BEGIN{printf "%.3f", (b-a)/h}'),\"rss_kb\":$(rss_kb "$pid"),\"wrk\":$line}"
        done
      fi
      if timeout 90 taskset -c "$CPU_A" python3 "$BENCH/ttfb.py" "$port" "$TTFB_N" >"$WORK/ttfb.out" 2>&1; then
        emit "{\"cmp\":\"proxy\",\"target\":\"$name\",\"mode\":\"ttfb\",\"run\":$run,\"ttfb\":$(bench_line "$WORK/ttfb.out")}"
      else
        note "ttfb probe failed for $name: $(tail -2 "$WORK/ttfb.out" | tr '\n' ' ')"
      fi
    done
    log "proxy overhead: run $run/$RUNS done"
  done
  # The recording must hold rows: the comparison is with recording on.
  stop "$rtpid"
  local rec_files
  rec_files=$(find "$WORK/recording" -name '*.parquet' | wc -l)
  emit "{\"cmp\":\"proxy_recording\",\"files\":$rec_files,\"bytes\":$(du -sb "$WORK/recording" | cut -f1)}"
  [[ -n $ngpid ]] && stop "$ngpid"
  stop "$up_pid"
}

# ---- 3b. proxy RSS over many requests (h2load counts requests exactly) ----
bench_proxy_rss() {
  have "$EX/bench_sse" "proxy RSS (upstream)" || return 0
  have "$RETRACE" "proxy RSS" || return 0
  command -v h2load >/dev/null || { skip "proxy RSS over $RSS_REQS requests: h2load is not installed"; return 0; }
  local up rp
  up=$(free_port); rp=$(free_port)
  start upstream2 taskset -c "$CPU_A" "$EX/bench_sse" "127.0.0.1:$up" 16
  local up_pid=$PID
  wait_port "$up" 30 || { skip "upstream did not start"; return 0; }
  start retrace-proxy2 taskset -c "$CPU_B" "$RETRACE" proxy --threads 1 \
    --listen "127.0.0.1:$rp" --upstream "http://127.0.0.1:$up" --out "$WORK/recording2" --admin off
  local rtpid=$PID
  wait_port "$rp" 30 || { skip "retrace proxy did not start"; stop "$up_pid"; return 0; }
  printf '%s' '{"model":"sim-7b","prompt":"benchmark","max_tokens":16,"stream":true}' >"$WORK/body.json"
  local steps=4 i done_reqs=0 t0 t1
  local per=$(( RSS_REQS / steps ))
  emit "{\"cmp\":\"proxy_rss\",\"requests\":0,\"rss_kb\":$(rss_kb "$rtpid")}"
  CMD_RSS="taskset -c 0 h2load --h1 -n $per -c 32 -m 1 -d body.json -H 'content-type: application/json' http://127.0.0.1:RP/v1/completions (× $steps)"
  for i in $(seq $steps); do
    t0=$(date +%s.%N)
    timeout 900 taskset -c "$CPU_A" h2load --h1 -n "$per" -c 32 -m 1 -d "$WORK/body.json" -H 'content-type: application/json' \
      "http://127.0.0.1:$rp/v1/completions" >"$WORK/h2load.out" 2>&1 || true
    t1=$(date +%s.%N)
    local ok
    ok=$(awk '/^requests:/ {for(i=1;i<=NF;i++) if ($(i+1)=="succeeded,") print $i}' "$WORK/h2load.out" | head -1)
    done_reqs=$(( done_reqs + ${ok:-0} ))
    emit "{\"cmp\":\"proxy_rss\",\"requests\":$done_reqs,\"rss_kb\":$(rss_kb "$rtpid"),\"seconds\":$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')}"
  done
  stop "$rtpid"
  local rows
  rows=$(find "$WORK/recording2" -name '*.parquet' -exec du -cb {} + 2>/dev/null | tail -1 | cut -f1)
  emit "{\"cmp\":\"proxy_rss_files\",\"bytes\":${rows:-0}}"
  stop "$up_pid"
}

# ---- 2. load-client fidelity against the sim's truth file ----
make_tokenizer() { # a word-level HF tokenizer over Faker's words, for GuideLLM's synthetic
  # prompts without hub access (its synthetic text is Faker text; one word ≈ one sim token)
  "$CACHE/venv-guidellm/bin/python" - "$1" <<'EOF'
import sys
from faker import Faker
from faker.providers.lorem.en_US import Provider
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
fk = Faker()
fk.seed_instance(0)
words = set()
for _ in range(3000):
    words.update(fk.text(max_nb_chars=2000).replace(".", " . ").replace(",", " , ").split())
for w in Provider.word_list:
    words.update((w, w.capitalize()))
vocab = {"[UNK]": 0}
for w in sorted(words) + list(".,;:!?'\"-()"):
    vocab.setdefault(w, len(vocab))
tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[UNK]").save_pretrained(sys.argv[1])
EOF
}

# start_sim NAME TRUTH: a sim with the default cost model and room for 1,000 streams; sets
# SIM_PID and SIM_PORT (0 when it did not start).
start_sim() {
  SIM_PORT=$(free_port)
  start "$1" taskset -c "$CPU_A" "$RETRACE" sim --listen "127.0.0.1:$SIM_PORT" --truth "$2" --max-num-seqs 1024 --kv-blocks 1000000
  SIM_PID=$PID
  if ! wait_port "$SIM_PORT" 30; then
    note "sim did not start: $(tail -2 "$WORK/$1.log" | tr '\n' ' ')"
    stop "$SIM_PID"; SIM_PORT=0
  fi
}

bench_fidelity() {
  have "$RETRACE" "load-client fidelity" || return 0
  [[ -n ${PYARROW:-} ]] || { skip "load-client fidelity: no python with pyarrow to read the truth file"; return 0; }
  local prompt=128 output=32
  # A synthetic trace of fixed-size requests (same shape as GuideLLM's synthetic data).
  python3 - "$WORK/trace.jsonl" "$prompt" "$output" <<'EOF'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(60000):
        f.write(json.dumps({"timestamp": i * 10, "input_length": int(sys.argv[2]),
                            "output_length": int(sys.argv[3]), "hash_ids": []}) + "\n")
EOF
  "$RETRACE" import "$WORK/trace.jsonl" --format mooncake -o "$WORK/trace.parquet" >"$WORK/import.log" 2>&1 \
    || { skip "fidelity: import failed: $(tail -2 "$WORK/import.log")"; return 0; }
  local gl_ok=1
  if [[ $MODE == smoke ]]; then
    note "--smoke does not run GuideLLM (its worker processes alone take 10–20 s to start)"; gl_ok=0
  elif [[ ! -x ${GUIDELLM:-/nonexistent} ]]; then
    skip "fidelity vs GuideLLM: GuideLLM is not installed (pip install guidellm)"; gl_ok=0
  elif [[ ! -f $CACHE/wordlevel-tokenizer/tokenizer.json ]]; then
    make_tokenizer "$CACHE/wordlevel-tokenizer" >"$WORK/tok.log" 2>&1 \
      || { skip "fidelity vs GuideLLM: making its tokenizer failed: $(tail -2 "$WORK/tok.log")"; gl_ok=0; }
  fi
  local levels_csv
  levels_csv=$(echo "$FID_LEVELS" | tr ' ' ',')
  CMD_FID_SIM="taskset -c 0 retrace sim --listen 127.0.0.1:P --truth truth.parquet --max-num-seqs 1024 --kv-blocks 1000000   # default cost model, speedup 1; a fresh sim per retrace level, one per GuideLLM sweep"
  CMD_FID_RT="taskset -c 1 retrace replay trace.parquet --target http://127.0.0.1:P --out DIR --users N --duration ${FID_S}s --no-tokenize --no-metrics --server-kind sim -q   # trace: $prompt-token prompts, $output output tokens"
  CMD_FID_GL="GUIDELLM__MAX_WORKER_PROCESSES=2 taskset -c 1 guidellm run --backend kind=openai_http,target=http://127.0.0.1:P,model=sim-7b,request_format=/v1/completions --profile kind=concurrent,streams=N --override profile.streams $levels_csv --constraint kind=max_duration,seconds=$FID_S --data kind=synthetic_text,prompt_tokens=$prompt,output_tokens=$output --tokenizer kind=hf_auto,model=wordlevel-tokenizer --output kind=json,path=out.json --disable-console-interactive"
  local run level
  for run in $(seq "$RUNS"); do
    for level in $FID_LEVELS; do
      local dir=$WORK/fid-retrace-$level-$run
      mkdir -p "$dir"
      start_sim "sim-retrace" "$dir/truth.parquet"
      ((SIM_PORT)) || continue
      timeout $((FID_S + 60)) taskset -c "$CPU_B" "$RETRACE" replay "$WORK/trace.parquet" --target "http://127.0.0.1:$SIM_PORT" \
        --out "$dir/out" --users "$level" --duration "${FID_S}s" --no-tokenize --no-metrics --server-kind sim \
        --drain-timeout 30s -q >"$dir/client.log" 2>&1 || note "replay exit $? at $level streams: $(tail -2 "$dir/client.log" | tr '\n' ' ')"
      stop "$SIM_PID" # the truth file is closed on SIGTERM
      local line
      line=$("$PYARROW" "$BENCH/fidelity.py" retrace "$dir" 2>"$dir/join.err" || true)
      if [[ -n $line ]]; then
        emit "{\"cmp\":\"fidelity\",\"tool\":\"retrace\",\"streams\":$level,\"run\":$run,\"r\":$line}"
      else
        note "fidelity join failed for retrace at $level streams: $(tail -2 "$dir/join.err" | tr '\n' ' ')"
      fi
      rm -rf "$dir"
      log "fidelity: retrace at $level streams, run $run/$RUNS done"
    done
    if ((gl_ok)); then
      # GuideLLM starts its worker processes once per level (~10–20 s here), so one sweep
      # over the levels per run, against one sim.
      local dir=$WORK/fid-guidellm-$run first
      mkdir -p "$dir"
      first=${FID_LEVELS%% *}
      start_sim "sim-guidellm" "$dir/truth.parquet"
      ((SIM_PORT)) || continue
      (cd "$dir" && GUIDELLM__MAX_WORKER_PROCESSES=2 timeout $(( (FID_S + 60) * $(wc -w <<<"$FID_LEVELS") + 60 )) \
        taskset -c "$CPU_B" "$GUIDELLM" run \
        --backend "kind=openai_http,target=http://127.0.0.1:$SIM_PORT,model=sim-7b,request_format=/v1/completions" \
        --profile "kind=concurrent,streams=$first" --override profile.streams "$levels_csv" \
        --constraint "kind=max_duration,seconds=$FID_S" \
        --data "kind=synthetic_text,prompt_tokens=$prompt,output_tokens=$output" \
        --tokenizer "kind=hf_auto,model=$CACHE/wordlevel-tokenizer" \
        --output "kind=json,path=$dir/out.json" --disable-console-interactive) >"$dir/client.log" 2>&1 \
        || note "guidellm exit $? (run $run): $(grep -a -E 'Error|error' "$dir/client.log" | tail -2 | tr '\n' ' ')"
      stop "$SIM_PID"
      local l
      while read -r l; do
        [[ -n $l ]] || continue
        level=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["streams"])' "$l")
        emit "{\"cmp\":\"fidelity\",\"tool\":\"guidellm\",\"streams\":$level,\"run\":$run,\"r\":$l}"
      done < <("$PYARROW" "$BENCH/fidelity.py" guidellm "$dir" 2>"$dir/join.err" || true)
      [[ -s $dir/join.err ]] && note "GuideLLM join (run $run): $(tail -1 "$dir/join.err")"
      rm -rf "$dir"
      log "fidelity: GuideLLM sweep $levels_csv, run $run/$RUNS done"
    fi
  done
}

# ---- 2b. highest open-loop rate before send lateness p99 passes 10 ms ----
bench_rates() {
  [[ -n $FID_RATES ]] || return 0
  have "$RETRACE" "rate sweep" || return 0
  [[ -n ${PYARROW:-} && -f $WORK/trace.parquet ]] || { skip "rate sweep: needs pyarrow and the fidelity trace"; return 0; }
  local rates_csv first rate
  rates_csv=$(echo "$FID_RATES" | tr ' ' ',')
  first=${FID_RATES%% *}
  CMD_RATE_RT="taskset -c 1 retrace replay trace.parquet --target http://127.0.0.1:P --out DIR --rate R/s --duration ${FID_S}s --no-tokenize --no-metrics --server-kind sim -q   # R in $rates_csv"
  CMD_RATE_GL="GUIDELLM__MAX_WORKER_PROCESSES=2 taskset -c 1 guidellm run ... --profile kind=constant,rate=R --override profile.rate $rates_csv --constraint kind=max_duration,seconds=$FID_S (otherwise as above)"
  for rate in $FID_RATES; do
    local dir=$WORK/rate-retrace-$rate
    mkdir -p "$dir"
    start_sim "sim-rate" "$dir/truth.parquet"
    ((SIM_PORT)) || continue
    timeout $((FID_S + 60)) taskset -c "$CPU_B" "$RETRACE" replay "$WORK/trace.parquet" --target "http://127.0.0.1:$SIM_PORT" \
      --out "$dir/out" --rate "$rate/s" --duration "${FID_S}s" --no-tokenize --no-metrics --server-kind sim \
      --drain-timeout 30s -q >"$dir/client.log" 2>&1 || true
    stop "$SIM_PID"
    local line
    line=$("$PYARROW" "$BENCH/fidelity.py" retrace "$dir" 2>"$dir/join.err" || true)
    [[ -n $line ]] && emit "{\"cmp\":\"rate\",\"tool\":\"retrace\",\"rate\":$rate,\"r\":$line}"
    rm -rf "$dir"
  done
  log "rate sweep: retrace done"
  if [[ $MODE != smoke && -x ${GUIDELLM:-/nonexistent} && -f $CACHE/wordlevel-tokenizer/tokenizer.json ]]; then
    local dir=$WORK/rate-guidellm
    mkdir -p "$dir"
    start_sim "sim-rate-gl" "$dir/truth.parquet"
    ((SIM_PORT)) || return 0
    (cd "$dir" && GUIDELLM__MAX_WORKER_PROCESSES=2 timeout $(( (FID_S + 60) * $(wc -w <<<"$FID_RATES") + 60 )) \
      taskset -c "$CPU_B" "$GUIDELLM" run \
      --backend "kind=openai_http,target=http://127.0.0.1:$SIM_PORT,model=sim-7b,request_format=/v1/completions" \
      --profile "kind=constant,rate=$first" --override profile.rate "$rates_csv" \
      --constraint "kind=max_duration,seconds=$FID_S" \
      --data "kind=synthetic_text,prompt_tokens=128,output_tokens=32" \
      --tokenizer "kind=hf_auto,model=$CACHE/wordlevel-tokenizer" \
      --output "kind=json,path=$dir/out.json" --disable-console-interactive) >"$dir/client.log" 2>&1 \
      || note "guidellm rate sweep exit $?: $(grep -a -E 'Error|error' "$dir/client.log" | tail -2 | tr '\n' ' ')"
    stop "$SIM_PID"
    local l
    while read -r l; do
      [[ -n $l ]] || continue
      rate=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["rate"])' "$l")
      emit "{\"cmp\":\"rate\",\"tool\":\"guidellm\",\"rate\":$rate,\"r\":$l}"
    done < <("$PYARROW" "$BENCH/fidelity.py" guidellm "$dir" 2>"$dir/join.err" || true)
    rm -rf "$dir"
    log "rate sweep: GuideLLM done"
  fi
}

# ---- 3. recorder ----
bench_recorder() {
  have "$EX/recorder_bench" "recorder" || return 0
  CMD_REC="target/release/examples/recorder_bench --rows $REC_ROWS"
  local run
  for run in $(seq "$RUNS"); do
    (cd "$WORK" && timeout 600 "$EX/recorder_bench" --rows "$REC_ROWS") >"$WORK/rec.out" 2>&1 || true
    local line
    line=$(bench_line "$WORK/rec.out")
    if [[ -n $line ]]; then emit "{\"cmp\":\"recorder\",\"run\":$run,\"r\":$line}"
    else note "recorder_bench gave no result: $(tail -2 "$WORK/rec.out" | tr '\n' ' ')"; fi
  done
}

# ---- 4. analyzer ----
bench_analyzer() {
  have "$EX/gen_results" "analyzer (generator)" || return 0
  have "$RETRACE" "analyzer" || return 0
  [[ -x /usr/bin/time ]] || { skip "analyzer: /usr/bin/time is not installed (apt-get install time)"; return 0; }
  local dir=$WORK/analyze-run
  timeout 1800 "$EX/gen_results" "$dir" "$AN_ROWS" >"$WORK/gen.out" 2>&1 \
    || { note "gen_results failed: $(tail -2 "$WORK/gen.out")"; return 0; }
  CMD_AN="gen_results DIR $AN_ROWS; /usr/bin/time -v retrace analyze DIR --json"
  local run
  for run in $(seq "$RUNS"); do
    local t0 t1
    t0=$(date +%s.%N)
    timeout 1800 /usr/bin/time -v "$RETRACE" analyze "$dir" --json >"$WORK/an.json" 2>"$WORK/an.time" || true
    t1=$(date +%s.%N)
    local rss cpu
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/an.time")
    cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {print u+s}' "$WORK/an.time")
    if [[ -n $rss ]] && grep -q '"summary"' "$WORK/an.json"; then
      emit "{\"cmp\":\"analyzer\",\"run\":$run,\"rows\":$AN_ROWS,\"seconds\":$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}'),\"cpu_s\":$cpu,\"peak_rss_kb\":$rss}"
    else
      note "retrace analyze failed: $(tail -3 "$WORK/an.time" | tr '\n' ' ')"
    fi
  done
  rm -rf "$dir"
}

# ---- 5. sim ----
bench_sim() {
  have "$EX/sim_bench" "sim" || return 0
  CMD_SIM="taskset -c 0 target/release/examples/sim_bench $SIM_STREAMS $SIM_TOKENS"
  local run
  for run in $(seq "$RUNS"); do
    timeout 300 taskset -c "$CPU_A" "$EX/sim_bench" "$SIM_STREAMS" "$SIM_TOKENS" >"$WORK/sim.out" 2>&1 || true
    local line
    line=$(bench_line "$WORK/sim.out")
    if [[ -n $line ]]; then emit "{\"cmp\":\"sim\",\"run\":$run,\"r\":$line}"
    else note "sim_bench gave no result: $(tail -2 "$WORK/sim.out" | tr '\n' ' ')"; fi
  done
}

machine() {
  local cpu
  cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
  printf '{"nproc":%s,"cpu":"%s","load_start":"%s","mem_gib":%s,"kernel":"%s","git":"%s","mode":"%s","date":"%s"}' \
    "$(nproc)" "${cpu:-unknown}" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo)" "$(uname -r)" \
    "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" "$MODE" "$(date -u +%FT%TZ)"
}

main() {
  MACHINE=$(machine)
  install_peers
  local b0
  b0=$(date +%s)
  build
  BUILD_S=$(( $(date +%s) - b0 ))
  START_S=$(date +%s) # benchmark time excludes installs and the build
  local only=${BENCH_ONLY:-proxy fidelity recorder rss analyzer sim}
  [[ " $only " == *" proxy "* ]] && bench_proxy
  [[ " $only " == *" fidelity "* ]] && bench_fidelity
  [[ " $only " == *" fidelity "* ]] && bench_rates
  [[ " $only " == *" recorder "* ]] && bench_recorder
  [[ " $only " == *" rss "* ]] && bench_proxy_rss
  [[ " $only " == *" analyzer "* ]] && bench_analyzer
  [[ " $only " == *" sim "* ]] && bench_sim
  local elapsed=$(( $(date +%s) - START_S ))
  export CMD_PROXY_UP CMD_PROXY_RT CMD_PROXY_NG CMD_PROXY_WRK CMD_PROXY_TTFB CMD_RSS CMD_FID_SIM CMD_FID_RT \
    CMD_FID_GL CMD_RATE_RT CMD_RATE_GL CMD_REC CMD_AN CMD_SIM
  python3 - "$WORK/commands.json" <<'EOF'
import json, os, sys
json.dump({k: v for k, v in os.environ.items() if k.startswith("CMD_")}, open(sys.argv[1], "w"), indent=1)
EOF
  local args=(--results "$RESULTS" --notes "$NOTES" --machine "$MACHINE" --commands "$WORK/commands.json"
    --load-end "$(cut -d' ' -f1-3 /proc/loadavg)" --elapsed "$elapsed" --build-s "$BUILD_S" --mode "$MODE")
  python3 "$BENCH/report.py" "${args[@]}" >"$OUT_DOC.tmp"
  if [[ $MODE != smoke && -z ${BENCH_OUT:-} ]]; then
    # Keep the raw rows beside the report, so it can be re-rendered (bench/last-run/render.sh).
    mkdir -p "$BENCH/last-run"
    rm -f "$BENCH/last-run/findings.md" # it described the previous run
    cp "$RESULTS" "$NOTES" "$WORK/commands.json" "$BENCH/last-run/"
    printf '%s\n' "${args[@]}" | sed -e "s#$WORK/#bench/last-run/#" >"$BENCH/last-run/args.txt"
  fi
  mv "$OUT_DOC.tmp" "$OUT_DOC"
  log "wrote $OUT_DOC ($(wc -l <"$RESULTS") result rows, ${elapsed}s)"
  if [[ ${BENCH_RESULTS_COPY:-} ]]; then cp "$RESULTS" "$BENCH_RESULTS_COPY"; fi
  if [[ $REQUIRE == 1 && $SKIPPED -gt 0 ]]; then
    log "RETRACE_REQUIRE_BENCH=1 and $SKIPPED harness(es) skipped"
    exit 1
  fi
}

main
