#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time each (default 30 s) and fails on the
# first crash (libFuzzer exits non-zero and leaves the input in fuzz/artifacts/<target>/).
#   fuzz/run.sh [SECONDS] [TARGET...]
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`).
#
# Two builds (RETRACE_FUZZ_MODE):
# - `deep` (default): nightly toolchain, optimised, address sanitizer. The longer run for
#   bench/ and for hunting; its first build takes ~20 min on 2 cores.
# - `ci`: the default (stable) toolchain, an unoptimised build (debug assertions and overflow checks
#   on, so arithmetic overflows are found too) without a sanitizer: all our crates forbid
#   `unsafe`, so the sanitizer mostly guards dependencies. Builds in ~4-5 min on 2 cores;
#   ~2,000 inputs/s per target. libFuzzer's coverage instrumentation uses rustc flags that
#   stable accepts only with RUSTC_BOOTSTRAP=1, which this mode sets.
# Env: RETRACE_FUZZ_MODE (deep|ci), RETRACE_FUZZ_TOOLCHAIN (deep mode; default nightly),
# CARGO_TARGET_DIR (where the fuzz build goes; default fuzz/target).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
shift || true
targets=("$@")
mode="${RETRACE_FUZZ_MODE:-deep}"
case "$mode" in
  ci)
    # The default toolchain, whatever rustup calls it (a CI machine may have only one).
    export RUSTC_BOOTSTRAP=1
    cargo_cmd=(cargo)
    build_flags=(--dev --sanitizer none)
    ;;
  deep)
    toolchain="${RETRACE_FUZZ_TOOLCHAIN:-nightly}"
    if [ "$toolchain" = stable ]; then
      export RUSTC_BOOTSTRAP=1
    fi
    cargo_cmd=(cargo "+$toolchain")
    build_flags=(-O)
    ;;
  *) echo "RETRACE_FUZZ_MODE must be ci or deep, not '$mode'" >&2; exit 2 ;;
esac
# rustup's `+toolchain` needs rustup; a plain cargo is the only toolchain otherwise.
if ! command -v rustup >/dev/null 2>&1; then
  cargo_cmd=(cargo)
fi
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <("${cargo_cmd[@]}" fuzz list)
fi
"${cargo_cmd[@]}" fuzz build "${build_flags[@]}"
failed=()
for target in "${targets[@]}"; do
  # The seeds are tracked; what libFuzzer adds goes to a scratch corpus beside them.
  scratch="corpus/$target"
  mkdir -p "$scratch"
  echo "== $target: ${seconds}s ($mode)"
  # -rss_limit_mb: the importers hold whole files; -max_len: inputs up to 64 KiB.
  if ! "${cargo_cmd[@]}" fuzz run "${build_flags[@]}" "$target" "$scratch" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
    2>&1 | tail -n 8; then
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: no crash in ${#targets[@]} targets, ${seconds}s each ($mode)"
