#!/usr/bin/env bash
# The fuzz benchmark: each target for SECONDS (default 600, ten minutes) from its seed corpus, or
# until RUNS executions; prints executions, rate, coverage (cov: edges, ft: features), corpus
# size and findings per target.  NOTES.md records the runs.
#   tests/bench/bench_fuzz.sh [SECONDS] [RUNS]
#   e.g. 10M executions each:  tests/bench/bench_fuzz.sh 86400 10000000
cd "$(dirname "$0")/../.."
exec bash ci/fuzz.sh "${1:-600}" "${2:--1}"
