#!/usr/bin/env bash
# Re-renders docs/benchmarks.md from the raw rows of the last full or --quick run (after a
# change to bench/report.py or bench/notes.md); measures nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mapfile -t args <bench/last-run/args.txt
python3 bench/report.py "${args[@]}" >docs/benchmarks.md.tmp
mv docs/benchmarks.md.tmp docs/benchmarks.md
