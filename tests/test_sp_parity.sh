#!/bin/sh
# Sequence parallelism, data parallelism, ZeRO-1 and every SAC policy are
# exact rewrites of the single-rank program: the loss and every parameter's
# gradient after the first step, and the losses of the first 3 optimizer
# steps, agree with the single-rank run to 1e-5 (fp32 CPU engine).
. "${top_srcdir:-.}/tests/common.sh"
have_mpirun || { echo "no mpirun: skipped"; exit 77; }
SHARD=$(make_shard)
CFG="$top_srcdir/configs/tiny.yaml"
TOL=1e-5
# Small and fast: 2 layers, 3 steps. tiny has 4 query heads and 2 KV heads,
# so SP = 4 replicates each KV head on two ranks.
COMMON="--set data.path=$SHARD --set train.steps=3 --set model.num_hidden_layers=2 --set io.log_every=1000"
fails=0

run() { # name np args...
    name=$1; np=$2; shift 2
    if [ "$np" = 1 ]; then
        "$BIN" "$CFG" $COMMON --set io.run_dir="$TMP/run-$name" --dump-grads "$TMP/$name.bin" "$@" >"$TMP/$name.log" 2>&1
    else
        mpi "$np" "$BIN" "$CFG" $COMMON --set io.run_dir="$TMP/run-$name" --dump-grads "$TMP/$name.bin" "$@" >"$TMP/$name.log" 2>&1
    fi || { echo "FAIL: run $name (np $np) failed:"; cat "$TMP/$name.log"; exit 1; }
}

check() { # what ref other
    if "$top_builddir/tests/dump_compare" "$CFG" "$TMP/$2.bin" "$TMP/$3.bin" $TOL model.num_hidden_layers=2 >"$TMP/cmp-$3.log" 2>&1; then
        echo "ok:   $1 ($(tail -1 "$TMP/cmp-$3.log"))"
    else
        echo "FAIL: $1"; cat "$TMP/cmp-$3.log"; fails=$((fails + 1))
    fi
}

B4="--set train.global_batch_size=4"
run ref 1 $B4 --set train.seq_len=64
run sp2 2 $B4 --set train.seq_len=64 --set parallel.sequence_parallel_size=2
check "SP=2 equals SP=1" ref sp2
run sp4 4 $B4 --set train.seq_len=64 --set parallel.sequence_parallel_size=4
check "SP=4 (KV heads replicated) equals SP=1" ref sp4
run dp2 2 $B4 --set train.seq_len=64 --set parallel.sequence_parallel_size=1
check "DP=2 equals DP=1 (same global batch)" ref dp2
run sp2dp2 4 $B4 --set train.seq_len=64 --set parallel.sequence_parallel_size=2
check "SP=2 x DP=2 equals SP=1 x DP=1" ref sp2dp2
run zero0 2 $B4 --set train.seq_len=64 --set parallel.sequence_parallel_size=2 --set parallel.zero_stage=0
check "ZeRO-0 equals ZeRO-1" sp2 zero0

# S not divisible by P: padded and masked, never truncated.
run ref63 1 $B4 --set train.seq_len=63
run sp2_63 2 $B4 --set train.seq_len=63 --set parallel.sequence_parallel_size=2
check "S=63 on SP=2 (padded) equals SP=1" ref63 sp2_63
run sp4_63 4 $B4 --set train.seq_len=63 --set parallel.sequence_parallel_size=4
check "S=63 on SP=4 (padded) equals SP=1" ref63 sp4_63

# Every SAC policy gives the same gradients, alone and under SP.
for pol in save_all full; do
    run "p1_$pol" 1 $B4 --set train.seq_len=64 --set checkpointing.policy=$pol
    check "SAC $pol equals auto (SP=1)" ref "p1_$pol"
    run "p2_$pol" 2 $B4 --set train.seq_len=64 --set checkpointing.policy=$pol --set parallel.sequence_parallel_size=2
    check "SAC $pol equals auto (SP=2)" sp2 "p2_$pol"
done
# A tight budget makes auto drop (recompute) activations; see the plan it chose.
TIGHT="--set checkpointing.memory_budget_gib=${TIGHT_GIB:-0.0062}"
"$BIN" "$CFG" $COMMON $B4 --set train.seq_len=64 $TIGHT --set train.device=cpu --explain >"$TMP/tight.explain" 2>&1 ||
    { echo "FAIL: --explain with a tight budget"; cat "$TMP/tight.explain"; exit 1; }
if grep -q recompute "$TMP/tight.explain"; then echo "ok:   tight budget makes auto recompute"; else
    echo "FAIL: tight budget did not make auto recompute"; cat "$TMP/tight.explain"; fails=$((fails + 1)); fi
run tight 1 $B4 --set train.seq_len=64 $TIGHT
check "SAC auto under a tight budget equals auto" ref tight

[ $fails = 0 ] || { echo "$fails parity check(s) failed"; exit 1; }
echo "all parity checks passed"
