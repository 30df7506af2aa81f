#!/bin/bash
# On a machine with one GPU: the README's fine-tuning example on the GPU
# engine, and the masked-shard parity with transformers on the GPU. The tiny
# model trains on the English text and exports runs/.../hf; the byte
# tokenizer and its chat template go beside it; a chat JSONL made from the
# text becomes a masked shard (prepare_data.py --chat) with a validation
# split; configs/tiny_chat.yaml fine-tunes from the export; metrics.jsonl must
# show training and validation losses over targets only, falling. Then
# tests/test_hf_parity.sh with HF_PARITY_DEVICES=cpu,cuda (bf16 tolerances on
# the GPU), when torch and transformers can be imported. Logs in LOG_DIR
# (default $OUT/finetune when OUT is set, else gpu-logs/finetune); a table last.
# HF_PARITY=0 leaves the parity out.
#
#   scripts/gpu-finetune.sh
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${LOG_DIR:-${OUT:+$OUT/finetune}}
LOG_DIR=${LOG_DIR:-gpu-logs/finetune}
mkdir -p "$LOG_DIR"
if [ -z "${CUDNN_LIB:-}" ]; then
    for d in /opt/torch/.venv/lib/python3*/site-packages/nvidia/cudnn/lib; do [ -d "$d" ] && CUDNN_LIB=$d; done
fi
[ -n "${CUDNN_LIB:-}" ] && export LD_LIBRARY_PATH="$CUDNN_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -x ./autosp-train ] || ./scripts/setup.sh >"$LOG_DIR/setup.log" 2>&1 || { tail -20 "$LOG_DIR/setup.log"; exit 1; }
[ -f data/english_val.tok ] || python3 scripts/text_to_shard.py data/english.txt data/english.tok --val data/english_val.tok
rows=()
row() { rows+=("$(printf '%-44s %s' "$1" "$2")"); echo "$1: $2"; }
R="$LOG_DIR/runs"; rm -rf "$R"; mkdir -p "$R"; R=$(cd "$R" && pwd)

# 1. the tiny run on the GPU, exported
./autosp-train configs/tiny.yaml --set train.device=cuda --set io.export_hf=true --set io.run_dir="$R/tiny" \
    >"$LOG_DIR/tiny.log" 2>&1 && [ -f "$R/tiny/hf/config.json" ] &&
    row "tiny run on the GPU, exported" "PASS ($(tail -1 "$LOG_DIR/tiny.log" | cut -c1-70))" ||
    row "tiny run on the GPU, exported" "FAIL (see $LOG_DIR/tiny.log)"

# 2. tokenizer + chat template, chat JSONL, masked shards
{ python3 scripts/byte_tokenizer.py "$R/tiny/hf" && python3 scripts/make_chat_data.py data/english.txt "$R/chat.jsonl" &&
  python3 scripts/prepare_data.py --chat --tokenizer "$R/tiny/hf" "$R/chat.jsonl" --output "$R/chat.tok" \
      --val "$R/chat_val.tok" --seq-len 256; } >"$LOG_DIR/prepare.log" 2>&1 &&
    row "prepare_data.py --chat" "PASS ($(grep -o '[0-9]* conversations, [0-9]* tokens of which [0-9]* targets' "$LOG_DIR/prepare.log"))" ||
    row "prepare_data.py --chat" "FAIL (see $LOG_DIR/prepare.log)"

# 3. fine-tune from the export on the GPU: training and validation losses over targets, falling
./autosp-train configs/tiny_chat.yaml --set train.device=cuda --set model.from_pretrained="$R/tiny/hf" \
    --set data.path="$R/chat.tok" --set data.val_path="$R/chat_val.tok" --set io.run_dir="$R/chat" \
    >"$LOG_DIR/chat.log" 2>&1
rc=$?
if [ $rc = 0 ] && python3 - "$R/chat/metrics.jsonl" >"$LOG_DIR/chat-check.txt" 2>&1 <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = [r for r in rows if "loss" in r]
val = [r for r in rows if "val_loss" in r]
assert len(train) == 60 and len(val) >= 3, (len(train), len(val))
assert all(r["valid_targets"] < 8 * 256 for r in train), "every target counted: the mask did not reach the loss"
assert val[-1]["val_loss"] < val[0]["val_loss"] and train[-1]["loss"] < train[0]["loss"]
print(f"loss {train[0]['loss']:.3f} -> {train[-1]['loss']:.3f}, val {val[0]['val_loss']:.3f} -> "
      f"{val[-1]['val_loss']:.3f}, {train[0]['valid_targets']} targets of {8 * 256} tokens in step 1")
PY
then row "fine-tune on the GPU (tiny_chat.yaml)" "PASS ($(cat "$LOG_DIR/chat-check.txt"))"
else row "fine-tune on the GPU (tiny_chat.yaml)" "FAIL (status $rc; see $LOG_DIR/chat.log, $LOG_DIR/chat-check.txt)"; fi

# 4. transformers parity on the GPU, target masks included
if [ "${HF_PARITY:-1}" = 0 ]; then
    row "transformers parity, CPU and GPU" "not run (HF_PARITY=0)"
elif python3 -c "import torch, transformers" >/dev/null 2>&1; then
    HF_PARITY_DEVICES=cpu,cuda top_srcdir=. top_builddir=. sh tests/test_hf_parity.sh >"$LOG_DIR/hf-parity.log" 2>&1
    rc=$?
    row "transformers parity, CPU and GPU" "$([ $rc = 0 ] && echo PASS || echo "FAIL (status $rc)") ($(grep -c '^ok:' "$LOG_DIR/hf-parity.log") ok, $(grep -c '^FAIL' "$LOG_DIR/hf-parity.log") failed; masked on the GPU: $(grep 'target mask on the GPU' "$LOG_DIR/hf-parity.log" | grep -c '^ok:') ok)"
else
    row "transformers parity, CPU and GPU" "SKIP (python3 cannot import torch and transformers: scripts/python-deps.sh --test)"
fi

echo
printf '%s\n' "${rows[@]}"
printf '%s\n' "${rows[@]}" >"$LOG_DIR/summary.txt"
! printf '%s\n' "${rows[@]}" | grep -q FAIL
