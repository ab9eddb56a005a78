#!/usr/bin/env bash
# Proxy soak: REQUESTS (default 1,000,000) small streaming requests through the release
# `retrace proxy` to a zero-cost-ish `retrace sim` (--speedup 1000: a 4-token request costs
# ~30 µs of engine time), driven by wrk over loopback. Samples the proxy's RSS and open
# file descriptors every second into a CSV, then checks that every request the proxy
# received became a row (`retrace inspect --json`) and that fds and RSS stayed flat.
#
#   bench/proxy_soak.sh [REQUESTS]
#
# Env: RETRACE_BIN (default target/release/retrace), SOAK_DIR (output; default a new
# temp dir), SOAK_CONNECTIONS (64), SOAK_THREADS (2), SOAK_MAX_SECONDS (1800: wrk is
# stopped after this long whatever the count), SOAK_PROXY_ARGS (extra `retrace proxy`
# options, e.g. "--rotate-age 5s"). Needs wrk, curl, python3.
# Writes SOAK_DIR/samples.csv (elapsed_s,rss_kib,fds,requests_received,rows_written),
# SOAK_DIR/summary.json and the recording in SOAK_DIR/out/. Exit 1 if a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${1:-1000000}
BIN=${RETRACE_BIN:-target/release/retrace}
DIR=${SOAK_DIR:-$(mktemp -d /tmp/retrace-soak.XXXXXX)}
CONNECTIONS=${SOAK_CONNECTIONS:-64}
THREADS=${SOAK_THREADS:-2}
MAX_SECONDS=${SOAK_MAX_SECONDS:-1800}
[[ -x $BIN ]] || { echo "no $BIN: cargo build --release -p retrace" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk not found (apt-get install -y wrk)" >&2; exit 2; }
mkdir -p "$DIR/out"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SIM_PORT=$(free_port); PROXY_PORT=$(free_port); ADMIN_PORT=$(free_port)

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

"$BIN" sim --listen "127.0.0.1:$SIM_PORT" --speedup 1000 2>"$DIR/sim.log" &
pids+=($!)
"$BIN" proxy --listen "127.0.0.1:$PROXY_PORT" --admin "127.0.0.1:$ADMIN_PORT" \
  --upstream "http://127.0.0.1:$SIM_PORT" --out "$DIR/out" ${SOAK_PROXY_ARGS:-} 2>"$DIR/proxy.log" &
PROXY_PID=$!
pids+=($PROXY_PID)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$ADMIN_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
# One request through, so the sample before load is of a proxy that has served traffic.
curl -sf -o /dev/null -H 'content-type: application/json' \
  -d '{"model":"sim-7b","prompt":"warm","max_tokens":4,"stream":true}' \
  "http://127.0.0.1:$PROXY_PORT/v1/completions"

metric() { curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v m="$1" '$1==m {print $2}'; }
sample() {
  local rss fds
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PROXY_PID/status")
  fds=$(ls "/proc/$PROXY_PID/fd" | wc -l)
  echo "$1,$rss,$fds,$(metric retrace_proxy_requests_received_total),$(metric retrace_proxy_rows_written_total)"
}
echo "elapsed_s,rss_kib,fds,requests_received,rows_written" >"$DIR/samples.csv"
start=$(date +%s)
before=$(sample 0)
(
  while kill -0 "$PROXY_PID" 2>/dev/null; do
    sample $(( $(date +%s) - start )) >>"$DIR/samples.csv" || true
    sleep 1
  done
) &
SAMPLER=$!
pids+=($SAMPLER)

echo "soak: $REQUESTS requests, $CONNECTIONS connections, out $DIR" >&2
SOAK_REQUESTS=$REQUESTS SOAK_THREADS=$THREADS wrk -t "$THREADS" -c "$CONNECTIONS" \
  -d "${MAX_SECONDS}s" --timeout 10s -s bench/proxy_soak.lua \
  "http://127.0.0.1:$PROXY_PORT/v1/completions" >"$DIR/wrk.txt" &
WRK=$!
# wrk's main thread sleeps for the whole -d even after every thread has stopped itself
# (the Lua script stops each after its share); SIGINT ends it early with its summary.
while kill -0 "$WRK" 2>/dev/null; do
  got=$(metric retrace_proxy_requests_received_total)
  if [[ -n $got && $got -gt $REQUESTS ]]; then
    sleep 1
    kill -INT "$WRK" 2>/dev/null || true
    break
  fi
  sleep 0.5
done
wait "$WRK" || true
cat "$DIR/wrk.txt" >&2
# Idle: wrk's connections are closed and the upstream pool's idle ones expire (4 s).
sleep 7
after_idle=$(sample $(( $(date +%s) - start )))
received=$(metric retrace_proxy_requests_received_total)
kill -TERM "$PROXY_PID"
wait "$PROXY_PID" || { echo "proxy exited non-zero" >&2; exit 1; }
kill "$SAMPLER" 2>/dev/null || true

rows=$("$BIN" inspect --json "$DIR/out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rows"])')
python3 - "$DIR" "$received" "$rows" "$before" "$after_idle" <<'PY'
import csv, json, sys
d, received, rows, before, after = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
wrk = json.loads(next(l for l in open(f"{d}/wrk.txt") if l.startswith("SOAK "))[5:])
samples = [r for r in csv.DictReader(open(f"{d}/samples.csv")) if r["rss_kib"]]
busy = [r for r in samples if r["requests_received"] and int(r["requests_received"]) > 1]
# Warm-up: the first tenth of the run (allocator arenas, buffers, connection pool).
warm = [r for r in busy if int(r["requests_received"]) >= received // 10] or busy or samples
rss_warm = int(warm[0]["rss_kib"]); rss_max = max(int(r["rss_kib"]) for r in warm)
fds_before = int(before.split(",")[2]); fds_after = int(after.split(",")[2])
summary = {
    "responses": wrk["responses"], "non_200": wrk["non_200"], "socket_errors": wrk["socket_errors"],
    "seconds": wrk["seconds"], "requests_received": received, "rows": rows,
    "rss_kib_before": int(before.split(",")[1]), "rss_kib_after_warmup": rss_warm,
    "rss_kib_max": rss_max, "rss_kib_end": int(after.split(",")[1]),
    "fds_before": fds_before, "fds_max": max(int(r["fds"]) for r in samples), "fds_after": fds_after,
}
json.dump(summary, open(f"{d}/summary.json", "w"), indent=1)
print(json.dumps(summary))
problems = []
if rows != received: problems.append(f"rows {rows} != requests received {received}")
if wrk["non_200"]: problems.append(f"{wrk['non_200']} non-200 responses")
if not (wrk["responses"] <= rows <= wrk["responses"] + 1 + 4 * 64 + 1000):
    problems.append(f"rows {rows} vs responses {wrk['responses']}")
if fds_after > fds_before + 5: problems.append(f"fds grew {fds_before} -> {fds_after}")
if rss_max - rss_warm > 50 * 1024: problems.append(f"RSS grew {rss_warm} -> {rss_max} KiB after warm-up")
for p in problems: print("FAIL:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
