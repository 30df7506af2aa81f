#!/bin/sh
# Build the libFuzzer harnesses with clang under AddressSanitizer and UBSan
# and run each for FUZZ_SECONDS (default 20) from its seed corpus in
# tests/fuzz/corpus/NAME (read only; new inputs go to the build folder).
# A crash, leak, UB report or timeout fails the run and leaves the input as
# BUILD/crash-* (reproduce: BUILD/fuzz_NAME BUILD/crash-...).
#
#   tests/fuzz/run.sh [NAME...]      NAME: json safetensors config hf_config shard ckpt_state ckpt_dir run_folder profile
#
# Needs clang with libFuzzer (Debian 12: clang and libclang-rt-14-dev).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${FUZZ_BUILD:-$top/tests/fuzz/build}
CLANG=${CLANG:-clang}
secs=${FUZZ_SECONDS:-20}
names=${*:-json safetensors config hf_config shard ckpt_state ckpt_dir run_folder profile}
mkdir -p "$build/cfg" "$build/obj"
# the harnesses need no MPI and no CUDA: a configuration header of their own
cat >"$build/cfg/autosp_config.h" <<'H'
#define PACKAGE_VERSION "fuzz"
#define ASP_GIT_COMMIT "fuzz"
H
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="-std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter -Wno-unknown-pragmas
        -I$build/cfg -I$top/src -I$top $(pkg-config --cflags yaml-0.1)"
LIBS="$(pkg-config --libs yaml-0.1) -lm"
# the engine's files each harness links, by floor (docs/architecture.md)
EXEC="src/exec/exec.c src/exec/walk.c src/exec/state.c src/exec/optim.c src/exec/tier.c"
PLAN="src/plan/plan.c src/plan/sp.c src/plan/graphcost.c src/plan/sac.c src/plan/memplan.c src/plan/predict.c src/plan/profile.c"
PAR="src/parallel/parallel.c src/parallel/coll_host.c"
sources() {
    case $1 in
        json) echo src/io/json.c src/util.c ;;
        safetensors) echo src/io/safetensors.c src/io/json.c src/util.c ;;
        config) echo src/config.c src/config_keys.c src/util.c ;;
        hf_config) echo src/io/hf.c src/io/safetensors.c src/io/json.c src/config.c src/config_keys.c src/util.c src/model/llama.c $EXEC \
                        src/io/data.c src/cpu/host_optim.c $PLAN $PAR ;;
        shard) echo src/io/data.c src/util.c ;;
        profile) echo src/plan/profile.c src/util.c ;;
        ckpt_state|ckpt_dir) echo src/io/ckpt.c src/io/ckpt_values.c src/config.c src/config_keys.c src/util.c src/model/llama.c $EXEC $PLAN $PAR \
                         src/cpu/cpu_backend.c src/cpu/host_optim.c src/io/data.c ;;
        run_folder) echo src/io/ckpt.c src/io/ckpt_values.c src/io/runlock.c src/config.c src/config_keys.c src/util.c src/model/llama.c $EXEC \
                         $PLAN $PAR src/cpu/cpu_backend.c src/cpu/host_optim.c src/io/data.c ;;
        *) echo "unknown harness '$1' (json safetensors config hf_config shard ckpt_state ckpt_dir run_folder profile)" >&2; exit 2 ;;
    esac
}
status=0
printf '%-12s %8s %10s %8s  %s\n' harness seconds execs corpus result
for n in $names; do
    objs=""
    for s in $(sources "$n"); do
        o="$build/obj/$(echo "$s" | tr / _).o"
        [ "$o" -nt "$top/$s" ] || $CLANG $CFLAGS $SAN -fsanitize=fuzzer-no-link -c "$top/$s" -o "$o"
        objs="$objs $o"
    done
    $CLANG $CFLAGS $SAN -fsanitize=fuzzer "$top/tests/fuzz/fuzz_$n.c" $objs $LIBS -o "$build/fuzz_$n"
    mkdir -p "$build/corpus-$n"
    log="$build/fuzz_$n.log"
    rc=0
    # leaks detected (fast unwinding: nothing here loads and unloads plugins)
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$build/fuzz_$n" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$build/" "$build/corpus-$n" "$top/tests/fuzz/corpus/$n" \
        >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    files=$(ls "$build/corpus-$n" | wc -l)
    if [ $rc = 0 ]; then res=ok; else res="FAILED (status $rc, see $log)"; status=1; fi
    printf '%-12s %8s %10s %8s  %s\n' "$n" "$secs" "${execs:-?}" "$files" "$res"
    [ $rc = 0 ] || grep -E "ERROR|SUMMARY|runtime error|Test unit written" "$log" | head -5 | sed 's/^/    /'
done
exit $status
