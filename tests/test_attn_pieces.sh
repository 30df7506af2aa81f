#!/bin/sh
# Attention in pieces (checkpointing.attention_pieces): the attention block
# run one group of KV heads at a time is an exact rewrite of the whole
# block. Against the run without pieces (and only the summation order of
# o_proj's output and the QKV projection's input gradient differs), the
# losses of the first steps and every parameter's gradient agree to 1e-6
# (fp32 CPU engine), at every piece count from one to one KV head per piece,
# at SP 1, 2 and 4, with packed documents, under every SAC policy (full
# recompute rebuilds the region before the backward and again per piece),
# with host offload, and when auto chooses the pieces under a tight budget.
. "${top_srcdir:-.}/tests/common.sh"
have_mpirun || skip_test "no mpirun (build without MPI, or mpirun not found)"
SHARD=$(make_shard)
CFG="$top_srcdir/configs/tiny.yaml"
TOL=1e-6
# 16 query and 8 KV heads of 8: SP 1, 2, 4 hold 8, 4, 2 KV heads per rank.
HEADS="model.num_attention_heads=16 model.num_key_value_heads=8 model.head_dim=8"
COMMON="--set data.path=$SHARD --set train.steps=2 --set io.log_every=1000 --set parallel.zero_stage=1
        --set train.global_batch_size=2 --set train.seq_len=64 --set train.device=cpu --set model.num_hidden_layers=2"
for kv in $HEADS; do COMMON="$COMMON --set $kv"; done
fails=0

check() { # what ref other [tol [layers]]
    if "$top_builddir/tests/dump_compare" "$CFG" "$TMP/$2.bin" "$TMP/$3.bin" "${4:-$TOL}" $HEADS \
        model.num_hidden_layers="${5:-2}" >"$TMP/cmp-$3.log" 2>&1; then
        echo "ok:   $1 ($(tail -1 "$TMP/cmp-$3.log"))"
    else
        echo "FAIL: $1"; cat "$TMP/cmp-$3.log"; fails=$((fails + 1))
    fi
}
explain() { # np args...: the plan only
    np=$1; shift
    "$BIN" "$CFG" $COMMON --world "$np" --explain "$@" 2>&1
}
expect_pieces() { # what G np args...: the plan runs attention in G pieces
    what=$1; G=$2; shift 2
    if explain "$@" | grep -q "attention in $G pieces"; then echo "ok:   $what: the plan runs attention in $G pieces"
    else echo "FAIL: $what: the plan does not run attention in $G pieces"; explain "$@" | grep -E "pieces|peak"; fails=$((fails + 1)); fi
}
P() { echo "--set checkpointing.attention_pieces=$1"; }
SP() { echo "--set parallel.sequence_parallel_size=$1"; }

# No pieces by default when memory is plentiful; a count that does not divide
# the KV heads per rank is refused with the valid ones.
if explain 1 | grep -q "attention in"; then echo "FAIL: pieces without need"; fails=$((fails + 1)); else
    echo "ok:   auto runs attention whole when memory is plentiful"; fi
if explain 2 $(SP 2) $(P 3) | grep -q "valid counts: 1, 2, 4"; then echo "ok:   3 pieces refused at SP 2 with the valid counts"
else echo "FAIL: 3 pieces at SP 2 not refused as expected"; explain 2 $(SP 2) $(P 3); fails=$((fails + 1)); fi

for pol in save_all full; do
    POL="--set checkpointing.policy=$pol"
    run "r1$pol" 1 $POL
    for G in 2 4 8; do
        run "p1$pol$G" 1 $POL $(P $G)
        check "SP 1, $pol, $G pieces equals whole" "r1$pol" "p1$pol$G"
    done
    run "r2$pol" 2 $POL $(SP 2)
    for G in 2 4; do
        run "p2$pol$G" 2 $POL $(SP 2) $(P $G)
        check "SP 2, $pol, $G pieces equals whole" "r2$pol" "p2$pol$G"
    done
    run "r4$pol" 4 $POL $(SP 4)
    run "p4$pol" 4 $POL $(SP 4) $(P 2)
    check "SP 4, $pol, 2 pieces equals whole" "r4$pol" "p4$pol"
done
expect_pieces "full recompute" 8 1 --set checkpointing.policy=full $(P 8)
explain 1 --set checkpointing.policy=full $(P 8) | grep -q "rebuilt before the backward for o_proj's output, attention's" &&
    echo "ok:   full recompute rebuilds the pieces before the backward too, keeping attention's outputs" ||
    { echo "FAIL: the full-recompute plan does not rebuild the region before the backward"; fails=$((fails + 1)); }
# Lean: just below that plan's peak only the plan that rebuilds attention again
# in the piece loop (and keeps nothing whole through the backward) fits.
b8keep=$(explain 1 --set checkpointing.policy=full $(P 8) | awk '/predicted device peak/ {print $4}')
k=1; lean=""
while [ -n "$b8keep" ] && [ $k -lt 64 ]; do
    try=$(awk -v b="$b8keep" -v k="$k" 'BEGIN { printf "%.12f", (b - k * 1024) / 1073741824 }')
    if explain 1 $(P 8) --set checkpointing.offload=false --set checkpointing.memory_budget_gib="$try" |
        grep -q "and lean: again per piece"; then lean=$try; break; fi
    k=$((k + 1))
done
if [ -n "$lean" ]; then
    run lean 1 $(P 8) --set checkpointing.offload=false --set checkpointing.memory_budget_gib="$lean"
    check "SP 1, 8 lean pieces (attention rebuilt in the piece loop) equals whole" r1save_all lean
else
    echo "FAIL: no budget gives the lean pieced plan"; fails=$((fails + 1))
fi

# Packed documents: every piece attends within the documents.
DOCS="--set data.documents=eos --set data.eos_token_id=32"
run d1 1 $DOCS
run d1p 1 $DOCS $(P 8) --set checkpointing.policy=full
check "documents, SP 1, 8 pieces equals whole" d1 d1p
run d2 2 $DOCS $(SP 2)
run d2p 2 $DOCS $(SP 2) $(P 4)
check "documents, SP 2, 4 pieces equals whole" d2 d2p

# ZeRO-3 with pieces: the windows of a gathered bucket's weights and gradients.
run z3 2 $(SP 2) $(P 2) --set parallel.zero_stage=3
check "ZeRO-3, SP 2, 2 pieces equals ZeRO-1 whole" r2save_all z3 1e-5

# A tight budget: the whole-attention plans no longer fit (the budget lies
# between the 8-piece and the whole full-recompute peaks), so auto must
# choose pieces, and the run equals the whole one.
peak() { awk '/predicted device peak/ {print $4}'; }
b8=$(explain 1 --set checkpointing.policy=full $(P 8) | peak)
b1=$(explain 1 --set checkpointing.policy=full $(P 1) | peak)
if [ -n "$b8" ] && [ "$b8" -lt "$b1" ]; then
    echo "ok:   the full-recompute workspace shrinks with pieces ($b1 -> $b8 bytes)"
    g=$(awk -v lo="$b8" -v hi="$b1" 'BEGIN { printf "%.12f", (lo + hi) / 2 / 1073741824 }')
    TIGHT="--set checkpointing.memory_budget_gib=$g --set checkpointing.offload=false"
    if explain 1 $TIGHT | grep -q "attention in [2-8] pieces"; then echo "ok:   auto chooses pieces under a tight budget"
    else echo "FAIL: auto did not choose pieces under a tight budget"; explain 1 $TIGHT | tail -5; fails=$((fails + 1)); fi
    run tight 1 $TIGHT
    check "auto pieces under a tight budget equal whole" r1save_all tight
else
    echo "FAIL: pieces do not shrink the full-recompute plan ($b1 -> $b8)"; fails=$((fails + 1))
fi

# Host offload with pieces (8 layers at S = 256, so that layers leave the
# device): from the 4-piece full-recompute peak toward its save_all peak, the
# first budget at which auto sends attention's output to the host, whole
# and written piece by piece.
OFF="--set model.num_hidden_layers=8 --set train.seq_len=256"
for np in 1 2; do
    lo=$(explain $np $OFF $(SP $np) $(P 4) --set checkpointing.policy=full | peak)
    hi=$(explain $np $OFF $(SP $np) $(P 4) --set checkpointing.policy=save_all | peak)
    k=1; g=""
    while [ -n "$lo" ] && [ -n "$hi" ] && [ $k -lt 32 ]; do
        try=$(awk -v l="$lo" -v h="$hi" -v k="$k" 'BEGIN { printf "%.12f", (l + (h - l) * k / 32) / 1073741824 }')
        if explain $np $OFF $(SP $np) $(P 4) --set checkpointing.memory_budget_gib="$try" |
            grep -qE "^  (o|o_h) .* offload +host"; then g=$try; break; fi
        k=$((k + 1))
    done
    if [ -z "$g" ]; then echo "FAIL: SP $np: no budget offloads attention's output with pieces"; fails=$((fails + 1)); continue; fi
    run "offref$np" $np $OFF $(SP $np)
    run "off$np" $np $OFF $(SP $np) $(P 4) --set checkpointing.memory_budget_gib="$g"
    check "offload, SP $np, 4 pieces equals whole" "offref$np" "off$np" $TOL 8
done

[ $fails = 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all attention-in-pieces checks passed"
