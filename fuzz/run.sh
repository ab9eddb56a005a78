#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time each (default 30 s) and fails on the
# first crash (libFuzzer exits non-zero and leaves the input in fuzz/artifacts/<target>/).
#   fuzz/run.sh [SECONDS] [TARGET...]
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain: the address
# sanitizer and libFuzzer's instrumentation use unstable rustc flags. Where only stable is
# installed, RUSTC_BOOTSTRAP=1 lets stable accept them (set RETRACE_FUZZ_TOOLCHAIN=stable).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
toolchain="${RETRACE_FUZZ_TOOLCHAIN:-nightly}"
if [ "$toolchain" = stable ]; then
    export RUSTC_BOOTSTRAP=1
    cargo_cmd=(cargo)
else
    cargo_cmd=(cargo "+$toolchain")
fi
"${cargo_cmd[@]}" fuzz build -O
failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== $target: ${seconds}s"
    # -rss_limit_mb: the importers hold whole files; -max_len: inputs up to 64 KiB.
    if ! "${cargo_cmd[@]}" fuzz run -O "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
        2>&1 | tail -n 25; then
        failed+=("$target")
    fi
done
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: no crash in ${#targets[@]} targets, ${seconds}s each"
