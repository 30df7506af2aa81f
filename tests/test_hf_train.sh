#!/bin/sh
# io.export_hf and model.from_pretrained in a training run stream the
# weights a tensor or a bucket at a time: what a run exports equals the
# weights its final checkpoint holds (fp32 CPU engine, bitwise), on one rank
# and on two under ZeRO-3 (each rank holds a shard of the weights), and a run
# that starts from the export computes, before its first update, the loss the
# exporting run's model gave on the same tokens.
. "${top_srcdir:-.}/tests/common.sh"
CFG="$top_srcdir/configs/tiny.yaml"
SHARD=$(make_shard)
COMMON="--set data.path=$SHARD --set train.seq_len=64 --set train.global_batch_size=2 --set model.num_hidden_layers=2
        --set io.log_every=1000 --set data.shuffle=false --set train.device=cpu"
fails=0

same_as_checkpoint() { # what run step
    if python3 - "$TMP/run-$2/hf/model.safetensors" "$TMP/run-$2/checkpoints/step-0000000$3/weights.bin" <<'PY'; then
import json, struct, sys
st, ck = (open(p, "rb").read() for p in sys.argv[1:])
n = struct.unpack("<Q", st[:8])[0]
head = json.loads(st[8:8 + n])
data = st[8 + n:]
magic, version, dtype, count = struct.unpack("<8sIIq", ck[:24])
assert magic == b"ASPCKPT1" and dtype == 0, (magic, dtype)
flat = ck[-4 * count:]
tensors = sorted((v["data_offsets"], k) for k, v in head.items() if k != "__metadata__")
assert all(head[k]["dtype"] == "F32" for _, k in tensors)
assert sum(b - a for (a, b), _ in tensors) == 4 * count == len(data), (len(data), count)
# the export's tensors, in file order, are the flat weights in model order
assert data == flat, "the exported values differ from the checkpoint's weights"
print(f"{len(tensors)} tensors, {count} values, bitwise equal")
PY
        echo "ok:   the export equals the checkpoint's weights ($1)"
    else
        echo "FAIL: export against the checkpoint ($1)"; fails=$((fails + 1))
    fi
}

# A: 2 steps, exported; its validation (the shard's first 128 tokens) is the
# loss of the final model on the tokens a fresh run's first batch holds
run exp1 1 --set train.steps=2 --set io.export_hf=true --set data.val_path="$SHARD" --set train.eval_every=2 \
    --set train.eval_tokens=128
same_as_checkpoint "1 rank" exp1 2
if have_mpirun; then
    run exp3 2 --set train.steps=2 --set io.export_hf=true --set parallel.zero_stage=3 \
        --set parallel.sequence_parallel_size=1
    same_as_checkpoint "2 ranks, ZeRO-3" exp3 2
else
    say_console "the 2-rank ZeRO-3 export is not run: no mpirun (MPIRUN=$MPIRUN)"
fi

# B: from the export, 1 step on the same first batch
run imp1 1 --set train.steps=1 --set model.from_pretrained="$TMP/run-exp1/hf" --set io.save_at_end=false
if python3 - "$TMP/run-exp1/metrics.jsonl" "$TMP/run-imp1/metrics.jsonl" <<'PY'; then
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
val = [r["val_loss"] for r in a if r.get("step") == 2 and "val_loss" in r][0]
first = [r["loss"] for r in b if r.get("step") == 1 and "loss" in r][0]
assert abs(val - first) <= 1e-5 * abs(val), (val, first)
print(f"exporting run's validation {val:.7f}, importing run's first loss {first:.7f}")
PY
    echo "ok:   a run from the export starts from the exported model"
else
    echo "FAIL: import of the export"; cat "$TMP/run-imp1/metrics.jsonl" "$TMP/imp1.log" | tail -20; fails=$((fails + 1))
fi
grep -q "loaded .* weights from" "$TMP/imp1.log" || { echo "FAIL: no 'loaded' line"; fails=$((fails + 1)); }
[ $fails = 0 ]
