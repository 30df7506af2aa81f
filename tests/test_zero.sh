#!/bin/sh
# Model-state placement is an exact rewrite: every ZeRO stage (0-3), with the
# optimizer on the GPU side (the backend) or on the host, gives the losses of
# the first 4 steps, the first step's gradient and the final weights, master
# weights and AdamW moments of ZeRO-1 (fp32 CPU engine) on 1, 2 and 4 ranks
# with SP and DP mixes and several micro-steps: bitwise where the summation
# order is the same (ZeRO 0-1 on one rank, the host optimizer against the
# backend's, one micro-step per rank), else to 1e-6. ZeRO-3 with the
# weight shard on the host too (optimizer.offload_params) equals ZeRO-3 with
# the host optimizer bitwise. A checkpoint written with ZeRO-3 and the
# optimizer (and the weights) on the host resumes with ZeRO-1 on another
# rank count, and back.
. "${top_srcdir:-.}/tests/common.sh"
SHARD=$(make_shard)
CFG="$top_srcdir/configs/tiny.yaml"
PY="python3 $top_srcdir/tests"
N=4
COMMON="--set data.path=$SHARD --set model.num_hidden_layers=2 --set train.seq_len=64 --set train.global_batch_size=4
        --set train.steps=$N --set io.log_every=1000 --set train.device=cpu"
fails=0
ok() { echo "ok:   $1"; }
fail() { echo "FAIL: $1"; fails=$((fails + 1)); }
RUN_PREFIX=""   # run folders are $TMP/NAME (end() below)
end() { echo "$TMP/$1/checkpoints/step-0000000$N"; }
compare() { # what ref other tol
    if $PY/dump_losses.py "$TMP/$2.bin" "$TMP/$3.bin" 1 $N "$4" >"$TMP/$3-loss.cmp" &&
       "$top_builddir/tests/dump_compare" "$CFG" "$TMP/$2.bin" "$TMP/$3.bin" "$4" model.num_hidden_layers=2 \
           >"$TMP/$3-grad.cmp" 2>&1 &&
       $PY/ckpt_compare.py "$(end "$2")" "$(end "$3")" "$4" >"$TMP/$3-state.cmp"; then
        ok "$1 ($(tail -1 "$TMP/$3-grad.cmp"))"
    else
        fail "$1"; cat "$TMP/$3-loss.cmp" "$TMP/$3-grad.cmp" "$TMP/$3-state.cmp"
    fi
}
grep_plan() { # what pattern args...
    what=$1; pat=$2; shift 2
    if "$BIN" "$CFG" $COMMON --explain "$@" 2>&1 | grep -q "$pat"; then ok "$what"; else
        fail "$what: --explain does not say '$pat'"; "$BIN" "$CFG" $COMMON --explain "$@" 2>&1 | sed -n '/ZeRO/p'; fi
}

grep_plan "an explicit stage is obeyed" "ZeRO         stage 3 (as configured)" --set parallel.zero_stage=3 \
    --set optimizer.offload=true
grep_plan "an explicit host optimizer is obeyed" "optimizer    on the host" --set parallel.zero_stage=3 \
    --set optimizer.offload=true
grep_plan "auto picks ZeRO-0 on one rank when everything fits" "stage 0 (chosen by auto" --set parallel.zero_stage=auto
grep_plan "explicit weights on the host are obeyed" "weights      this rank's shard in pinned host memory" \
    --set parallel.zero_stage=3 --set optimizer.offload=true --set optimizer.offload_params=true
if "$BIN" "$CFG" $COMMON --explain --set parallel.zero_stage=2 --set optimizer.offload_params=true \
        >"$TMP/prm-refused.log" 2>&1; then
    fail "offload_params true with ZeRO-2 was not refused"
elif grep -q "optimizer.offload_params: true .* parallel.zero_stage is 2" "$TMP/prm-refused.log"; then
    ok "offload_params true with ZeRO-2 is refused, naming both keys"
else
    fail "offload_params with ZeRO-2: unclear message"; cat "$TMP/prm-refused.log"
fi

# a plan that overflows only the host tier says so (the 8B on one H200 node at twice its longest S)
if "$BIN" "$top_srcdir/configs/llama31_8b.yaml" --explain --gpu-memory 139 --host-memory 125.8 \
        --set train.seq_len=524288 >"$TMP/host-over.log" 2>&1; then
    fail "the 8B at S 524288 with 125.8 GiB of host memory was not refused"
elif grep -q "does not fit: the plan needs [0-9.]* GiB of pinned host memory per rank but the host budget is" \
        "$TMP/host-over.log" && grep -q "the longest seq_len that fits is" "$TMP/host-over.log"; then
    ok "a plan over the host budget is refused naming the host tier: $(tail -1 "$TMP/host-over.log" | cut -c1-150)"
else
    fail "host-tier refusal: unclear message"; tail -2 "$TMP/host-over.log"
fi

# one rank: every stage and placement, bitwise
run r1 1 --set parallel.zero_stage=1 --set optimizer.offload=false
for st in 0 1 2 3; do for off in false true; do
    [ $st = 1 ] && [ $off = false ] && continue
    # ZeRO 2-3 add each micro-step's reduced bucket to the shard: another summation order
    tol=0; [ $st -ge 2 ] && tol=1e-6
    run "r1-z$st-$off" 1 --set parallel.zero_stage=$st --set optimizer.offload=$off
    compare "1 rank, 4 micro-steps: ZeRO-$st, optimizer on the host $off, equals ZeRO-1 (tolerance $tol)" r1 \
        "r1-z$st-$off" $tol
done; done
run r1-z3-prm 1 --set parallel.zero_stage=3 --set optimizer.offload=true --set optimizer.offload_params=true
compare "1 rank: ZeRO-3 with the weights on the host too equals it with them on the device, bitwise" r1-z3-true \
    r1-z3-prm 0

if have_mpirun; then
    # (np, SP): 2 ranks SP 2 (4 micro-steps), 2 ranks DP 2 (2 micro-steps), 4 ranks SP 2 x DP 2
    # (2 micro-steps), 4 ranks DP 4 (one micro-step: the same summation order, bitwise)
    for case in 2:2 2:1 4:2 4:1; do
        np=${case%:*}; sp=${case#*:}
        tag="n$np-sp$sp"
        run "$tag" "$np" --set parallel.sequence_parallel_size=$sp --set parallel.zero_stage=1 --set optimizer.offload=false
        for st in 0 2 3; do for off in false true; do
            tol=1e-6
            [ "$np" = 4 ] && [ "$sp" = 1 ] && tol=0
            [ $st = 0 ] && tol=1e-6
            run "$tag-z$st-$off" "$np" --set parallel.sequence_parallel_size=$sp --set parallel.zero_stage=$st \
                --set optimizer.offload=$off
            compare "$np ranks SP $sp: ZeRO-$st, optimizer on the host $off, equals ZeRO-1 (tolerance $tol)" "$tag" \
                "$tag-z$st-$off" $tol
        done; done
        run "$tag-z3-prm" "$np" --set parallel.sequence_parallel_size=$sp --set parallel.zero_stage=3 \
            --set optimizer.offload=true --set optimizer.offload_params=true
        compare "$np ranks SP $sp: ZeRO-3 with the weights on the host too equals it with them on the device, bitwise" \
            "$tag-z3-true" "$tag-z3-prm" 0
        run "$tag-z1-true" "$np" --set parallel.sequence_parallel_size=$sp --set parallel.zero_stage=1 \
            --set optimizer.offload=true
        compare "$np ranks SP $sp: ZeRO-1 with the optimizer on the host equals it on the backend bitwise" "$tag" \
            "$tag-z1-true" 0
    done

    # resume across stages and world sizes: 2 steps with ZeRO-3 + host optimizer on 2 ranks,
    # then 2 more with ZeRO-1 on 4 ranks (SP 2 x DP 2); and 2 steps with ZeRO-1 on 4 ranks,
    # then 2 more with ZeRO-3 + host optimizer on 2 ranks (SP 2); both equal 4 steps straight.
    K=2
    ckpt_from() { # name np sp stage offload [offload_params]
        mpi "$2" "$BIN" "$CFG" $COMMON --set io.run_dir="$TMP/$1" --set io.save_every=$K --set train.steps=$K \
            --set parallel.sequence_parallel_size=$3 --set parallel.zero_stage=$4 --set optimizer.offload=$5 \
            --set optimizer.offload_params=${6:-false} \
            >"$TMP/$1.log" 2>&1 || { echo "FAIL: $1"; cat "$TMP/$1.log"; exit 1; }
    }
    resume_as() { # what from name np sp stage offload [offload_params]
        rm -rf "$TMP/$3"; mkdir -p "$TMP/$3/checkpoints"
        cp -r "$TMP/$2/checkpoints/step-0000000$K" "$TMP/$3/checkpoints/"
        run "$3" "$4" --set parallel.sequence_parallel_size=$5 --set parallel.zero_stage=$6 --set optimizer.offload=$7 \
            --set optimizer.offload_params=${8:-false}
        grep -q "resumed from .*step-0000000$K" "$TMP/$3.log" || { fail "$1: did not resume"; return; }
        if $PY/dump_losses.py "$TMP/n4-sp2.bin" "$TMP/$3.bin" $((K + 1)) $N 1e-6 >"$TMP/$3-loss.cmp" &&
           $PY/ckpt_compare.py "$(end n4-sp2)" "$(end "$3")" 1e-6 >"$TMP/$3-state.cmp"; then ok "$1"; else
            fail "$1"; cat "$TMP/$3-loss.cmp" "$TMP/$3-state.cmp"; fi
    }
    ckpt_from z3host 2 2 3 true
    resume_as "saved with ZeRO-3 + host optimizer on 2 ranks, resumed with ZeRO-1 on 4: equals 4 steps straight" \
        z3host res-z1 4 2 1 false
    ckpt_from z1dev 4 2 1 false
    resume_as "saved with ZeRO-1 on 4 ranks, resumed with ZeRO-3 + host optimizer on 2: equals 4 steps straight" \
        z1dev res-z3 2 2 3 true
    ckpt_from z3prm 2 2 3 true true
    resume_as "saved with ZeRO-3 + optimizer and weights on the host on 2 ranks, resumed with ZeRO-1 on 4: equals 4 steps straight" \
        z3prm res-z1p 4 2 1 false
    resume_as "saved with ZeRO-1 on 4 ranks, resumed with ZeRO-3 + optimizer and weights on the host on 2: equals 4 steps straight" \
        z1dev res-z3p 2 2 3 true true
else
    echo "no mpirun: the multi-rank stage checks skipped"
fi
[ $fails = 0 ] || { echo "$fails ZeRO check(s) failed"; exit 1; }
echo "all ZeRO checks passed"
