#!/bin/sh
# Packed documents (data.documents: eos) are exact: one sample of several
# documents gives the loss and every parameter's gradient of the documents
# trained one by one, each alone in its own sample, summed with the global
# count of valid targets. At SP 1, 2 and 4 (document lengths that P does not
# divide, documents shorter than P, an empty one, S padded), fp32 CPU engine.
# And the validation loss of a model equals its training loss on the same
# tokens before an update.
. "${top_srcdir:-.}/tests/common.sh"
CFG="$top_srcdir/configs/tiny.yaml"
HELP="$top_srcdir/tests/docs_parity.py"
TOL=1e-5
EOS=10
# 62 tokens: S = 61; the third document is its EOS alone, two are shorter than 4
LENS="13 7 1 2 25 3 11"
COMMON="--set train.steps=1 --set train.global_batch_size=1 --set model.num_hidden_layers=2 --set io.log_every=1000
        --set data.shuffle=false --set io.save_at_end=false --set train.device=cpu"
fails=0
S=$(python3 "$HELP" shards "$TMP" $EOS 7 $LENS)


check() { # what ref other
    if "$top_builddir/tests/dump_compare" "$CFG" "$TMP/$2.bin" "$TMP/$3.bin" $TOL model.num_hidden_layers=2 >"$TMP/cmp-$3.log" 2>&1; then
        echo "ok:   $1 ($(tail -1 "$TMP/cmp-$3.log"))"
    else
        echo "FAIL: $1"; cat "$TMP/cmp-$3.log"; fails=$((fails + 1))
    fi
}

# The reference: every document of 2 tokens or more alone (its EOS is its
# last target: len - 1 valid targets), combined by valid count.
i=0 parts=""
for n in $LENS; do
    if [ "$n" -ge 2 ]; then
        run "doc$i" 1 --set data.path="$TMP/doc-$i.tok" --set train.seq_len=$((n - 1))
        parts="$parts $TMP/doc$i.bin:$((n - 1))"
    fi
    i=$((i + 1))
done
python3 "$HELP" combine "$TMP/alone.bin" $parts

DOCS="--set data.path=$TMP/packed.tok --set train.seq_len=$S --set data.documents=eos --set data.eos_token_id=$EOS"
run packed1 1 $DOCS
check "packed documents equal the documents one by one (SP=1)" alone packed1
# without documents the same sample is one causal stream: it must differ
run stream1 1 --set data.path="$TMP/packed.tok" --set train.seq_len=$S
if "$top_builddir/tests/dump_compare" "$CFG" "$TMP/alone.bin" "$TMP/stream1.bin" $TOL model.num_hidden_layers=2 >/dev/null 2>&1; then
    echo "FAIL: one causal stream over the documents also matched"; fails=$((fails + 1))
else
    echo "ok:   one causal stream over the same tokens differs from the documents one by one"
fi

if have_mpirun; then
    run packed2 2 $DOCS --set parallel.sequence_parallel_size=2
    check "packed documents equal the documents one by one (SP=2, S=$S padded)" alone packed2
    run packed4 4 $DOCS --set parallel.sequence_parallel_size=4
    check "packed documents equal the documents one by one (SP=4, KV heads replicated)" alone packed4
else
    echo "no mpirun: SP=2 and SP=4 skipped"
fi

# The step's FLOPs count each document's attention: fewer than one stream's.
python3 - "$TMP/run-packed1/metrics.jsonl" "$TMP/run-stream1/metrics.jsonl" <<'PY' &&
import json, sys
a, b = (json.loads(open(p).readline()) for p in sys.argv[1:])
fa, fb = a["tflops"] * a["ms"], b["tflops"] * b["ms"]
assert 0 < fa < fb, (fa, fb)
PY
    echo "ok:   the step line's FLOPs count per-document attention (fewer than one stream's)" ||
    { echo "FAIL: FLOPs with documents"; fails=$((fails + 1)); }

# Validation: data.val_path holding the samples of step 2 gives, after step
# 1, the training loss of step 2 (computed before its update); with and
# without documents, and under SP x DP.
SHARD=$(make_shard)
python3 - "$SHARD" "$TMP/val.tok" 64 4 <<'PY'
import struct, sys
src, dst, S, B = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = open(src, "rb").read()
hdr, tok = data[:64], data[64:]
part = tok[4 * B * S:4 * (2 * B * S + 1)]       # the samples of step 2, and their last target
open(dst, "wb").write(hdr[:16] + struct.pack("<Q", len(part) // 4) + hdr[24:] + part)
PY
VAL="--set data.path=$SHARD --set data.val_path=$TMP/val.tok --set train.seq_len=64 --set train.global_batch_size=4
     --set train.steps=2 --set train.eval_every=1 --set train.eval_tokens=256"
val_check() { # name np what args...
    name=$1 np=$2 what=$3; shift 3
    run "$name" "$np" $VAL "$@"
    if python3 - "$TMP/run-$name/metrics.jsonl" <<'PY'; then
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = {r["step"]: r["loss"] for r in rows if "loss" in r}
val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
assert set(val) == {1, 2}, val
assert abs(val[1] - train[2]) <= 1e-5 * abs(train[2]), (val[1], train[2])
print(f"val loss after step 1 {val[1]:.7f}, train loss of step 2 {train[2]:.7f}")
PY
        echo "ok:   validation loss equals the training loss on the same tokens ($what)"
    else
        echo "FAIL: validation loss ($what)"; cat "$TMP/run-$name/metrics.jsonl"; fails=$((fails + 1))
    fi
}
val_check val1 1 "SP=1" --set io.save_at_end=true
val_check valdocs1 1 "SP=1, documents at newlines" --set data.documents=eos --set data.eos_token_id=$EOS
if have_mpirun; then
    val_check val4 4 "SP=2 x DP=2, documents" --set parallel.sequence_parallel_size=2 --set data.documents=eos \
        --set data.eos_token_id=$EOS
fi
if grep -q "^val_step 2$" "$TMP/run-val1/checkpoints/step-00000002/state" &&
    grep -q "^val_loss " "$TMP/run-val1/checkpoints/step-00000002/state"; then
    echo "ok:   the checkpoint's state records the last validation loss"
else
    echo "FAIL: no validation loss in the checkpoint's state"; fails=$((fails + 1))
fi

# Bad input: exit status 2 and a message that says what to do.
refuse() { # what pattern args...
    what=$1 pattern=$2; shift 2
    set +e
    "$BIN" "$CFG" $COMMON --set io.run_dir="$TMP/run-refuse" "$@" >"$TMP/refuse.log" 2>&1
    rc=$?
    set -e
    if [ $rc = 2 ] && grep -q "$pattern" "$TMP/refuse.log"; then echo "ok:   refused: $what"; else
        echo "FAIL: $what (status $rc)"; cat "$TMP/refuse.log"; fails=$((fails + 1)); fi
}
refuse "documents without an EOS id" "records no EOS id; make the shard with scripts/prepare_data.py --eos or set data.eos_token_id" \
    --set data.path="$TMP/packed.tok" --set train.seq_len=$S --set data.documents=eos
refuse "an EOS id outside the vocabulary" "data.eos_token_id 300 is >= the model vocab_size 256" \
    --set data.path="$TMP/packed.tok" --set train.seq_len=$S --set data.documents=eos --set data.eos_token_id=300
refuse "an unknown documents mode" "data.documents: expected none or eos, got 'newline'" \
    --set data.path="$TMP/packed.tok" --set train.seq_len=$S --set data.documents=newline

[ $fails = 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all packed-document and validation checks passed"
