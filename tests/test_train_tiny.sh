#!/bin/sh
# configs/tiny.yaml's model (2 of its layers, S = 64, so it takes seconds)
# learns the shipped English text on the CPU: the loss starts near ln(256) =
# 5.55 nats (uniform over bytes) and the mean of the last 10 steps ends below
# 2.5 nats (better than the text's unigram byte entropy, about 3 nats: the
# model has learned context). One thread: OpenMP threads on a busy 2-core
# machine cost more than they give at this size.
. "${top_srcdir:-.}/tests/common.sh"
SHARD=$(make_shard)
STEPS=${TINY_STEPS:-150}
"$BIN" "$top_srcdir/configs/tiny.yaml" --set data.path="$SHARD" --set train.steps=$STEPS \
    --set model.num_hidden_layers=2 --set train.seq_len=64 --set train.warmup_steps=10 \
    --set train.device=cpu --set io.run_dir="$TMP/run" --set io.log_every=25 >"$TMP/log" 2>&1 ||
    { cat "$TMP/log"; echo "FAIL: training failed"; exit 1; }
cat "$TMP/log"
python3 - "$TMP/run/metrics.jsonl" "$STEPS" <<'PY'
import json, math, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if "loss" in r]   # step rows, not validation rows
steps = int(sys.argv[2])
assert len(rows) == steps, f"expected {steps} metric lines, got {len(rows)}"
first, last10 = rows[0]["loss"], sum(r["loss"] for r in rows[-10:]) / 10
print(f"first loss {first:.4f} (ln 256 = {math.log(256):.4f}), mean of last 10 steps {last10:.4f}")
assert abs(first - math.log(256)) < 0.25, "initial loss should be close to ln(256)"
assert last10 < 2.5, f"loss did not fall below 2.5 nats (got {last10:.4f})"
assert all(math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 for r in rows)
print("ok: the tiny model learns")
PY
# the run ends with a checkpoint by default, and none with io.save_at_end=false
[ -d "$TMP/run/checkpoints/step-$(printf %08d "$STEPS")" ] || { echo "FAIL: no checkpoint after the last step"; exit 1; }
"$BIN" "$top_srcdir/configs/tiny.yaml" --set data.path="$SHARD" --set train.steps=2 --set train.device=cpu \
    --set io.run_dir="$TMP/nosave" --set io.save_at_end=false >"$TMP/log2" 2>&1 ||
    { cat "$TMP/log2"; echo "FAIL: training without a final checkpoint failed"; exit 1; }
[ ! -e "$TMP/nosave/checkpoints" ] || [ -z "$(ls "$TMP/nosave/checkpoints")" ] ||
    { echo "FAIL: io.save_at_end=false still wrote a checkpoint"; exit 1; }
echo "ok: io.save_at_end decides the final checkpoint"
