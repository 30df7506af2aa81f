#!/bin/bash
# GPU checks of the model-state placement (ZeRO 2-3, the optimizer on the
# host), on one GPU. Full logs go to LOG_DIR (default gpu-logs/); a short
# table is printed last.
#
#   scripts/gpu-zero.sh parity        tiny model: every stage and placement against ZeRO-1 on the GPU
#                                     (20 steps); Llama-3.1-8B at S = ZERO_SHORT_S (4096): the first
#                                     5 losses with the optimizer on the host against it on the GPU
#   scripts/gpu-zero.sh params        the weight shard on the host (optimizer.offload_params) against it on
#                                     the device, both ZeRO-3 with the optimizer on the host: the tiny
#                                     model (20 steps) and Llama-3.2-1B at S = 8192 (5 steps), losses
#                                     bitwise, plan vs measured memory (about 2 minutes)
#   scripts/gpu-zero.sh hostopt       only the host-optimizer run of parity's 8B check
#   scripts/gpu-zero.sh long [S]      Llama-3.1-8B, all 32 layers, at S (default 262144), 2 steps with
#                                     the placement the plan chooses: step time, MFU, plan vs measured
#                                     memory (device and host) and the host optimizer's time
#
# Uses the build in this tree (./autosp-train) and data/english.tok
# (scripts/setup.sh makes both).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${LOG_DIR:-gpu-logs}
mkdir -p "$LOG_DIR"
MODE=${1:-parity}
if [ -z "${CUDNN_LIB:-}" ]; then
    for d in /opt/torch/.venv/lib/python3*/site-packages/nvidia/cudnn/lib; do [ -d "$d" ] && CUDNN_LIB=$d; done
fi
[ -n "${CUDNN_LIB:-}" ] && export LD_LIBRARY_PATH="$CUDNN_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PY=${PYTHON:-$( [ -x /opt/torch/.venv/bin/python ] && echo /opt/torch/.venv/bin/python || echo python3)}
DATA="--set data.path=$PWD/data/english.tok --set io.save_at_end=false --set io.resume=never"
summary=()
note() { summary+=("$1"); echo "$1"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$LOG_DIR/gpu.txt"
grep -E "MemTotal|MemAvailable" /proc/meminfo | tee -a "$LOG_DIR/gpu.txt"

losses() { # run_dir -> losses, one per line
    "$PY" -c 'import json,sys; [print(json.loads(l)["loss"]) for l in open(sys.argv[1] + "/metrics.jsonl")]' "$1"
}
compare() { # what ref other tol
    "$PY" - "$LOG_DIR/$2" "$LOG_DIR/$3" "$4" <<'PY'
import json, sys
a = [json.loads(l)["loss"] for l in open(sys.argv[1] + "/metrics.jsonl")]
b = [json.loads(l)["loss"] for l in open(sys.argv[2] + "/metrics.jsonl")]
n = min(len(a), len(b))
worst = max(abs(x - y) for x, y in zip(a[:n], b[:n])) if n else float("inf")
print(f"{n} steps, worst loss difference {worst:.2e}: {'PASS' if n and worst <= float(sys.argv[3]) else 'FAIL'}")
PY
}

if [ "$MODE" = parity ]; then
    T="--set train.steps=20 --set io.log_every=5 --set train.device=cuda"
    ./autosp-train configs/tiny.yaml $DATA $T --set parallel.zero_stage=1 --set optimizer.offload=false \
        --set io.run_dir="$LOG_DIR/tiny-z1" >"$LOG_DIR/tiny-z1.log" 2>&1 || note "tiny ZeRO-1: FAILED"
    for st in 2 3; do for off in false true; do
        n="tiny-z$st-$off"
        if ./autosp-train configs/tiny.yaml $DATA $T --set parallel.zero_stage=$st --set optimizer.offload=$off \
            --set io.run_dir="$LOG_DIR/$n" >"$LOG_DIR/$n.log" 2>&1; then
            note "tiny, ZeRO-$st, optimizer on the host $off, against ZeRO-1: $(compare x tiny-z1 $n 1e-3)"
        else note "tiny ZeRO-$st host $off: FAILED ($(tail -1 "$LOG_DIR/$n.log"))"; fi
    done; done
    S=${ZERO_SHORT_S:-4096}
    B="--set train.seq_len=$S --set train.steps=5 --set io.log_every=1"
    ./autosp-train configs/llama31_8b.yaml $DATA $B --set parallel.zero_stage=1 --set optimizer.offload=false \
        --set io.run_dir="$LOG_DIR/8b-gpuopt" >"$LOG_DIR/8b-gpuopt.log" 2>&1 ||
        note "8B S=$S, optimizer on the GPU: FAILED ($(tail -1 "$LOG_DIR/8b-gpuopt.log"))"
    ./autosp-train configs/llama31_8b.yaml $DATA $B --set optimizer.offload=true \
        --set io.run_dir="$LOG_DIR/8b-hostopt" >"$LOG_DIR/8b-hostopt.log" 2>&1 ||
        note "8B S=$S, optimizer on the host: FAILED ($(tail -1 "$LOG_DIR/8b-hostopt.log"))"
    grep -h "ZeRO-\|step " "$LOG_DIR"/8b-*.log | head -20
    note "8B S=$S, first 5 losses, optimizer on the host vs on the GPU: $(compare x 8b-gpuopt 8b-hostopt 1e-3)"
elif [ "$MODE" = params ]; then
    for model in tiny 1b; do
        if [ $model = tiny ]; then C="configs/tiny.yaml --set train.steps=20 --set io.log_every=5"
        else C="configs/llama32_1b.yaml --set train.seq_len=8192 --set train.steps=5 --set io.log_every=1"; fi
        for prm in false true; do
            n="$model-z3-prm-$prm"
            ./autosp-train $C $DATA --set train.device=cuda --set parallel.zero_stage=3 --set optimizer.offload=true \
                --set optimizer.offload_params=$prm --set io.run_dir="$LOG_DIR/$n" >"$LOG_DIR/$n.log" 2>&1 ||
                note "$n: FAILED ($(tail -1 "$LOG_DIR/$n.log"))"
            note "$n: $(grep -h 'device memory: plan\|host memory: plan' "$LOG_DIR/$n.log" | sed 's/autosp-train: //' | tr '\n' ' ')"
        done
        note "$model, ZeRO-3 + host optimizer, weights on the host against on the device: $(compare x $model-z3-prm-false $model-z3-prm-true 0)"
    done
elif [ "$MODE" = hostopt ]; then
    # the host-optimizer half of parity's 8B check alone (its GPU-optimizer losses from an earlier call)
    S=${ZERO_SHORT_S:-4096}
    ./autosp-train configs/llama31_8b.yaml $DATA --set train.seq_len=$S --set train.steps=5 --set io.log_every=1 \
        --set optimizer.offload=true --set io.run_dir="$LOG_DIR/8b-hostopt" 2>&1 | tee "$LOG_DIR/8b-hostopt.log"
    note "8B S=$S, optimizer on the host, losses: $(losses "$LOG_DIR/8b-hostopt" | tr '\n' ' ')"
elif [ "$MODE" = long ]; then
    S=${2:-262144}
    n="8b-long-$S"
    ./autosp-train configs/llama31_8b.yaml $DATA --set train.seq_len=$S --set train.steps=2 --set io.log_every=1 \
        --set io.run_dir="$LOG_DIR/$n" 2>&1 | tee "$LOG_DIR/$n.log"
    note "8B S=$S: $(grep -E '^step +2/' "$LOG_DIR/$n.log" || echo 'no step 2 (see the log)')"
    note "$(grep -h 'device memory: plan\|host memory: plan\|ZeRO-' "$LOG_DIR/$n.log" | tr '\n' ' ')"
else
    echo "usage: scripts/gpu-zero.sh parity | params | hostopt | long [S]"; exit 2
fi
echo; echo "SUMMARY ($(head -1 "$LOG_DIR/gpu.txt"))"; printf '  %s\n' "${summary[@]}"
