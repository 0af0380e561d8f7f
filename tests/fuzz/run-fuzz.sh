#!/bin/sh
# Run one libFuzzer target for a bounded time (the CTest test of tests/fuzz).
#   run-fuzz.sh BINARY SECONDS WORK_CORPUS ARTIFACT_PREFIX DICT SEED_CORPUS
# $PORTPROXY_FUZZ_SECONDS, when set, overrides SECONDS. New inputs go to
# WORK_CORPUS (the seed corpus is only read); a crash, leak or broken
# invariant is saved as ARTIFACT_PREFIX<kind>-<sha1> and fails the test
# (libFuzzer exits non-zero). Reproduce with: BINARY that-file
set -eu
bin=$1 secs=${PORTPROXY_FUZZ_SECONDS:-$2} work=$3 prefix=$4 dict=$5 seeds=$6
mkdir -p "$work" "$(dirname "$prefix")"
set -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=1024 \
	-print_final_stats=1 -artifact_prefix="$prefix"
[ -f "$dict" ] && set -- "$@" -dict="$dict"
echo "fuzzing $(basename "$bin") for $secs s from $seeds" >&2
exec "$bin" "$@" "$work" "$seeds"
