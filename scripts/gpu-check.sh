#!/bin/bash
# The one command to run on a GPU machine: GPU op tests against the CPU
# reference, the tiny model on the GPU against the CPU, and a benchmark of
# autosp-train against the plain-PyTorch baseline, in one go. Full logs go to
# LOG_DIR (default gpu-logs/); a short table is printed last.
#
#   scripts/gpu-check.sh [--quick] [--bench-only] [--ops-only] [--docs]
#
# --ops-only runs the correctness parts alone (the CUDA ops against the CPU,
# the tiny model on the GPU against the CPU), no benchmark.
#
# --docs runs only the packed-documents checks (a few minutes): the CUDA ops
# with documents against the CPU, the tiny model with documents on the GPU
# (cuDNN's ragged graphs and the simple kernels) against the CPU over 100
# steps, transformers parity on a packed sample (tests/hf_parity.py, engine
# on the CPU and the GPU), and Llama-3.2-1B at S = 131072 made of documents
# of 4K-32K tokens against the same tokens as one causal stream. DOCS_HF=0
# leaves out the transformers parity (its CPU cases take the longest);
# DOCS_SEQ and DOCS_STEPS change the Llama run (131072, 4 steps); DOCS_PARTS
# picks the parts to run (default "ops tiny hf 1b").
#
# Environment: SEQS (sequence lengths, default 65536), BENCH_CONFIGS (configs, default
# configs/llama32_1b.yaml), BENCH_STEPS,
# TORCH_MODES ("eager compile"), LOG_DIR, COMMIT (named in the summary; default: git HEAD).
#
# Uses the build in this tree (./autosp-train, tests/test_cuda_ops); build it
# on a machine with the toolkit first (scripts/setup.sh) where this machine
# lacks the build dependencies. cuDNN may live inside a Python environment:
# CUDNN_LIB points at it (default: PyTorch's bundled copy if present).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${LOG_DIR:-gpu-logs}
mkdir -p "$LOG_DIR"
QUICK=0; BENCH_ONLY=0; OPS_ONLY=0; DOCS=0
for a in "$@"; do case $a in --quick) QUICK=1 ;; --bench-only) BENCH_ONLY=1 ;; --ops-only) OPS_ONLY=1 ;; --docs) DOCS=1 ;; *) echo "unknown option $a"; exit 2 ;; esac; done

if [ -z "${CUDNN_LIB:-}" ]; then
    for d in /opt/torch/.venv/lib/python3*/site-packages/nvidia/cudnn/lib; do [ -d "$d" ] && CUDNN_LIB=$d; done
fi
[ -n "${CUDNN_LIB:-}" ] && export LD_LIBRARY_PATH="$CUDNN_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PY=${PYTHON:-$( [ -x /opt/torch/.venv/bin/python ] && echo /opt/torch/.venv/bin/python || echo python3)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

summary=()
note() { summary+=("$1"); echo "$1"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOG_DIR/gpu.txt"
CARD=$(head -1 "$LOG_DIR/gpu.txt" | cut -d, -f1)
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}  # COMMIT= where the copy has no history

# Packed documents (--docs): correctness on the GPU, then the speed it buys.
docs_part() { case " ${DOCS_PARTS:-ops tiny hf 1b} " in *" $1 "*) return 0 ;; esac; return 1; }
docs_checks() {
    if ! docs_part ops; then
        :
    elif ./tests/test_cuda_ops >"$LOG_DIR/docs-ops.log" 2>&1; then
        note "ops with documents: PASS ($(grep -c 'documents' "$LOG_DIR/docs-ops.log") document lines, all ops run)"
    else
        note "ops with documents: FAIL (see $LOG_DIR/docs-ops.log)"; grep -E "documents|Failure|FAIL" "$LOG_DIR/docs-ops.log" | tail -30
    fi
    # the tiny model, documents at newlines (english.txt's paragraphs), GPU against the CPU
    docs_part tiny && docs_tiny
    docs_part hf && docs_hf
    docs_part 1b && docs_1b
}

docs_tiny() {
    common="--set data.path=$PWD/data/english.tok --set train.steps=100 --set io.log_every=10 --set data.documents=eos --set data.eos_token_id=10"
    ./autosp-train configs/tiny.yaml $common --set train.device=cpu --set io.run_dir="$LOG_DIR/docs-tiny-cpu" \
        --dump-grads "$LOG_DIR/docs-tiny-cpu.bin" >"$LOG_DIR/docs-tiny-cpu.log" 2>&1
    for att in cudnn simple; do
        ASP_ATTENTION=$att ./autosp-train configs/tiny.yaml $common --set train.device=cuda \
            --set io.run_dir="$LOG_DIR/docs-tiny-$att" --dump-grads "$LOG_DIR/docs-tiny-$att.bin" >"$LOG_DIR/docs-tiny-$att.log" 2>&1
        "$PY" - "$LOG_DIR/docs-tiny-cpu/metrics.jsonl" "$LOG_DIR/docs-tiny-$att/metrics.jsonl" <<'PY' >"$LOG_DIR/docs-tiny-$att.txt" 2>&1
import json, sys
cpu, gpu = ([json.loads(l)["loss"] for l in open(p) if '"loss"' in l] for p in sys.argv[1:])
n = min(len(cpu), len(gpu))
worst = max(abs(a - b) / abs(a) for a, b in zip(cpu[:n], gpu[:n]))
print(f"step 1 {cpu[0]:.5f} vs {gpu[0]:.5f}, step {n} {cpu[n-1]:.4f} vs {gpu[n-1]:.4f}, worst gap {worst:.2e} over {n} steps"
      + ("" if n == 100 and worst < 5e-2 else " FAIL"))
PY
        ./tests/dump_compare configs/tiny.yaml "$LOG_DIR/docs-tiny-cpu.bin" "$LOG_DIR/docs-tiny-$att.bin" 5e-2 \
            >"$LOG_DIR/docs-tiny-grads-$att.txt" 2>&1
        note "tiny with documents, gpu ($att) vs cpu: $(tail -1 "$LOG_DIR/docs-tiny-$att.txt"); first-step gradients: $(tail -1 "$LOG_DIR/docs-tiny-grads-$att.txt")"
    done
}

docs_hf() {
    # transformers on a packed sample (fp32 CPU engine, and the GPU engine in bf16); DOCS_HF=0 skips it
    if [ "${DOCS_HF:-1}" = 0 ]; then
        note "hf_parity: skipped (DOCS_HF=0)"
    else
        if HF_PARITY_DEVICES=cpu,cuda top_srcdir=. top_builddir=. MPIRUN=${MPIRUN:-mpirun} PATH="$(dirname "$PY"):$PATH" \
                sh tests/test_hf_parity.sh >"$LOG_DIR/docs-hf.log" 2>&1; then r=PASS; else r=FAIL; fi
        note "hf_parity (packed documents included): $r; $(grep -c '^ok' "$LOG_DIR/docs-hf.log") ok, $(grep -c '^FAIL' "$LOG_DIR/docs-hf.log") failed; packed: $(grep 'packed' "$LOG_DIR/docs-hf.log" | sed 's/ (.*//' | tr '\n' ';')"
    fi
}

docs_1b() {
    # Llama-3.2-1B, S = 131072 of documents of 4K-32K tokens against the same tokens as one stream
    local S=${DOCS_SEQ:-131072} steps=${DOCS_STEPS:-4} shard
    shard="$(cd "$LOG_DIR" && pwd)/docs-4k32k.tok"
    "$PY" - data/english.tok "$shard" $(( (steps + 1) * S + 1 )) <<'PY'
import random, struct, sys
src, dst, need = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = open(src, "rb").read()[64:]
EOS, V = 128001, 128256                       # Llama 3's <|end_of_text|>
rng, out, at, n = random.Random(5), bytearray(), 0, 0
while n < need:
    L = rng.randint(4096, 32768)
    piece = body[4 * at:4 * (at + L - 1)]
    at = (at + L - 1) % (len(body) // 4 - 32768)
    out += piece + struct.pack("<I", EOS)
    n += len(piece) // 4 + 1
hdr = struct.pack("<8sIIQIII", b"ASPTOKS1", 1, 4, n, V, 1, EOS).ljust(64, b"\0")
open(dst, "wb").write(hdr + out)
PY
    for mode in stream docs; do
        extra=""
        [ $mode = docs ] && extra="--set data.documents=eos"
        ./autosp-train configs/llama32_1b.yaml --set train.seq_len=$S --set train.steps=$steps --set data.shuffle=false \
            --set data.path="$shard" $extra --set io.run_dir="$LOG_DIR/docs-1b-$mode" \
            --set io.log_every=1 --set io.save_at_end=false >"$LOG_DIR/docs-1b-$mode.log" 2>&1
    done
    "$PY" - "$LOG_DIR" "$S" <<'PY' | tee "$LOG_DIR/docs-1b.txt"
import json, os, statistics, sys
d, S = sys.argv[1], int(sys.argv[2])
def med(mode):
    p = f"{d}/docs-1b-{mode}/metrics.jsonl"
    rows = [json.loads(l) for l in open(p) if '"loss"' in l][1:] if os.path.exists(p) else []
    if not rows:
        return None
    return {k: statistics.median(r[k] for r in rows) for k in ("tokens_per_s", "tflops", "mfu", "ms", "peak_gib")}
a, b = med("stream"), med("docs")
if not a or not b:
    print(f"llama32_1b S={S}: a run failed (see {d}/docs-1b-stream.log, docs-1b-docs.log)")
    sys.exit(0)
flops_a, flops_b = a["tflops"] * a["ms"], b["tflops"] * b["ms"]
print(f"llama32_1b S={S}: one stream {a['tokens_per_s']:.0f} tok/s ({a['tflops']:.0f} TFLOP/s, MFU {100*a['mfu']:.1f}%, "
      f"peak {a['peak_gib']:.1f} GiB); documents 4K-32K {b['tokens_per_s']:.0f} tok/s ({b['tflops']:.0f} TFLOP/s, "
      f"MFU {100*b['mfu']:.1f}%, peak {b['peak_gib']:.1f} GiB); speedup {b['tokens_per_s']/a['tokens_per_s']:.2f}x "
      f"for {flops_a/flops_b:.2f}x fewer FLOPs")
PY
    note "$(tail -1 "$LOG_DIR/docs-1b.txt")"
}

if [ $DOCS = 1 ]; then
    docs_checks
    echo
    echo "== $CARD, commit $COMMIT, $(date -u +%F): packed documents"
    for line in "${summary[@]}"; do echo "$line"; done
    exit 0
fi

if [ $BENCH_ONLY = 0 ]; then
    # 1. every CUDA op against the CPU reference, both attention implementations
    for att in simple cudnn; do
        if ASP_ATTENTION=$att ./tests/test_cuda_ops >"$LOG_DIR/ops-$att.log" 2>&1; then
            note "ops ($att attention): PASS ($(grep -c '' "$LOG_DIR/ops-$att.log") lines)"
        else
            note "ops ($att attention): FAIL (see $LOG_DIR/ops-$att.log)"; tail -30 "$LOG_DIR/ops-$att.log"
        fi
    done
    # 2. the tiny model on the GPU tracks the CPU reference
    if [ -f data/english.tok ]; then
        common="--set data.path=$PWD/data/english.tok --set train.steps=100 --set io.log_every=10"
        ./autosp-train configs/tiny.yaml $common --set train.device=cpu --set io.run_dir="$LOG_DIR/tiny-cpu" \
            --dump-grads "$LOG_DIR/tiny-cpu.bin" >"$LOG_DIR/tiny-cpu.log" 2>&1
        ./autosp-train configs/tiny.yaml $common --set train.device=cuda --set io.run_dir="$LOG_DIR/tiny-gpu" \
            --dump-grads "$LOG_DIR/tiny-gpu.bin" >"$LOG_DIR/tiny-gpu.log" 2>&1
        "$PY" - "$LOG_DIR" <<'PY' | tee "$LOG_DIR/tiny-compare.txt"
import json, sys
d = sys.argv[1]
cpu = [json.loads(l)["loss"] for l in open(f"{d}/tiny-cpu/metrics.jsonl")]
gpu = [json.loads(l)["loss"] for l in open(f"{d}/tiny-gpu/metrics.jsonl")]
n = min(len(cpu), len(gpu))
worst = max(abs(a - b) / abs(a) for a, b in zip(cpu[:n], gpu[:n]))
print(f"tiny cpu vs gpu: step 1 loss {cpu[0]:.5f} vs {gpu[0]:.5f} (rel {abs(cpu[0]-gpu[0])/cpu[0]:.2e}); "
      f"step {n} {cpu[n-1]:.4f} vs {gpu[n-1]:.4f}; worst relative gap over {n} steps {worst:.3e}")
PY
        note "$(tail -1 "$LOG_DIR/tiny-compare.txt")"
        ./tests/dump_compare configs/tiny.yaml "$LOG_DIR/tiny-cpu.bin" "$LOG_DIR/tiny-gpu.bin" 5e-2 \
            >"$LOG_DIR/tiny-grads.txt" 2>&1
        note "tiny first-step gradients gpu vs cpu: $(tail -1 "$LOG_DIR/tiny-grads.txt")"
        # the same with full recompute and the MLP in ragged tiles (in-place gradients, tile loop)
        tiled="--set checkpointing.policy=full --set checkpointing.mlp_tile_tokens=48"
        ./autosp-train configs/tiny.yaml $common $tiled --set train.device=cuda --set io.run_dir="$LOG_DIR/tiny-gpu-tiled" \
            --dump-grads "$LOG_DIR/tiny-gpu-tiled.bin" >"$LOG_DIR/tiny-gpu-tiled.log" 2>&1
        if grep -q "run in 3 tiles of 48 tokens" <(./autosp-train configs/tiny.yaml $common $tiled --set train.device=cuda --explain 2>&1) &&
            ./tests/dump_compare configs/tiny.yaml "$LOG_DIR/tiny-cpu.bin" "$LOG_DIR/tiny-gpu-tiled.bin" 5e-2 \
                >"$LOG_DIR/tiny-grads-tiled.txt" 2>&1; then r=PASS; else r=FAIL; fi
        note "tiny tiled full-recompute gpu vs cpu: $r ($(tail -1 "$LOG_DIR/tiny-grads-tiled.txt" 2>/dev/null))"
    fi
fi

# 3. benchmark: autosp-train against the PyTorch baseline, same card, same call,
#    for every config in BENCH_CONFIGS and every sequence length in SEQS
SEQS=${SEQS:-"65536"}
CONFIGS=${BENCH_CONFIGS:-${BENCH_CONFIG:-configs/llama32_1b.yaml}}
STEPS=${BENCH_STEPS:-6}
[ $QUICK = 1 ] && SEQS=8192 && STEPS=4
[ $OPS_ONLY = 1 ] && CONFIGS=""
touch "$LOG_DIR/bench.jsonl"
for CFG in $CONFIGS; do
  name=$(basename "$CFG" .yaml)
  for S in $SEQS; do
    ./autosp-train "$CFG" --set train.seq_len=$S --set train.steps=$STEPS --set data.path="$PWD/data/english.tok" \
        --set io.run_dir="$LOG_DIR/bench-$name-$S" --set io.log_every=1 --set io.save_at_end=false >"$LOG_DIR/bench-autosp-$name-$S.log" 2>&1
    "$PY" - "$LOG_DIR/bench-$name-$S/metrics.jsonl" "$S" "$name" <<'PY' | tee -a "$LOG_DIR/bench.jsonl"
import json, os, statistics, sys
path, S, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [json.loads(l) for l in open(path)][1:] if os.path.exists(path) else []   # step 1 is warm-up
if rows:
    print(json.dumps({"impl": "autosp-train", "config": name, "seq_len": S,
                      "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
                      "tflops_per_gpu": statistics.median(r["tflops"] for r in rows),
                      "peak_gib": max(r.get("peak_gib", 0) for r in rows)}))
else:
    print(json.dumps({"impl": "autosp-train", "config": name, "seq_len": S, "failed": True}))
PY
    for mode in ${TORCH_MODES:-eager compile}; do
        [ "$mode" = eager ] && mode="" || mode="--$mode"
        PYTHONUNBUFFERED=1 "$PY" bench/torch_baseline.py "$CFG" --seq-len $S --steps $STEPS $mode \
            2>"$LOG_DIR/bench-torch$mode-$name-$S.err" | sed "s/^{/{\"config\": \"$name\", /" | tee -a "$LOG_DIR/bench.jsonl"
    done
  done
done

echo
echo "== $CARD, commit $COMMIT, $(date -u +%F)"
for line in "${summary[@]}"; do echo "$line"; done
"$PY" - "$LOG_DIR/bench.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'config':<14}{'impl':<18}{'S':>8}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}{'peak GiB':>10}")
for r in rows:
    head = f"{r.get('config', ''):<14}{r['impl']:<18}{r['seq_len']:>8}"
    if r.get("oom") or r.get("failed"):
        print(head + f"{'OOM' if r.get('oom') else 'failed':>12}"); continue
    mfu = r.get("mfu", r["tflops_per_gpu"] / 989.0)
    print(head + f"{r['tokens_per_s']:>12.0f}{r['tflops_per_gpu']:>10.1f}{100*mfu:>7.1f}%{r.get('peak_gib', 0):>10.1f}")
PY
