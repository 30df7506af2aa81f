#!/bin/sh
# Resume is exact: N steps straight equal K steps + resume + N-K steps,
# bitwise on the fp32 CPU engine (the last steps' losses and the final
# weights, master weights and AdamW moments of the end checkpoints), alone
# and under mpirun with SP = 2; a checkpoint written on 2 ranks resumes on 1
# and on 4 ranks within 1e-5. ASP_TEST_DEVICE=cuda runs the same checks on the
# GPU engine (with MPIRUN=no on a machine with one GPU).
. "${top_srcdir:-.}/tests/common.sh"
SHARD=$(make_shard)
CFG="$top_srcdir/configs/tiny.yaml"
PY="python3 $top_srcdir/tests"
N=6
K=3
COMMON="--set data.path=$SHARD --set model.num_hidden_layers=2 --set train.seq_len=64 --set train.global_batch_size=4
        --set train.steps=$N --set io.log_every=1000 --set train.device=${ASP_TEST_DEVICE:-cpu}"
fails=0

run() { # name np args...
    name=$1; np=$2; shift 2
    if [ "$np" = 1 ]; then
        "$BIN" "$CFG" $COMMON "$@" >"$TMP/$name.log" 2>&1
    else
        mpi "$np" "$BIN" "$CFG" $COMMON "$@" >"$TMP/$name.log" 2>&1
    fi || { echo "FAIL: run $name (np $np) failed:"; cat "$TMP/$name.log"; exit 1; }
}
ok() { echo "ok:   $1"; }
fail() { echo "FAIL: $1"; fails=$((fails + 1)); }
end() { echo "$TMP/$1/checkpoints/step-0000000$N"; }

# straight run, and a run stopped after K steps (its step-K checkpoint kept,
# the later ones removed as if it had been killed) then resumed with io.resume=auto
straight_and_resumed() { # tag np args...
    tag=$1; np=$2; shift 2
    run "$tag-straight" "$np" --set io.run_dir="$TMP/$tag-straight" --dump-grads "$TMP/$tag-straight.bin" "$@"
    run "$tag-first" "$np" --set io.run_dir="$TMP/$tag-resumed" --set io.save_every=$K "$@"
    rm -rf "$(end "$tag-resumed")"
    run "$tag-resumed" "$np" --set io.run_dir="$TMP/$tag-resumed" --dump-grads "$TMP/$tag-resumed.bin" "$@"
    grep -q "resumed from .*step-0000000$K" "$TMP/$tag-resumed.log" || { fail "$tag: did not resume from step $K"; return; }
    if $PY/dump_losses.py "$TMP/$tag-straight.bin" "$TMP/$tag-resumed.bin" $((K + 1)) $N 0 >"$TMP/$tag-loss.cmp" &&
       $PY/ckpt_compare.py "$(end "$tag-straight")" "$(end "$tag-resumed")" 0 >"$TMP/$tag-state.cmp"; then
        ok "$tag: $K steps + resume + $((N - K)) steps equals $N steps bitwise (losses, weights, master, Adam m and v)"
    else
        fail "$tag: resumed run differs"; cat "$TMP/$tag-loss.cmp" "$TMP/$tag-state.cmp"
    fi
    lines=$(grep -c '"loss"' "$TMP/$tag-resumed/metrics.jsonl")   # step rows, not validation rows
    [ "$lines" = $N ] && ok "$tag: metrics.jsonl appended on resume ($lines lines)" ||
        fail "$tag: metrics.jsonl has $lines lines after resume, expected $N"
}

straight_and_resumed "${ASP_TEST_DEVICE:-cpu}1" 1

if have_mpirun; then
    straight_and_resumed sp2 2 --set parallel.sequence_parallel_size=2
    # written on 2 ranks (SP 2) at step K, resumed on 1 rank and on 4 (SP 2 x DP 2)
    for w in 1 4; do
        sp=$([ $w = 1 ] && echo 1 || echo 2)
        rm -rf "$TMP/w$w"; mkdir -p "$TMP/w$w/checkpoints"
        cp -r "$TMP/sp2-resumed/checkpoints/step-0000000$K" "$TMP/w$w/checkpoints/"
        run "w$w" $w --set io.run_dir="$TMP/w$w" --set parallel.sequence_parallel_size=$sp --dump-grads "$TMP/w$w.bin"
        if $PY/dump_losses.py "$TMP/sp2-straight.bin" "$TMP/w$w.bin" $((K + 1)) $N 1e-5 >"$TMP/w$w-loss.cmp" &&
           $PY/ckpt_compare.py "$(end sp2-straight)" "$(end w$w)" 1e-5 >"$TMP/w$w-state.cmp"; then
            ok "written on 2 ranks, resumed on $w: losses and state within 1e-5"
        else
            fail "written on 2 ranks, resumed on $w"; cat "$TMP/w$w-loss.cmp" "$TMP/w$w-state.cmp"
        fi
    done
else
    echo "no mpirun: SP and world-size resume checks skipped"
fi
# The checkpoint records the training shard (size and fingerprint): a resume
# on the same shard says nothing, on a changed one it warns, naming both.
D="$TMP/data-id"; mkdir -p "$D"; cp "$SHARD" "$D/shard.tok"
"$BIN" "$CFG" $COMMON --set data.path="$D/shard.tok" --set train.steps=2 --set io.run_dir="$D/run" >"$D/a.log" 2>&1
"$BIN" "$CFG" $COMMON --set data.path="$D/shard.tok" --set train.steps=3 --set io.run_dir="$D/run" >"$D/b.log" 2>&1
grep -q "data_fingerprint" "$D/run/checkpoints/step-00000002/state" && ! grep -q "changed since" "$D/b.log" &&
    ok "the checkpoint records the shard; a resume on the same shard does not warn" ||
    { fail "data fingerprint on an unchanged shard"; cat "$D/b.log"; }
python3 "$top_srcdir/scripts/text_to_shard.py" "$top_srcdir/data/README.md" "$D/other.tok" >/dev/null
cp "$D/other.tok" "$D/shard.tok"
"$BIN" "$CFG" $COMMON --set data.path="$D/shard.tok" --set train.steps=4 --set io.run_dir="$D/run" >"$D/c.log" 2>&1
grep "changed since" "$D/c.log" | grep -q "fingerprint" &&
    ok "a resume on a changed shard warns, naming the old and the new shard" ||
    { fail "no warning on a changed shard"; cat "$D/c.log"; }
[ $fails = 0 ] || { echo "$fails resume check(s) failed"; exit 1; }
echo "all resume checks passed"
