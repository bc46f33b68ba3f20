#!/usr/bin/env bash
# Every benchmark, in the benchmark environment. Extra arguments go to each script
# (e.g. --quick for a smoke run). Results are appended to benchmarks/results/*.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
bash benchmarks/setup_bench.sh
PY=.venv-bench/bin/python
for b in b5_flops b1_loop_overhead b4_cache b3_vision b2_text; do
  echo "=== $b $* (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  "$PY" "benchmarks/$b.py" "$@"
done
