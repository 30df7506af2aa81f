#!/bin/sh
# Activation offload is exact: with the host tier taking attention's outputs
# (every layer that can leave the device, or only some because the host
# budget says so) the losses and gradients are bitwise those of the run that
# keeps everything on the device, at SP 1 and 2 (fp32 CPU engine, whose
# copies beside compute are plain memcpy on the same executor paths). The
# pinned host memory a run allocates is the plan's host bytes.
. "${top_srcdir:-.}/tests/common.sh"
SHARD=$(make_shard)
CFG="$top_srcdir/configs/tiny.yaml"
# 8 layers at S = 512: activations outweigh the tiny model's weights, and 6
# layers leave the device (the last 2 stay in the staging slots). Attention
# runs whole: pieces would let auto keep attention's outputs where these
# checks want it recomputed, and add in another order (test_attn_pieces.sh).
COMMON="--set data.path=$SHARD --set train.steps=2 --set train.seq_len=512 --set train.global_batch_size=2
        --set model.num_hidden_layers=8 --set io.log_every=1 --set train.device=cpu
        --set parallel.zero_stage=1 --set optimizer.offload=false --set checkpointing.attention_pieces=1"
fails=0
ok() { echo "ok:   $1"; }
bad() { echo "FAIL: $1"; fails=$((fails + 1)); }

explain() { # np args...
    np=$1; shift
    "$BIN" "$CFG" $COMMON --world "$np" --explain "$@" 2>/dev/null || true
}

run() { # name np args...
    name=$1; np=$2; shift 2
    if [ "$np" = 1 ]; then
        "$BIN" "$CFG" $COMMON --set io.run_dir="$TMP/run-$name" --dump-grads "$TMP/$name.bin" "$@" >"$TMP/$name.log" 2>&1
    else
        mpi "$np" "$BIN" "$CFG" $COMMON --set io.run_dir="$TMP/run-$name" --dump-grads "$TMP/$name.bin" "$@" \
            >"$TMP/$name.log" 2>&1
    fi || { echo "FAIL: run $name (np $np) failed:"; cat "$TMP/$name.log"; exit 1; }
}

same() { # what ref other
    if cmp -s "$TMP/$2.bin" "$TMP/$3.bin"; then ok "$1: losses and gradients bitwise equal"
    else bad "$1: losses or gradients differ from $2"; fi
}

# The host bytes the run allocated equal the plan's (and --explain's).
host_bytes_match() { # what name explain-file
    plan=$(sed -n 's/.*host memory: plan places .* (\([0-9]*\) B) in pinned.*/\1/p' "$TMP/$2.log")
    got=$(sed -n 's/.*; allocated [^(]*(\([0-9]*\) B).*/\1/p' "$TMP/$2.log")
    want=$(awk '/^  pinned host/ {print $3}' "$3")
    if [ -n "$plan" ] && [ "$plan" = "$got" ] && [ "$plan" = "$want" ] && [ "$plan" -gt 0 ]; then
        ok "$1: the run allocated the plan's $plan host bytes"
    else
        bad "$1: host bytes: plan '$plan', allocated '$got', --explain '$want'"; grep "host memory" "$TMP/$2.log"
    fi
}

gib() { awk -v b="$1" 'BEGIN { printf "%.12f", b / 1073741824 }'; }

for np in 1 2; do
    if [ "$np" = 2 ] && ! have_mpirun; then echo "skip: SP=2 needs mpirun"; continue; fi
    SPn="--set parallel.sequence_parallel_size=$np"
    # A device budget at which, without offload, attention is recomputed in
    # some layers, and with an unlimited host tier in none.
    lo=$(explain $np $SPn --set checkpointing.policy=full | awk '/predicted device peak/ {print $4}')
    g="" k=0
    while [ -n "$lo" ] && [ $k -lt 64 ]; do
        try=$(gib $((lo + k * 32768)))
        explain $np $SPn --set checkpointing.memory_budget_gib="$try" >"$TMP/all$np.explain"
        if grep -q "attention never recomputed" "$TMP/all$np.explain" && grep -q "^  offload:" "$TMP/all$np.explain" &&
            explain $np $SPn --set checkpointing.memory_budget_gib="$try" --set checkpointing.offload=false |
            grep -q "auto, per layer"; then
            g=$try
            break
        fi
        k=$((k + 1))
    done
    [ -n "$g" ] || { bad "SP=$np: no device budget makes the host take attention's outputs"; continue; }
    B="--set checkpointing.memory_budget_gib=$g"
    ok "SP=$np: at $g GiB per rank, without offload attention is recomputed in some layers; with it in none"
    # A host budget that holds attention's outputs of some layers only (at
    # a device budget, from that one up, where the layer inputs can stay).
    h="" gs=""
    for k in 0 1 2 3 4 5 6 7 8 9 10 11 12; do
        b=$(gib $((lo + k * 65536)))
        explain $np $SPn --set checkpointing.memory_budget_gib="$b" >"$TMP/s$np.explain"
        grep -q "^  offload:" "$TMP/s$np.explain" || continue
        full=$(awk '/^  pinned host/ {print $3}' "$TMP/s$np.explain")
        for f in 0.9 0.8 0.7 0.6 0.5 0.4 0.3; do
            try=$(awk -v b="$full" -v f="$f" 'BEGIN { printf "%.12f", b * f / 1073741824 }')
            explain $np $SPn --set checkpointing.memory_budget_gib="$b" --set checkpointing.host_budget_gib="$try" \
                >"$TMP/some$np.explain"
            if grep -q "^  offload:" "$TMP/some$np.explain" && grep -q "auto, per layer" "$TMP/some$np.explain"; then
                h=$try gs=$b
                break 2
            fi
        done
    done
    [ -n "$h" ] || { bad "SP=$np: no host budget gives attention's outputs to the host in some layers only"; continue; }
    ok "SP=$np: at $gs GiB, a $h GiB host budget sends $(sed -n 's/.*, in \([0-9]* of [0-9]*\) layers.*/\1/p' "$TMP/some$np.explain") layers' outputs to the host, the others recompute"

    # Below the full policy's peak: the layer inputs (the checkpoints) go to
    # the host as well, and attention's outputs still are not recomputed.
    gi="" k=1
    while [ $k -lt 32 ]; do
        try=$(gib $((lo - k * 32768)))
        explain $np $SPn --set checkpointing.memory_budget_gib="$try" >"$TMP/in$np.explain"
        if grep -q "^  x .* save (in)   host" "$TMP/in$np.explain" &&
            grep -q "attention never recomputed" "$TMP/in$np.explain"; then
            gi=$try
        else
            break
        fi
        k=$((k + 1))
    done
    [ -n "$gi" ] && ok "SP=$np: at $gi GiB, below the full policy's peak, the layer inputs go to the host too" ||
        bad "SP=$np: no budget below the full policy's peak sends the layer inputs to the host"

    run "ref$np" $np $SPn
    run "dev$np" $np $SPn $B --set checkpointing.offload=false
    run "some$np" $np $SPn --set checkpointing.memory_budget_gib="$gs" --set checkpointing.host_budget_gib="$h"
    run "all$np" $np $SPn $B
    same "SP=$np all on the device (offload off, attention recomputed in some layers)" "ref$np" "dev$np"
    same "SP=$np some layers on the host" "ref$np" "some$np"
    same "SP=$np every layer that can leave the device on the host" "ref$np" "all$np"
    if [ -n "$gi" ]; then
        explain $np $SPn --set checkpointing.memory_budget_gib="$gi" >"$TMP/in$np.explain"
        run "in$np" $np $SPn --set checkpointing.memory_budget_gib="$gi"
        same "SP=$np layer inputs on the host too" "ref$np" "in$np"
        host_bytes_match "SP=$np layer inputs" "in$np" "$TMP/in$np.explain"
    fi
    host_bytes_match "SP=$np some layers" "some$np" "$TMP/some$np.explain"
    host_bytes_match "SP=$np all layers" "all$np" "$TMP/all$np.explain"
    grep -q "offload .* copy .* exposed" "$TMP/all$np.log" && grep -q '"copy_exposed_ms"' "$TMP/run-all$np/metrics.jsonl" &&
        ok "SP=$np: the step line and metrics.jsonl show the offload copies" ||
        bad "SP=$np: no offload figures in the step line or metrics.jsonl"
done

[ $fails = 0 ] || { echo "$fails offload check(s) failed"; exit 1; }
echo "all offload checks passed"
