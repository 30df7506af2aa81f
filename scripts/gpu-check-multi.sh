#!/bin/bash
# Multi-GPU checks on one node (2 GPUs or more): sequence and data parallelism on the
# GPU against one GPU, then the long-sequence benchmark against the hand-written PyTorch
# Ulysses baseline, in one call. Logs in LOG_DIR (default gpu-logs/); summary last.
#
#   scripts/gpu-check-multi.sh [--bench-only|--checks-only]
# Environment: NP (GPUs, default 2), BENCH_CONFIG (default configs/llama32_1b.yaml),
# BENCH_LAYERS (override its layer count), BENCH_SEQ (default 131072), BENCH_STEPS (3), LOG_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${LOG_DIR:-gpu-logs}; mkdir -p "$LOG_DIR"
NP=${NP:-2}; S=${BENCH_SEQ:-131072}; STEPS=${BENCH_STEPS:-3}
BCFG=${BENCH_CONFIG:-configs/llama32_1b.yaml}; BNAME=$(basename "$BCFG" .yaml)${BENCH_LAYERS:+-${BENCH_LAYERS}l}
MODE=${1:-all}
for d in /opt/torch/.venv/lib/python3*/site-packages/nvidia/cudnn/lib; do [ -d "$d" ] && CUDNN_LIB=${CUDNN_LIB:-$d}; done
[ -n "${CUDNN_LIB:-}" ] && export LD_LIBRARY_PATH="$CUDNN_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PY=${PYTHON:-$( [ -x /opt/torch/.venv/bin/python ] && echo /opt/torch/.venv/bin/python || echo python3)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
ROOT=""; [ "$(id -u)" = 0 ] && ROOT=--allow-run-as-root
DATA="--set data.path=$PWD/data/english.tok"
summary=()
note() { summary+=("$1"); echo "$1"; }

# name np config tol args...: run on 1 GPU and on np GPUs, compare loss curve and gradients
pair() {
    local name=$1 np=$2 cfg=$3 tol=$4; shift 4
    ./autosp-train "$cfg" $DATA --set io.run_dir="$LOG_DIR/$name-1" --dump-grads "$LOG_DIR/$name-1.bin" "$@" \
        --set parallel.sequence_parallel_size=1 >"$LOG_DIR/$name-1.log" 2>&1 || { note "$name: 1-GPU run FAILED"; return; }
    mpirun -np "$np" $ROOT --bind-to none ./autosp-train "$cfg" $DATA --set io.run_dir="$LOG_DIR/$name-$np" \
        --dump-grads "$LOG_DIR/$name-$np.bin" "$@" >"$LOG_DIR/$name-$np.log" 2>&1 || { note "$name: $np-GPU run FAILED"; tail -5 "$LOG_DIR/$name-$np.log"; return; }
    if ./tests/dump_compare "$cfg" "$LOG_DIR/$name-1.bin" "$LOG_DIR/$name-$np.bin" "$tol" $CMP_SETS >"$LOG_DIR/$name-cmp.txt" 2>&1; then r=PASS; else r=FAIL; fi
    note "$name: $r ($(grep -E '^loss step 1:' "$LOG_DIR/$name-cmp.txt" | head -1); last $(grep -E '^loss step' "$LOG_DIR/$name-cmp.txt" | tail -1 | cut -d: -f2-); $(tail -1 "$LOG_DIR/$name-cmp.txt"))"
}

if [ "$MODE" != --bench-only ]; then
    T="--set train.steps=20 --set io.log_every=5"
    CMP_SETS=""
    pair tiny-sp$NP "$NP" configs/tiny.yaml 5e-2 $T --set parallel.sequence_parallel_size=$NP
    CMP_SETS="model.num_key_value_heads=1"
    pair tiny-kvrep-sp$NP "$NP" configs/tiny.yaml 5e-2 $T --set model.num_key_value_heads=1 --set parallel.sequence_parallel_size=$NP
    CMP_SETS=""
    pair tiny-dp$NP "$NP" configs/tiny.yaml 5e-2 $T --set train.global_batch_size=8
    CMP_SETS="model.num_hidden_layers=2"
    pair 1b2l-sp$NP "$NP" configs/llama32_1b.yaml 5e-2 $T --set model.num_hidden_layers=2 --set train.seq_len=8192 \
        --set parallel.sequence_parallel_size=$NP
    pair 8b2l-sp$NP "$NP" configs/llama31_8b.yaml 5e-2 $T --set model.num_hidden_layers=2 --set train.seq_len=8192 \
        --set parallel.sequence_parallel_size=$NP
fi

if [ "$MODE" != --checks-only ]; then
    B="--set train.seq_len=$S --set train.steps=$STEPS --set io.log_every=1 --set io.save_at_end=false"
    [ -n "${BENCH_LAYERS:-}" ] && B="$B --set model.num_hidden_layers=$BENCH_LAYERS"
    ./autosp-train "$BCFG" $DATA $B --set io.run_dir="$LOG_DIR/bench-$BNAME-sp1" >"$LOG_DIR/bench-$BNAME-sp1.log" 2>&1
    mpirun -np "$NP" $ROOT --bind-to none ./autosp-train "$BCFG" $DATA $B --set parallel.sequence_parallel_size=$NP \
        --set io.run_dir="$LOG_DIR/bench-$BNAME-sp$NP" >"$LOG_DIR/bench-$BNAME-sp$NP.log" 2>&1
    PYTHONUNBUFFERED=1 mpirun -np "$NP" $ROOT --bind-to none "$PY" bench/torch_baseline.py "$BCFG" \
        ${BENCH_LAYERS:+--layers $BENCH_LAYERS} --seq-len "$S" --warmup 1 --steps "$STEPS" \
        >"$LOG_DIR/bench-$BNAME-torch-ulysses.jsonl" 2>"$LOG_DIR/bench-$BNAME-torch-ulysses.err"
    "$PY" - "$LOG_DIR" "$NP" "$S" "$BNAME" <<'PY'
import json, statistics, sys, os
d, np_, S, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def autosp(run):
    p = f"{d}/{run}/metrics.jsonl"
    if not os.path.exists(p): return None
    rows = [json.loads(l) for l in open(p)][1:]
    keys = ("tokens_per_s", "tflops", "mfu", "peak_gib", "ms", "a2a_ms", "grad_comm_ms", "grad_exposed_ms")
    return rows and {k: statistics.median(r.get(k, 0) for r in rows) for k in keys}
print(f"== {name}, S = {S}")
print(f"{'run':<28}{'tokens/s':>10}{'TFLOP/s/GPU':>13}{'MFU':>8}{'peak GiB':>10}")
a1, an = autosp(f"bench-{name}-sp1"), autosp(f"bench-{name}-sp{np_}")
for label, r in ((f"autosp-train SP=1 S={S}", a1), (f"autosp-train SP={np_} S={S}", an)):
    print(f"{label:<28}" + (f"{r['tokens_per_s']:>10.0f}{r['tflops']:>13.1f}{100*r['mfu']:>7.1f}%{r['peak_gib']:>10.1f}" if r else "   failed"))
t = [json.loads(l) for l in open(f"{d}/bench-{name}-torch-ulysses.jsonl") if l.startswith("{")]
for r in t:
    print(f"{'torch Ulysses SP=%d' % np_:<28}" + (f"{r['tokens_per_s']:>10.0f}{r['tflops_per_gpu']:>13.1f}{100*r['mfu']:>7.1f}%{r['peak_gib']:>10.1f}" if not r.get("oom") else "   OOM"))
if a1 and an:
    print(f"MFU ratio SP={np_} / SP=1: {an['mfu']/a1['mfu']:.3f}")
if an:
    print(f"SP={np_} step {an['ms']:.0f} ms: all-to-alls {an['a2a_ms']:.0f} ms ({100*an['a2a_ms']/an['ms']:.1f}%), "
          f"gradient reduction {an['grad_comm_ms']:.0f} ms of which exposed {an['grad_exposed_ms']:.1f} ms "
          f"({100*an['grad_exposed_ms']/an['ms']:.2f}% of the step)")
if an and t and not t[0].get("oom"):
    print(f"speed-up over torch Ulysses: {an['tokens_per_s']/t[0]['tokens_per_s']:.2f}x")
PY
fi
echo; for line in "${summary[@]}"; do echo "$line"; done
