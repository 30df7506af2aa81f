#!/bin/bash
# On a machine with one GPU: the first-hour behaviour on the GPU engine (the
# CPU tests cover the rest). The step line with progress, ETA and window
# rates; progress lines inside a long step (host side: the layer the host has
# issued); a SIGUSR2 stop that writes a checkpoint and exits 0; a resume from
# it; the NCCL-free single-GPU path with the new host-collective deadline;
# --version naming the CUDA build. About 2 minutes. Full logs in LOG_DIR
# (default gpu-logs/first-hour); a table last.
#
#   scripts/gpu-check-first-hour.sh
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${LOG_DIR:-gpu-logs/first-hour}
mkdir -p "$LOG_DIR"
if [ -z "${CUDNN_LIB:-}" ]; then
    for d in /opt/torch/.venv/lib/python3*/site-packages/nvidia/cudnn/lib; do [ -d "$d" ] && CUDNN_LIB=$d; done
fi
[ -n "${CUDNN_LIB:-}" ] && export LD_LIBRARY_PATH="$CUDNN_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -f data/english.tok ] || python3 scripts/text_to_shard.py data/english.txt data/english.tok >/dev/null
rows=()
row() { rows+=("$(printf '%-44s %s' "$1" "$2")"); echo "$1: $2"; }
BIN=./autosp-train
R="$LOG_DIR/runs"; rm -rf "$R"; mkdir -p "$R"

# 1. --version names the CUDA build
$BIN --version >"$LOG_DIR/version.txt" 2>&1
grep -q "backends: cpu, cuda (CUDA" "$LOG_DIR/version.txt" && row "--version" "PASS ($(head -1 "$LOG_DIR/version.txt"))" ||
    row "--version" "FAIL (see $LOG_DIR/version.txt)"

# 2. 1B shape at S = 32K, 4 layers, 6 steps on the GPU: step lines with %, ETA;
#    progress lines inside the steps (ASP_PROGRESS_S=0.2)
ASP_PROGRESS_S=0.2 $BIN configs/llama32_1b.yaml --set data.path=data/english.tok --set model.num_hidden_layers=4 \
    --set train.seq_len=32768 --set train.steps=6 --set io.log_every=3 --set io.run_dir="$R/long" \
    >"$LOG_DIR/long.log" 2>&1
rc=$?
lines=$(grep -cE '^step +[0-9]+/6 \([0-9.]+%\) .*\| elapsed [^|]+ \| ETA ' "$LOG_DIR/long.log")
prog=$(grep -cE '^  step [0-9]+/6: (forward|backward) layer' "$LOG_DIR/long.log")
[ $rc = 0 ] && [ "$lines" -ge 3 ] && row "step lines (1B, 4 layers, S 32K)" "PASS ($lines lines: $(grep '^step' "$LOG_DIR/long.log" | tail -1 | cut -c1-60)...)" ||
    row "step lines (1B, 4 layers, S 32K)" "FAIL (status $rc, $lines step lines; see $LOG_DIR/long.log)"
row "progress lines inside steps" "$([ "$prog" -ge 1 ] && echo "PASS ($prog lines, e.g. '$(grep -E '^  step' "$LOG_DIR/long.log" | tail -1 | sed 's/^ *//')')" || echo "NONE (the host ran ahead of the GPU: see $LOG_DIR/long.log)")"

# 3. SIGUSR2: clean stop with a checkpoint, status 0; then resume from it
$BIN configs/tiny.yaml --set data.path=data/english.tok --set train.steps=100000 --set io.log_every=1 \
    --set io.run_dir="$R/usr2" >"$LOG_DIR/usr2.log" 2>&1 &
pid=$!
for i in $(seq 1 300); do grep -q '^step  *20/' "$LOG_DIR/usr2.log" 2>/dev/null && break; sleep 0.1; done
kill -USR2 $pid; wait $pid; rc=$?
ck=$(ls -d "$R"/usr2/checkpoints/step-???????? 2>/dev/null | tail -1)
[ $rc = 0 ] && [ -n "$ck" ] && grep -q "stopped on request (SIGUSR2)" "$LOG_DIR/usr2.log" &&
    row "SIGUSR2 stop on the GPU" "PASS (status 0, $(basename "$ck"))" || row "SIGUSR2 stop on the GPU" "FAIL (status $rc; see $LOG_DIR/usr2.log)"
steps=$(sed -n 's/^step \([0-9]*\)$/\1/p' "$ck/state" 2>/dev/null)
$BIN configs/tiny.yaml --set data.path=data/english.tok --set train.steps=$((steps + 5)) --set io.log_every=1 \
    --set io.run_dir="$R/usr2" >"$LOG_DIR/resume.log" 2>&1
rc=$?
[ $rc = 0 ] && grep -q "resumed from .*$(basename "$ck")" "$LOG_DIR/resume.log" &&
    row "resume on the GPU (model settings checked)" "PASS (5 more steps from $(basename "$ck"))" ||
    row "resume on the GPU (model settings checked)" "FAIL (status $rc; see $LOG_DIR/resume.log)"
$BIN configs/tiny.yaml --set data.path=data/english.tok --set train.steps=$((steps + 6)) --set model.rope_theta=500000 \
    --set io.run_dir="$R/usr2" >"$LOG_DIR/mismatch.log" 2>&1
rc=$?
[ $rc = 2 ] && grep -q "model.rope_theta is 10000 in the checkpoint but 500000" "$LOG_DIR/mismatch.log" &&
    row "resume under another rope_theta refused" "PASS (status 2)" || row "resume under another rope_theta refused" "FAIL (status $rc)"

echo
echo "== first hour on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
printf '%s\n' "${rows[@]}"
