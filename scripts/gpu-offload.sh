#!/bin/bash
# Activation offload on one GPU: the plan with the host tier against the
# device-only plan (checkpointing.offload=false), Llama-3.2-1B shape. Each
# mode is one call; full logs go to LOG_DIR (default gpu-logs/offload), a
# short table is printed last.
#
#   scripts/gpu-offload.sh MODE
#
#   tiny       the op tests (the copy stream among them), then the tiny model
#              with a budget that offloads against the run without a budget:
#              losses and gradients (about 3 minutes)
#   262k       S = 262,144 under checkpointing.memory_budget_gib: 60, 3 steps
#              each, offload on and off, plus the measured PCIe bandwidth
#              (about 5 minutes)
#   262k-full  S = 262,144 at the whole card, 3 steps each, offload on and off
#              (about 5 minutes)
#   786k       S = 786,432 at the whole card, 1 step, offload on (about 6 minutes)
#
# Environment: LOG_DIR, STEPS (override the step count), CUDNN_LIB (default:
# PyTorch's bundled cuDNN), PYTHON. Uses the build in this tree.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
LOG_DIR=${LOG_DIR:-gpu-logs/offload}
mkdir -p "$LOG_DIR"
if [ -z "${CUDNN_LIB:-}" ]; then
    for d in /opt/torch/.venv/lib/python3*/site-packages/nvidia/cudnn/lib; do [ -d "$d" ] && CUDNN_LIB=$d; done
fi
[ -n "${CUDNN_LIB:-}" ] && export LD_LIBRARY_PATH="$CUDNN_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PY=${PYTHON:-$( [ -x /opt/torch/.venv/bin/python ] && echo /opt/torch/.venv/bin/python || echo python3)}
[ -f data/english.tok ] || python3 scripts/text_to_shard.py data/english.txt data/english.tok >/dev/null
CFG=configs/llama32_1b.yaml
# the optimizer stays on the GPU at ZeRO-1 in every run: only the activations' placement differs
DATA="--set data.path=$PWD/data/english.tok --set io.log_every=1 --set io.save_at_end=false --set train.device=cuda
      --set parallel.zero_stage=1 --set optimizer.offload=false"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOG_DIR/gpu.txt"
free -g | tee "$LOG_DIR/host.txt"

# PCIe bandwidth, pinned memory, 1 GiB each way (the plan assumes 50 GB/s:
# checkpointing.host_bandwidth_gbs).
bandwidth() {
    "$PY" - <<'PY' | tee "$LOG_DIR/pcie.txt"
import torch
n = 1 << 30
h = torch.empty(n, dtype=torch.uint8, pin_memory=True)
d = torch.empty(n, dtype=torch.uint8, device="cuda")
def rate(f):
    for _ in range(2): f()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(5):
        a.record(); f(); b.record(); b.synchronize(); ts.append(a.elapsed_time(b) / 1e3)
    ts.sort()
    return n / ts[2] / 1e9
h2d = rate(lambda: d.copy_(h, non_blocking=True))
d2h = rate(lambda: h.copy_(d, non_blocking=True))
print(f"PCIe pinned copies, 1 GiB: H2D {h2d:.1f} GB/s, D2H {d2h:.1f} GB/s (plan assumes 50 each way)")
PY
}

run() { # name seq steps args...
    name=$1; seq=$2; steps=${STEPS:-$3}; shift 3
    ./autosp-train $CFG $DATA --set train.seq_len=$seq --set train.steps=$steps --set io.run_dir="$LOG_DIR/run-$name" \
        "$@" --gpu-memory 139 --host-memory 128 --explain >"$LOG_DIR/$name.explain" 2>&1
    echo "== $name: S=$seq, $steps steps, $*"
    local t0=$(date +%s)
    ./autosp-train $CFG $DATA --set train.seq_len=$seq --set train.steps=$steps --set io.run_dir="$LOG_DIR/run-$name" \
        --set io.resume=never "$@" >"$LOG_DIR/$name.log" 2>"$LOG_DIR/$name.err"
    echo "   exit $? after $(( $(date +%s) - t0 )) s ($(grep -c '^step' "$LOG_DIR/$name.log") step lines)"
}

table() { # names...
    "$PY" - "$LOG_DIR" "$@" <<'PY' | tee "$LOG_DIR/summary-$MODE.txt"
import json, re, statistics, sys
d, names = sys.argv[1], sys.argv[2:]
def grab(pat, text, conv=float, default=None):
    m = re.search(pat, text)
    return conv(m.group(1)) if m else default
def gib(s):
    m = re.match(r"([\d.]+) (B|KiB|MiB|GiB|TiB)", s)
    return float(m.group(1)) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[m.group(2)] / 2**30
rows = []
for n in names:
    ex = open(f"{d}/{n}.explain").read()
    log = open(f"{d}/{n}.log").read() + open(f"{d}/{n}.err").read()
    try:
        ms = [json.loads(l) for l in open(f"{d}/run-{n}/metrics.jsonl")]
    except OSError:
        ms = []
    steps = ms[1:] if len(ms) > 1 else ms
    step_ms = statistics.median(m["ms"] for m in steps) if steps else float("nan")
    tok = statistics.median(m["tokens_per_s"] for m in steps) if steps else float("nan")
    mfu = statistics.median(m["mfu"] for m in steps) if steps else float("nan")
    exp = statistics.median(m.get("copy_exposed_ms", 0) for m in steps) if steps else float("nan")
    cpy = statistics.median(m.get("copy_ms", 0) for m in steps) if steps else float("nan")
    moved = statistics.median(m.get("offload_gib", 0) for m in steps) if steps else float("nan")
    plan_dev = grab(r"predicted device peak +\d+ B +([\d.]+ \w+)", ex, gib)
    plan_host = grab(r"pinned host +\d+ B +([\d.]+ \w+)", ex, gib, 0.0)
    arenas = grab(r"plan predicts ([\d.]+ \w+) of arenas", log, gib)
    reserved = grab(r"\(\+ ([\d.]+ \w+) reserved", log, gib, 0.0)
    measured = grab(r"measured ([\d.]+ \w+) allocated by the engine", log, gib)
    dev_err = (measured / arenas - 1) * 100 if measured and arenas else float("nan")
    host_alloc = grab(r"; allocated ([\d.]+ \w+) \(", log, gib, 0.0)
    rss = grab(r"process peak resident ([\d.]+ \w+)", log, gib, float("nan"))
    host_err = (host_alloc / plan_host - 1) * 100 if plan_host else 0.0
    attn = "recomputed" if "attention recomputed in some layers" in ex else "kept"
    per_layer = grab(r"attention's outputs fit in (\d+ of \d+) layers", ex, str, "")
    ok = "ok" if re.search(r"^done: ", log, re.M) else "FAILED"
    losses = " ".join(f"{m['loss']:.4f}" for m in ms)
    rows.append((n, ok, attn + (f" ({per_layer} rich)" if per_layer else ""), step_ms, tok, mfu, plan_dev, measured,
                 dev_err, plan_host, host_alloc, host_err, rss, moved, cpy, exp,
                 100 * exp / step_ms if step_ms == step_ms and step_ms else float("nan"), losses))
print(f"{'run':<16} {'run?':<6} {'attention':<22} {'step ms':>10} {'tok/s':>8} {'MFU':>6} {'dev plan':>9} "
      f"{'dev meas':>9} {'dev err':>8} {'host plan':>9} {'host alloc':>10} {'host err':>8} {'RSS GiB':>8} "
      f"{'moved GiB':>9} {'copy ms':>9} {'exposed':>9} {'exp %':>6}")
for r in rows:
    print(f"{r[0]:<16} {r[1]:<6} {r[2]:<22} {r[3]:>10.0f} {r[4]:>8.0f} {100*r[5]:>5.1f}% {r[6] or 0:>9.2f} "
          f"{r[7] or 0:>9.2f} {r[8]:>7.1f}% {r[9]:>9.2f} {r[10]:>10.2f} {r[11]:>7.1f}% {r[12]:>8.1f} "
          f"{r[13]:>9.2f} {r[14]:>9.1f} {r[15]:>9.1f} {r[16]:>5.2f}%")
print("dev plan: --explain's device peak (139 GiB card, its own 2.65 GiB reserve); dev meas: what the engine allocated,")
print("dev err: measured vs the run's own planned arenas; host: pinned bytes planned and allocated; RSS: process peak")
for r in rows:
    print(f"{r[0]:<16} losses {r[17]}")
by = {r[0]: r for r in rows}
for on, off in (("offload-60", "device-60"), ("offload-full", "device-full")):
    if on in by and off in by:
        print(f"{on} vs {off}: step {by[on][3]:.0f} ms vs {by[off][3]:.0f} ms = {100 * (1 - by[on][3] / by[off][3]):+.1f}% "
              f"faster; exposed copy {by[on][16]:.2f}% of the step")
PY
}

case "$MODE" in
tiny)
    # The copy stream alone (t_copy_stream among the op tests), then the tiny model, 8 layers at S = 4096, with a budget at which the run
    # offloads attention's outputs: found from the full policy's planned
    # peak upward, one-step runs, as the budget depends on the device's reserve.
    ./tests/test_cuda_ops >"$LOG_DIR/ops.log" 2>&1
    echo "op tests: exit $? ($(grep -c ':P:' "$LOG_DIR/ops.log") passed, $(grep -c ':[EF]:' "$LOG_DIR/ops.log") failed)"
    grep -h "copy stream:\|t_copy_stream" "$LOG_DIR/ops.log"
    T="configs/tiny.yaml --set data.path=$PWD/data/english.tok --set io.log_every=1 --set io.save_at_end=false"
    T="$T --set train.device=cuda --set train.seq_len=4096 --set model.num_hidden_layers=8 --set train.global_batch_size=1"
    ./autosp-train $T --set train.steps=1 --set checkpointing.policy=full --set io.run_dir="$LOG_DIR/tiny-probe" \
        --set io.resume=never >"$LOG_DIR/tiny-full.log" 2>&1
    lo=$(sed -n 's/.*reserved for libraries; \([0-9]*\) B in all.*/\1/p' "$LOG_DIR/tiny-full.log")
    g=""
    for k in $(seq 0 39); do
        [ -n "$lo" ] || break
        try=$(awk -v b="$lo" -v k="$k" 'BEGIN { printf "%.12f", (b + k * 262144) / 1073741824 }')
        ./autosp-train $T --set train.steps=1 --set checkpointing.memory_budget_gib=$try \
            --set io.run_dir="$LOG_DIR/tiny-probe" --set io.resume=never >"$LOG_DIR/tiny-probe.log" 2>&1
        if grep -q "| offload " "$LOG_DIR/tiny-probe.log"; then g=$try; break; fi
    done
    [ -n "$g" ] || { echo "tiny: no budget made the run offload (see $LOG_DIR/tiny-probe.log)"; exit 1; }
    for v in ref off; do
        b=""; [ $v = off ] && b="--set checkpointing.memory_budget_gib=$g"
        ./autosp-train $T --set train.steps=20 $b --set io.run_dir="$LOG_DIR/tiny-$v" --set io.resume=never \
            --dump-grads "$LOG_DIR/tiny-$v.bin" >"$LOG_DIR/tiny-$v.log" 2>&1 || echo "tiny-$v: exit $?"
    done
    ./tests/dump_compare configs/tiny.yaml "$LOG_DIR/tiny-ref.bin" "$LOG_DIR/tiny-off.bin" 0 \
        model.num_hidden_layers=8 >"$LOG_DIR/tiny-compare.txt" 2>&1
    cmp -s "$LOG_DIR/tiny-ref.bin" "$LOG_DIR/tiny-off.bin" && same="bitwise equal" || same="NOT bitwise equal"
    echo "tiny on the GPU, budget $g GiB: the offloading run vs the all-saved run: $same"
    tail -1 "$LOG_DIR/tiny-compare.txt"
    grep -h "host memory" "$LOG_DIR/tiny-off.log"
    grep -h "^step *20/20" "$LOG_DIR/tiny-ref.log" "$LOG_DIR/tiny-off.log"
    ;;
262k)
    bandwidth
    B="--set checkpointing.memory_budget_gib=60"
    run device-60 262144 3 $B --set checkpointing.offload=false
    run offload-60 262144 3 $B
    table device-60 offload-60
    cat "$LOG_DIR/pcie.txt"
    ;;
262k-full)
    run device-full 262144 3 --set checkpointing.offload=false
    run offload-full 262144 3
    table device-full offload-full
    ;;
786k)
    run offload-786k 786432 1
    table offload-786k
    ;;
*)
    echo "usage: scripts/gpu-offload.sh tiny|262k|262k-full|786k"; exit 2 ;;
esac
