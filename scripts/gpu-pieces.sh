#!/bin/bash
# Attention in pieces on one GPU (checkpointing.attention_pieces). Each mode
# is one call; logs go to $OUT/pieces when OUT is set, else LOG_DIR (default
# gpu-logs/pieces); a short table is printed last.
#
#   scripts/gpu-pieces.sh MODE
#
#   ops     the CUDA op tests against the CPU reference (the matmul on
#           windows, t_matmul_slice, among them), then the tiny model with 16
#           query / 8 KV heads on the GPU, 20 steps at every piece count
#           (1, 2, 4, 8; full recompute, so the region is rebuilt before the
#           backward too) against whole attention on the GPU, and 8 pieces on
#           the GPU against whole attention on the CPU (about 3 minutes)
#   sweep   Llama-3.1-8B at one long S (SEQ, default 131072), 2 steps at each
#           piece count 1, 2, 4, 8: step time and the workspace's peak by
#           piece count (about 8 minutes on an H100)
#   auto    Llama-3.1-8B at SEQ (default 131072 on an H100; 262144 on an
#           H200), 2 steps as auto plans it: layers keeping attention's
#           outputs, MFU at step 2, host AdamW's exposed time, device and
#           host peaks against the plan (about 4 minutes)
#   longest Llama-3.1-8B, 1 step at the longest S --explain names for this
#           card and host (about 6 minutes)
#
# Environment: OUT or LOG_DIR, SEQ, CUDNN_LIB (default: PyTorch's bundled
# cuDNN), PYTHON. Uses the build in this tree.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
if [ -n "${OUT:-}" ]; then LOG_DIR=$OUT/pieces; else LOG_DIR=${LOG_DIR:-gpu-logs/pieces}; fi
mkdir -p "$LOG_DIR"
if [ -z "${CUDNN_LIB:-}" ]; then
    for d in /opt/torch/.venv/lib/python3*/site-packages/nvidia/cudnn/lib; do [ -d "$d" ] && CUDNN_LIB=$d; done
fi
[ -n "${CUDNN_LIB:-}" ] && export LD_LIBRARY_PATH="$CUDNN_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PY=${PYTHON:-$( [ -x /opt/torch/.venv/bin/python ] && echo /opt/torch/.venv/bin/python || echo python3)}
[ -f data/english.tok ] || python3 scripts/text_to_shard.py data/english.txt data/english.tok >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOG_DIR/gpu.txt"
GPU_GIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | awk '{ printf "%d", $1 / 1024 }')
HOST_GIB=$(free -g | awk '/^Mem:/ {print $2}')
DATA="--set data.path=$PWD/data/english.tok --set io.log_every=1 --set io.save_at_end=false --set io.resume=never"

run8b() { # name seq steps args...: Llama-3.1-8B, its --explain and its run
    name=$1; seq=$2; steps=$3; shift 3
    C="configs/llama31_8b.yaml $DATA --set train.device=cuda --set train.seq_len=$seq --set train.steps=$steps"
    ./autosp-train $C "$@" --gpu-memory "$GPU_GIB" --host-memory "$HOST_GIB" --explain >"$LOG_DIR/$name.explain" 2>&1
    echo "== $name: S=$seq, $steps steps, $*"
    local t0=$(date +%s)
    ./autosp-train $C --set io.run_dir="$LOG_DIR/run-$name" "$@" >"$LOG_DIR/$name.log" 2>"$LOG_DIR/$name.err"
    echo "   exit $? after $(( $(date +%s) - t0 )) s"
}

table() { # names...: step 2's figures and the plan's
    "$PY" - "$LOG_DIR" "$@" <<'PY' | tee -a "$LOG_DIR/summary.txt"
import json, re, sys
d, names = sys.argv[1], sys.argv[2:]
def grab(pat, text, conv=str, default=""):
    m = re.search(pat, text)
    return conv(m.group(1)) if m else default
print(f"{'run':<12} {'pieces':<8} {'kept in':<10} {'step 2 ms':>10} {'MFU':>6} {'AdamW exp ms':>12} {'ws peak':>12} "
      f"{'dev plan':>12} {'dev meas':>12} {'host plan':>12} {'host alloc':>12}")
for n in names:
    ex = open(f"{d}/{n}.explain").read()
    log = open(f"{d}/{n}.log").read() + open(f"{d}/{n}.err").read()
    try:
        ms = [json.loads(l) for l in open(f"{d}/run-{n}/metrics.jsonl")]
    except OSError:
        ms = []
    last = ms[-1] if ms else {}
    pieces = grab(r"attention in (\d+) pieces", ex, str, "1")
    kept = grab(r"attention's outputs fit in (\d+ of \d+) layers", ex, str,
                "none" if "attention recomputed" in ex or "as policy full" in ex else "all")
    print(f"{n:<12} {pieces:<8} {kept:<10} {last.get('ms', float('nan')):>10.0f} {100 * last.get('mfu', 0):>5.1f}% "
          f"{last.get('host_optimizer_exposed_ms', 0):>12.0f} {grab(r'workspace peak: ([\d.]+ \w+)', ex):>12} "
          f"{grab(r'predicted device peak +\d+ B +([\d.]+ \w+)', ex):>12} "
          f"{grab(r'measured ([\d.]+ \w+) allocated by the engine', log):>12} "
          f"{grab(r'pinned host +\d+ B +([\d.]+ \w+)', ex):>12} {grab(r'; allocated ([\d.]+ \w+) \(', log):>12}")
PY
}

case "$MODE" in
ops)
    ./tests/test_cuda_ops >"$LOG_DIR/ops.log" 2>&1
    echo "op tests: exit $? ($(grep -c 'matmul_slice' "$LOG_DIR/ops.log") matmul_slice lines)"
    grep -E "matmul_slice|Checks|Failure" "$LOG_DIR/ops.log" | tail -20
    T="configs/tiny.yaml $DATA --set train.seq_len=1024 --set train.global_batch_size=2 --set train.steps=20"
    T="$T --set model.num_attention_heads=16 --set model.num_key_value_heads=8 --set model.head_dim=8"
    T="$T --set model.num_hidden_layers=2 --set checkpointing.policy=full"
    K="model.num_attention_heads=16 model.num_key_value_heads=8 model.head_dim=8 model.num_hidden_layers=2"
    ./autosp-train $T --set train.device=cpu --set io.run_dir="$LOG_DIR/tiny-cpu" --dump-grads "$LOG_DIR/tiny-cpu.bin" \
        >"$LOG_DIR/tiny-cpu.log" 2>&1 || echo "tiny on the cpu: exit $?"
    for G in 1 2 4 8; do
        ./autosp-train $T --set train.device=cuda --set checkpointing.attention_pieces=$G \
            --set io.run_dir="$LOG_DIR/tiny-g$G" --dump-grads "$LOG_DIR/tiny-g$G.bin" >"$LOG_DIR/tiny-g$G.log" 2>&1 ||
            echo "tiny, $G pieces: exit $?"
    done
    for G in 2 4 8; do
        ./tests/dump_compare configs/tiny.yaml "$LOG_DIR/tiny-g1.bin" "$LOG_DIR/tiny-g$G.bin" 5e-2 $K \
            >"$LOG_DIR/tiny-cmp-g$G.txt" 2>&1; echo "GPU, $G pieces vs whole (bf16, 5e-2): exit $? | $(tail -1 "$LOG_DIR/tiny-cmp-g$G.txt")"
    done
    ./tests/dump_compare configs/tiny.yaml "$LOG_DIR/tiny-cpu.bin" "$LOG_DIR/tiny-g8.bin" 5e-2 $K >"$LOG_DIR/tiny-cmp-cpu.txt" 2>&1
    echo "GPU 8 pieces vs CPU whole (bf16 vs fp32, 5e-2): exit $? | $(tail -1 "$LOG_DIR/tiny-cmp-cpu.txt")"
    ;;
sweep)
    S=${SEQ:-131072}
    for G in 1 2 4 8; do run8b "g$G" "$S" 2 --set checkpointing.attention_pieces=$G; done
    table g1 g2 g4 g8
    ;;
auto)
    S=${SEQ:-$([ "$GPU_GIB" -ge 120 ] && echo 262144 || echo 131072)}
    run8b "auto-$S" "$S" 2
    table "auto-$S"
    ;;
longest)
    S=$(./autosp-train configs/llama31_8b.yaml --gpu-memory "$GPU_GIB" --host-memory "$HOST_GIB" --explain 2>&1 |
        sed -n 's/^LONGEST S that fits.*: \([0-9]*\) tokens with.*/\1/p' | head -1)
    [ -n "$S" ] || { echo "no longest S from --explain"; exit 1; }
    run8b "longest" "$S" 1
    table longest
    ;;
*)
    echo "usage: scripts/gpu-pieces.sh ops|sweep|auto|longest"; exit 2 ;;
esac
