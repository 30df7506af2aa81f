# Shared by the shell tests: paths, the tiny data shard, an mpirun wrapper.
set -eu
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
BIN="$top_builddir/autosp-train"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/autosp-test.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# Byte-level shard of the shipped English text.
make_shard() {
    python3 "$top_srcdir/scripts/text_to_shard.py" "$top_srcdir/data/english.txt" "$TMP/english.tok" >/dev/null
    echo "$TMP/english.tok"
}

# Skip (exit 77), saying why in the log and on the console (fd 9, see Makefile.am).
skip_test() {
    echo "skipped: $*"
    { echo "  $(basename "$0"): skipped: $*" >&9; } 2>/dev/null || true
    exit 77
}

# A line for the console as well as the log (what a test installs, ...).
say_console() {
    echo "$*"
    { echo "  $(basename "$0"): $*" >&9; } 2>/dev/null || true
}

have_mpirun() { [ -n "${MPIRUN:-}" ] && [ "$MPIRUN" != no ] && command -v "$MPIRUN" >/dev/null 2>&1; }

# mpirun -np N ...: oversubscribed (CI has 2 cores), as root where CI runs.
mpi() {
    np=$1; shift
    extra=""
    [ "$(id -u)" = 0 ] && extra="--allow-run-as-root"
    "$MPIRUN" -np "$np" --oversubscribe $extra -x OMP_NUM_THREADS "$@"
}

# run NAME NP ARGS...: the engine on NP ranks with $CFG and $COMMON, its run
# folder $TMP/${RUN_PREFIX}NAME (RUN_PREFIX defaults to "run-"), every step's
# loss and the first step's gradient in $TMP/NAME.bin (--dump-grads), its
# output in $TMP/NAME.log; a failed run ends the test.
run() {
    name=$1; np=$2; shift 2
    dir="$TMP/${RUN_PREFIX-run-}$name"
    if [ "$np" = 1 ]; then
        "$BIN" "$CFG" $COMMON --set io.run_dir="$dir" --dump-grads "$TMP/$name.bin" "$@" >"$TMP/$name.log" 2>&1
    else
        mpi "$np" "$BIN" "$CFG" $COMMON --set io.run_dir="$dir" --dump-grads "$TMP/$name.bin" "$@" >"$TMP/$name.log" 2>&1
    fi || { echo "FAIL: run $name (np $np) failed:"; cat "$TMP/$name.log"; exit 1; }
}
