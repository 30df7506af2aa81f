#!/bin/sh
# What a new user sees (CPU engine): the step line's progress, elapsed time,
# ETA and window averages; progress lines inside long steps; a metrics log
# that cannot be written ends the run with a message; a SIGTERM right at
# start-up is reported; --version says how the binary was built; a seq_len
# beyond max_position_embeddings warns; --explain names the model's RoPE; a
# copied config's data path error says paths are relative to the config; the
# default tiny run prints a screenful with validation; plot_run.py installs
# matplotlib quietly; the README's mpirun line names Open MPI's flags.
. "${top_srcdir:-.}/tests/common.sh"
SHARD=$(make_shard)
CFG="$top_srcdir/configs/tiny.yaml"
COMMON="--set data.path=$SHARD --set model.num_hidden_layers=2 --set train.seq_len=64 --set train.global_batch_size=4
        --set train.device=cpu"
fails=0
ok() { echo "ok:   $1"; }
fail() { echo "FAIL: $1"; fails=$((fails + 1)); }

# 1. the step line: percentage, elapsed, ETA; with log_every 5 its ms is the
#    mean of the five steps it covers (metrics.jsonl has each step's own)
"$BIN" "$CFG" $COMMON --set train.steps=20 --set io.log_every=5 --set io.run_dir="$TMP/s1" >"$TMP/s1.log" 2>&1 ||
    { fail "20-step run failed"; cat "$TMP/s1.log"; }
if python3 - "$TMP/s1.log" "$TMP/s1/metrics.jsonl" <<'PY'
import json, re, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("step ")]
rows = [json.loads(l) for l in open(sys.argv[2])]
pat = re.compile(r"^step +(\d+)/20 \(([\d.]+)%\) \|.* \| ([\d.]+) ms \|.*\| elapsed \S+ \| ETA \S+$")
seen = []
for l in lines:
    m = pat.match(l.strip())
    assert m, "step line without progress, elapsed or ETA: " + l
    step, pct, ms = int(m.group(1)), float(m.group(2)), float(m.group(3))
    assert abs(pct - 100.0 * step / 20) < 0.06, l
    seen.append((step, ms))
assert [s for s, _ in seen] == [1, 5, 10, 15, 20], seen
prev = 1
for step, ms in seen[1:]:
    window = [r["ms"] for r in rows[prev:step]]
    mean = sum(window) / len(window)
    assert abs(ms - mean) <= 0.051 + 1e-3 * mean, f"step {step}: line says {ms} ms, mean of its window {mean:.3f}"
    prev = step
print("step line ok:", lines[-1].strip())
PY
then ok "step line: progress, elapsed, ETA; ms is the window's mean"; else fail "step line"; fi

# 2. progress lines inside a step that runs long (ASP_PROGRESS_S lowered)
ASP_PROGRESS_S=0.001 "$BIN" "$CFG" --set data.path="$SHARD" --set train.device=cpu --set train.steps=2 \
    --set train.seq_len=512 --set io.run_dir="$TMP/s2" >"$TMP/s2.log" 2>&1 || fail "progress run failed"
if grep -Eq "^  step 2/2: (forward|backward) layer [1-4]/4( of micro-batch [1-8]/8)?, [0-9.]+s into the step \(the previous step took" "$TMP/s2.log"; then
    ok "progress inside a step: $(grep -E '^  step 2/2' "$TMP/s2.log" | tail -1)"
else fail "no progress line inside the step"; cat "$TMP/s2.log"; fi
"$BIN" "$CFG" $COMMON --set train.steps=2 --set io.run_dir="$TMP/s2b" >"$TMP/s2b.log" 2>&1
grep -q "^  step" "$TMP/s2b.log" && fail "progress lines in short steps" || ok "short steps print no progress lines"

# 3. metrics.jsonl on a full disk (a symlink to /dev/full): status 1 and a message
if [ -w /dev/full ]; then
    mkdir -p "$TMP/s3"; ln -s /dev/full "$TMP/s3/metrics.jsonl"
    rc=0
    "$BIN" "$CFG" $COMMON --set train.steps=3 --set io.run_dir="$TMP/s3" >"$TMP/s3.log" 2>&1 || rc=$?
    if [ $rc = 1 ] && grep -q "cannot write .*metrics.jsonl: No space left on device" "$TMP/s3.log"; then
        ok "metrics write failure reported (status 1): $(grep -o 'cannot write.*device' "$TMP/s3.log")"
    else fail "metrics write failure: status $rc"; cat "$TMP/s3.log"; fi
else say_console "part skipped: no /dev/full to write to"; fi

# 4. SIGTERM during start-up: a message and 128+15, not a silent death
"$BIN" "$CFG" $COMMON --set train.steps=100000 --set io.run_dir="$TMP/s4" >"$TMP/s4.log" 2>&1 &
pid=$!
# as soon as the handler is there (SigCgt has SIGTERM, bit 15), long before training starts
i=0
while [ $i -lt 2000 ]; do
    cgt=$(sed -n 's/^SigCgt:\t*//p' /proc/$pid/status 2>/dev/null)
    [ -n "$cgt" ] && [ $(( 0x$cgt >> 14 & 1 )) = 1 ] && break
    i=$((i + 1))
done
kill -TERM $pid
rc=0; wait $pid || rc=$?
# The tiny model sets up in milliseconds, so the signal may land just after training began: then
# the run must stop at the end of that step with a checkpoint (status 75, stopped early,
# resumable). Either way a message.
if [ $rc = 143 ] && grep -q "stopped by signal 15 before training began" "$TMP/s4.log"; then
    s4ok=1
elif [ $rc = 75 ] && grep -q "stopped by signal 15 after step [0-9]" "$TMP/s4.log" && grep -q "stopped early by SIGTERM" "$TMP/s4.log"; then
    s4ok=1
else s4ok=0; fi
if [ $s4ok = 1 ] && grep -q "SIGTERM: stopping at the end of this step" "$TMP/s4.log"; then
    ok "SIGTERM at start-up: status $rc with a message ($(grep 'stopped by signal' "$TMP/s4.log" | cut -c1-100))"
else fail "SIGTERM at start-up: status $rc"; cat "$TMP/s4.log"; fi

# 5. --version, the seq_len warning, the RoPE --explain prints
"$BIN" --version >"$TMP/v.log" 2>&1
grep -q "^autosp-train .* (commit [0-9a-f]\{7,\}\|^autosp-train .* (commit unknown" "$TMP/v.log" && grep -q "backends: cpu" "$TMP/v.log" &&
    ok "--version: $(tr '\n' ' ' <"$TMP/v.log")" || { fail "--version"; cat "$TMP/v.log"; }
"$BIN" "$CFG" --explain --set train.seq_len=8192 >"$TMP/e.log" 2>&1
grep -q "warning: --set train.seq_len=8192: train.seq_len (8192) is longer than model.max_position_embeddings (4096)" "$TMP/e.log" &&
    ok "seq_len beyond max_position_embeddings warns" || { fail "no seq_len warning"; head -3 "$TMP/e.log"; }
grep -q "rotary_emb (default)" "$TMP/e.log" && "$BIN" "$top_srcdir/configs/llama32_1b.yaml" --explain 2>&1 | grep -q "rotary_emb (llama3)" &&
    ok "--explain names the RoPE: default for tiny, llama3 for Llama 3.2" || fail "--explain RoPE type"

# 6. a config copied to another folder: the error names data.path as written
#    and as resolved, the rule (relative to the config file) and the fix; exit 2
mkdir -p "$TMP/elsewhere"
cp "$CFG" "$TMP/elsewhere/tiny.yaml"
rc=0
abs_bin="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
(cd "$TMP" && "$abs_bin" "$TMP/elsewhere/tiny.yaml" --set train.steps=1 --set io.run_dir="$TMP/s6") >"$TMP/s6.log" 2>&1 || rc=$?
if [ $rc = 2 ] && grep -q "data.path is '../data/english.tok' in $TMP/elsewhere/tiny.yaml, which resolves to $TMP/elsewhere/../data/english.tok: paths in a config are relative to the config file's folder ($TMP/elsewhere)" "$TMP/s6.log" &&
        grep -q "give it with --set data.path=PATH" "$TMP/s6.log"; then
    ok "a copied config's data.path: written, resolved, the rule and the fix"
else fail "copied config: status $rc"; cat "$TMP/s6.log"; fi

# 7. the default tiny run (validation on by default) prints a screenful: its
#    300 steps in at most 40 lines, step lines every 20 steps, eval lines
#    every 50; io.log_every=1 still gives every step
python3 "$top_srcdir/scripts/text_to_shard.py" "$top_srcdir/data/english.txt" "$TMP/tr.tok" --val "$TMP/tr_val.tok" >/dev/null
VAL_SET=""
[ -f "$top_srcdir/data/english_val.tok" ] || VAL_SET="--set data.val_path=$TMP/tr_val.tok"
"$BIN" "$CFG" --set data.path="$TMP/tr.tok" $VAL_SET --set model.num_hidden_layers=1 --set train.seq_len=32 \
    --set train.device=cpu --set io.run_dir="$TMP/s7" --set io.save_at_end=false >"$TMP/s7.log" 2>&1 || fail "the default tiny run failed"
n=$(wc -l <"$TMP/s7.log"); steps=$(grep -c '^step ' "$TMP/s7.log"); evals=$(grep -c '^eval ' "$TMP/s7.log")
if [ "$n" -le 40 ] && [ "$steps" = 16 ] && [ "$evals" = 6 ]; then
    ok "the default tiny run prints $n lines ($steps step lines, $evals validation lines)"
else fail "the default tiny run printed $n lines, $steps step lines, $evals validation lines"; head -5 "$TMP/s7.log"; fi
"$BIN" "$CFG" --set data.path="$TMP/tr.tok" $VAL_SET --set model.num_hidden_layers=1 --set train.seq_len=32 \
    --set train.steps=5 --set io.log_every=1 --set train.device=cpu --set io.run_dir="$TMP/s7b" >"$TMP/s7b.log" 2>&1
[ "$(grep -c '^step ' "$TMP/s7b.log")" = 5 ] && ok "io.log_every=1 prints every step" || fail "io.log_every=1"

# 8. plot_run.py installs matplotlib without pip's root and PATH warnings: a
#    stand-in pip records its arguments, a stand-in matplotlib is missing first
mkdir -p "$TMP/fakepip/pip"
cat >"$TMP/fakepip/pip/__main__.py" <<PY
import sys
open("$TMP/pip-args", "w").write(" ".join(sys.argv[1:]))
sys.exit(1)
PY
touch "$TMP/fakepip/pip/__init__.py"
mkdir -p "$TMP/fakepip/matplotlib"
echo 'raise ImportError("hidden by the test")' >"$TMP/fakepip/matplotlib/__init__.py"
mkdir -p "$TMP/s8"; echo '{"step": 1, "loss": 1.0}' >"$TMP/s8/metrics.jsonl"
PYTHONPATH="$TMP/fakepip" python3 "$top_srcdir/scripts/plot_run.py" "$TMP/s8" -o "$TMP/s8.png" >"$TMP/s8.log" 2>&1 || true
if grep -q -- "install --user" "$TMP/pip-args" 2>/dev/null && grep -q -- "--root-user-action=ignore" "$TMP/pip-args" &&
        grep -q -- "--no-warn-script-location" "$TMP/pip-args"; then
    ok "plot_run.py asks pip for matplotlib without root and PATH warnings: pip $(cat "$TMP/pip-args")"
else fail "plot_run.py's pip command: $(cat "$TMP/pip-args" 2>/dev/null)"; cat "$TMP/s8.log"; fi

# 9. the README's launch example says what Open MPI needs as root and on small machines
grep -q "mpirun -np 8 autosp-train" "$top_srcdir/README.md" && grep -q -- "--allow-run-as-root" "$top_srcdir/README.md" &&
    grep -q -- "--oversubscribe" "$top_srcdir/README.md" && ok "README: the mpirun line's root and oversubscribe flags" ||
    fail "README's launch example does not name --allow-run-as-root and --oversubscribe"

[ $fails = 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all first-hour checks passed"
