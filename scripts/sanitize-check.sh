#!/bin/sh
# The sanitizer pass of CI: a copy of the sources built with AddressSanitizer
# and UBSan (configure --enable-asan, the CPU engine), its unit tests and the
# MPI collective tests run under it (Open MPI's own leaks suppressed by
# tests/lsan.supp, the project's not), then every fuzz harness for
# FUZZ_SECONDS (tests/fuzz/run.sh). Prints a summary table last; exit 1 on any
# failure. The build lives in SAN_BUILD (default: a temporary folder).
#
#   scripts/sanitize-check.sh
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${SAN_BUILD:-$(mktemp -d "${TMPDIR:-/tmp}/asp-asan.XXXXXX")}
mkdir -p "$build/src"
# the working tree as git sees it (tracked and new files, no build outputs)
(cd "$top" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | (cd "$build/src" && tar -xf -)
cd "$build/src"
autoreconf -fi >/dev/null 2>&1
./configure --enable-asan --without-cuda >"$build/configure.log" 2>&1 ||
    { tail -20 "$build/configure.log"; echo "sanitize-check: configure failed"; exit 1; }
make -j"$(nproc 2>/dev/null || echo 2)" >"$build/make.log" 2>&1 || { tail -30 "$build/make.log"; echo "sanitize-check: build failed"; exit 1; }
UNIT="tests/test_config tests/test_safetensors tests/test_hf tests/test_ckpt tests/test_util tests/test_data
      tests/test_model tests/test_cpu_ops tests/test_plan tests/test_plan_walk tests/test_predict tests/test_model_grad tests/test_mpi_coll.sh tests/test_ckpt_fault.sh"
# the slow unwinder: leaks allocated inside Open MPI's plugins (unloaded at exit)
# keep their whole stack, so the suppressions can see they come from libmpi
export ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:malloc_context_size=40:strict_string_checks=1"
export LSAN_OPTIONS="suppressions=$top/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
# time limits of the tests (ours, and Check's per-test timeouts): sanitized code
# runs several times slower, more so on a shared machine
export ASP_TEST_TIME_SCALE=10 CK_TIMEOUT_MULTIPLIER=10
status=0
make -j2 check TESTS="$(echo $UNIT)" >"$build/check.log" 2>&1 || status=1
[ $status = 0 ] || { for t in $UNIT; do grep -l "^FAIL\|^ERROR" "$t.log" >/dev/null 2>&1 && tail -30 "$t.log"; done; cat test-suite.log 2>/dev/null | tail -40; }
count() { v=$(sed -n "s/^# $1: *//p" test-suite.log 2>/dev/null | head -1); echo "${v:-0}"; }
unit="$(count PASS) passed, $(( $(count FAIL) + $(count ERROR) )) failed, $(count SKIP) skipped"
fuzz=0
FUZZ_BUILD="$build/fuzz" "$top/tests/fuzz/run.sh" >"$build/fuzz.log" 2>&1 || fuzz=1
cat "$build/fuzz.log"
fz_ok=$(grep -c '  ok$' "$build/fuzz.log" || true)
fz_bad=$(grep -c 'FAILED' "$build/fuzz.log" || true)
[ $fuzz = 0 ] || [ "$fz_bad" -gt 0 ] || fz_bad=1   # the build of a harness failed
echo
echo "sanitizers (ASan + UBSan, LSan with tests/lsan.supp): unit and MPI tests: $unit"
echo "fuzzers: $fz_ok clean for ${FUZZ_SECONDS:-20} s each, $fz_bad failed"
# one line for .ci/run to add up
echo "sanitize-check: $(( $(count PASS) + fz_ok )) passed, $(( $(count FAIL) + $(count ERROR) + fz_bad )) failed, $(count SKIP) skipped"
[ $status = 0 ] && [ $fuzz = 0 ]
