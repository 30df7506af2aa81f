#!/bin/sh
# Sequence parallelism, data parallelism, ZeRO-1 and every SAC policy are
# exact rewrites of the single-rank program: the loss and every parameter's
# gradient after the first step, and the losses of the first 3 optimizer
# steps, agree with the single-rank run to 1e-5 (fp32 CPU engine).
. "${top_srcdir:-.}/tests/common.sh"
have_mpirun || skip_test "no mpirun (build without MPI, or mpirun not found)"
SHARD=$(make_shard)
CFG="$top_srcdir/configs/tiny.yaml"
TOL=1e-5
# Small and fast: 2 layers, 3 steps. tiny has 4 query heads and 2 KV heads,
# so SP = 4 replicates each KV head on two ranks.
COMMON="--set data.path=$SHARD --set train.steps=3 --set model.num_hidden_layers=2 --set io.log_every=1000 --set parallel.zero_stage=1"
fails=0


check() { # what ref other [layers]
    if "$top_builddir/tests/dump_compare" "$CFG" "$TMP/$2.bin" "$TMP/$3.bin" $TOL model.num_hidden_layers=${4:-2} >"$TMP/cmp-$3.log" 2>&1; then
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
# The recomputed MLP run tile by tile (24 tokens: ragged last tile), alone and under SP.
TILE="--set checkpointing.policy=full --set checkpointing.mlp_tile_tokens=24"
"$BIN" "$CFG" $COMMON $B4 --set train.seq_len=64 $TILE --set train.device=cpu --explain 2>&1 | grep -q "run in 3 tiles of 24 tokens" &&
    echo "ok:   the plan tiles the recomputed MLP" || { echo "FAIL: the plan did not tile the MLP"; fails=$((fails + 1)); }
run tile1 1 $B4 --set train.seq_len=64 $TILE
check "tiled MLP equals auto (SP=1)" ref tile1
run tile2 2 $B4 --set train.seq_len=64 $TILE --set parallel.sequence_parallel_size=2
check "tiled MLP equals auto (SP=2)" sp2 tile2
# A tight budget makes auto drop (recompute) activations; see the plan it chose.
TIGHT="--set checkpointing.memory_budget_gib=${TIGHT_GIB:-0.0062}"
"$BIN" "$CFG" $COMMON $B4 --set train.seq_len=64 $TIGHT --set train.device=cpu --explain >"$TMP/tight.explain" 2>&1 ||
    { echo "FAIL: --explain with a tight budget"; cat "$TMP/tight.explain"; exit 1; }
if grep -q recompute "$TMP/tight.explain"; then echo "ok:   tight budget makes auto recompute"; else
    echo "FAIL: tight budget did not make auto recompute"; cat "$TMP/tight.explain"; fails=$((fails + 1)); fi
run tight 1 $B4 --set train.seq_len=64 $TIGHT
check "SAC auto under a tight budget equals auto" ref tight

# Per-layer SAC: find a budget (from the full-recompute plan's peak upward)
# at which auto keeps attention's outputs in some layers and recomputes
# attention in the others, and check that plan gives the same gradients.
# (With 2 layers no budget does: the lean layers' larger workspace eats the
# one layer's saving, so these runs have 4. Without offload: with it, the
# host takes attention's outputs instead; tests/test_offload.sh.)
L4="--set model.num_hidden_layers=4 --set checkpointing.offload=false"
mixed_budget() { # np args...
    np=$1; shift
    x="$BIN $CFG $COMMON $L4 $B4 --set train.seq_len=64 --set train.device=cpu --world $np --explain $*"
    lo=$($x --set checkpointing.policy=full 2>/dev/null | awk '/predicted device peak/ {print $4}')
    [ -n "$lo" ] || return 1
    k=0
    while [ $k -lt 256 ]; do
        g=$(awk -v b="$lo" -v k="$k" 'BEGIN { printf "%.12f", (b + k * 1024) / 1073741824 }')
        if $x --set checkpointing.memory_budget_gib="$g" 2>/dev/null | grep -q "auto, per layer"; then echo "$g"; return 0; fi
        k=$((k + 1))
    done
    return 1
}
for np in 1 2; do
    SPn="--set parallel.sequence_parallel_size=$np"
    if g=$(mixed_budget $np $SPn); then
        echo "ok:   SP=$np: at $g GiB auto keeps attention's outputs in some layers only"
        run "l4ref$np" $np $B4 $L4 --set train.seq_len=64 $SPn
        run "mixed$np" $np $B4 $L4 --set train.seq_len=64 $SPn --set checkpointing.memory_budget_gib="$g"
        grep -q "SAC per layer: attention's outputs fit in" "$TMP/mixed$np.log" ||
            { echo "FAIL: the SP=$np run did not report its per-layer plan"; cat "$TMP/mixed$np.log"; fails=$((fails + 1)); }
        check "per-layer SAC equals auto (SP=$np)" "l4ref$np" "mixed$np" 4
    else
        echo "FAIL: SP=$np: no budget gives a per-layer SAC plan"; fails=$((fails + 1))
    fi
done

[ $fails = 0 ] || { echo "$fails parity check(s) failed"; exit 1; }
echo "all parity checks passed"
