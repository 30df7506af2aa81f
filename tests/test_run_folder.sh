#!/bin/sh
# The run folder over many launches, and inputs that are each valid but do not
# belong together, tried from the command line as a user would:
# - retention keeps the checkpoint just written and the run's own lineage
#   when it resumed from an older checkpoint beside newer ones of another;
# - a folder whose name and recorded step disagree is skipped with a warning;
# - a second launch on a folder in use exits 2 naming the holder; a lock left
#   by a killed run is taken over with a warning;
# - an unreadable checkpoints path (dangling link, link loop, a file) is exit 2
#   before anything in the run folder is written;
# - a signal before main (while libraries initialise) keeps its documented
#   meaning; SIGHUP stops with a checkpoint like SIGTERM;
# - a validation shard of another vocabulary, a shard header with vocabulary
#   1, a manifest with a duplicate, unknown or path-like entry, NaN in the
#   master weights, weights of another checkpoint, a malformed ASP_* variable
#   and a memory figure of 1e308 GiB are refused, naming what is wrong.
. "${top_srcdir:-.}/tests/common.sh"
SHARD=$(make_shard)
CFG="$top_srcdir/configs/tiny.yaml"
COMMON="--set data.path=$SHARD --set model.num_hidden_layers=2 --set train.seq_len=64 --set train.global_batch_size=4
        --set io.log_every=1000 --set train.device=cpu"
fails=0
ok() { echo "ok:   $1"; }
fail() { echo "FAIL: $1"; fails=$((fails + 1)); }
steps_in() { ls "$1/checkpoints" | grep -v '\.' | sed 's/step-0*//' | tr '\n' ' ' | sed 's/ $//'; }
# expect_refusal WHAT REGEX ARGS...: exit status 2, the message, no step trained
expect_refusal() {
    what=$1; pat=$2; shift 2
    rc=0
    "$@" >"$TMP/refuse.log" 2>&1 || rc=$?
    if [ $rc = 2 ] && grep -Eq -- "$pat" "$TMP/refuse.log" && ! grep -q "^step" "$TMP/refuse.log"; then
        ok "$what: $(grep -E "$pat" "$TMP/refuse.log" | head -1 | sed 's|.*error: ||' | cut -c1-150)"
    else fail "$what: expected exit 2 and /$pat/, got $rc"; cat "$TMP/refuse.log"; fi
}

# ---- 1. retention and lineage
R="$TMP/branch"
"$BIN" "$CFG" $COMMON --set train.steps=7 --set io.save_every=1 --set io.keep_last=10 --set io.run_dir="$R" \
    >"$TMP/b1.log" 2>&1 || fail "branch: first run failed"
"$BIN" "$CFG" $COMMON --set train.steps=5 --set io.save_every=1 --set io.resume="$R/checkpoints/step-00000003" \
    --set io.run_dir="$R" >"$TMP/b2.log" 2>&1 || fail "branch: resumed run failed"
got=$(steps_in "$R")
[ "$got" = "4 5 7" ] && grep -q "step-00000007 is newer .* another run's history" "$TMP/b2.log" &&
    ok "resumed from step 3 beside steps 4-7 of another history, keep_last 3: keeps its own 4 and 5 and the newest (7), warns about 7" ||
    { fail "branch retention: kept '$got', expected '4 5 7' and a warning"; cat "$TMP/b2.log"; }
# the run's own lineage continues: resume its step 5 by name, and its older 4 stays over 7's lineage
"$BIN" "$CFG" $COMMON --set train.steps=6 --set io.save_every=1 --set io.keep_last=2 \
    --set io.resume="$R/checkpoints/step-00000005" --set io.run_dir="$R" >"$TMP/b3.log" 2>&1 || fail "branch: third run failed"
got=$(steps_in "$R")
[ "$got" = "6 7" ] && ok "keep_last 2 after step 6 of the branch: its step 6 and the newest loadable (7) kept" ||
    { fail "keep_last 2: kept '$got', expected '6 7'"; ls -la "$R/checkpoints"; }

# a folder whose name says a later step than its state: skipped with a warning, never taken as newer
R="$TMP/renamed"
"$BIN" "$CFG" $COMMON --set train.steps=3 --set io.save_every=1 --set io.run_dir="$R" >/dev/null 2>&1 || fail "renamed: first run"
cp -r "$R/checkpoints/step-00000002" "$R/checkpoints/step-00000009"
"$BIN" "$CFG" $COMMON --set train.steps=10 --set io.run_dir="$R" >"$TMP/ren.log" 2>&1 || fail "renamed: resume run"
grep -q "step-00000009: the folder's name says step 9 but its state says step 2" "$TMP/ren.log" &&
    grep -q "resumed from .*step-00000003" "$TMP/ren.log" &&
    ok "a folder named step 9 holding step 2 is skipped with a warning; resumed from step 3" ||
    { fail "name/step mismatch"; cat "$TMP/ren.log"; }

# ---- 2. one run per run folder
R="$TMP/locked"
"$BIN" "$CFG" $COMMON --set train.steps=100000 --set io.run_dir="$R" >"$TMP/holder.log" 2>&1 &
pid=$!
i=0; while [ ! -s "$R/metrics.jsonl" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
expect_refusal "a second launch on a folder in use" "is in use by another run \(process $pid on $(hostname)" \
    "$BIN" "$CFG" $COMMON --set train.steps=3 --set io.run_dir="$R"
kill -KILL $pid; wait $pid 2>/dev/null || true
"$BIN" "$CFG" $COMMON --set train.steps=2 --set io.run_dir="$R" --set io.resume=never >"$TMP/takeover.log" 2>&1 &&
    grep -q "lock was left by process $pid on .*no longer runs; taking it over" "$TMP/takeover.log" &&
    ok "the lock of a killed run is taken over with a warning" || { fail "stale lock takeover"; cat "$TMP/takeover.log"; }
"$BIN" "$CFG" $COMMON --set train.steps=2 --set io.run_dir="$R" --set io.resume=never >"$TMP/again.log" 2>&1 &&
    ! grep -q "taking it over" "$TMP/again.log" && ok "a clean exit frees the lock: the next launch is silent" ||
    { fail "lock after a clean exit"; cat "$TMP/again.log"; }

# ---- 3. an unreadable checkpoints path is an error before anything is written
unreadable() { # what regex: $R/checkpoints is prepared by the caller
    echo '{"step": 1, "loss": 9}' >"$R/metrics.jsonl"
    expect_refusal "$1" "$2" "$BIN" "$CFG" $COMMON --set train.steps=2 --set io.run_dir="$R"
    [ "$(cat "$R/metrics.jsonl")" = '{"step": 1, "loss": 9}' ] && [ ! -e "$R/config.yaml" ] && [ ! -e "$R/lock" ] ||
        fail "$1: the run folder was written to"
}
R="$TMP/dangling"; mkdir -p "$R"; ln -s "$TMP/not-mounted/ckpts" "$R/checkpoints"
unreadable "a dangling checkpoints link" "checkpoints cannot be read: a symbolic link to .*not-mounted/ckpts, which does not exist"
R="$TMP/loop"; mkdir -p "$R"; ln -s "$R/checkpoints" "$R/checkpoints"
unreadable "a checkpoints link loop" "checkpoints cannot be read: a loop of symbolic links"
R="$TMP/file"; mkdir -p "$R"; echo x >"$R/checkpoints"
unreadable "a file in place of checkpoints" "checkpoints cannot be read: not a folder"
if [ "$(id -u)" != 0 ]; then
    R="$TMP/noperm"; mkdir -p "$R/checkpoints"; chmod 000 "$R/checkpoints"
    unreadable "checkpoints without permission" "checkpoints cannot be read: cannot be listed: Permission denied"
    chmod 755 "$R/checkpoints"
else echo "as root: the permission case is skipped (root reads everything)"; fi

# ---- 6. signals from the first instant (a preloaded library raises them
# while libraries initialise, before main), and SIGHUP
if ldd "$BIN" 2>/dev/null | grep -q libasan; then
    echo "sanitizer build: the early-signal case is skipped (a preload cannot come before ASan)"
elif command -v cc >/dev/null 2>&1; then
    printf '#include <signal.h>\n#include <stdlib.h>\n__attribute__((constructor)) static void f(void) {\n  const char *s = getenv("EARLY_SIGNAL");\n  if (s) raise(atoi(s));\n}\n' >"$TMP/early.c"
    cc -shared -fPIC -o "$TMP/early.so" "$TMP/early.c"
    rc=0
    EARLY_SIGNAL=$(kill -l USR1 2>/dev/null || echo 10) LD_PRELOAD="$TMP/early.so" "$BIN" "$CFG" $COMMON --set train.steps=2 \
        --set io.run_dir="$TMP/early1" >"$TMP/early1.log" 2>&1 || rc=$?
    [ $rc = 0 ] && grep -q "^done: 2 steps" "$TMP/early1.log" && ok "SIGUSR1 before main: training goes on" ||
        { fail "SIGUSR1 before main: exit $rc"; cat "$TMP/early1.log"; }
    rc=0
    EARLY_SIGNAL=$(kill -l TERM 2>/dev/null || echo 15) LD_PRELOAD="$TMP/early.so" "$BIN" "$CFG" $COMMON --set train.steps=2 \
        --set io.run_dir="$TMP/early2" >"$TMP/early2.log" 2>&1 || rc=$?
    [ $rc = 143 ] && grep -q "SIGTERM: stopping" "$TMP/early2.log" && ok "SIGTERM before main: reported, exit 143" ||
        { fail "SIGTERM before main: exit $rc"; cat "$TMP/early2.log"; }
fi
R="$TMP/hup"
"$BIN" "$CFG" $COMMON --set train.steps=100000 --set io.run_dir="$R" >"$TMP/hup.log" 2>&1 &
pid=$!
i=0; while { [ ! -f "$R/metrics.jsonl" ] || [ "$(wc -l <"$R/metrics.jsonl")" -lt 2 ]; } && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
kill -HUP $pid
rc=0; wait $pid || rc=$?
[ $rc = 75 ] && ls -d "$R"/checkpoints/step-* >/dev/null 2>&1 && grep -q "SIGHUP" "$TMP/hup.log" &&
    ok "SIGHUP: a checkpoint and exit 75 (stopped early, resumable), as SIGTERM" || { fail "SIGHUP: exit $rc"; cat "$TMP/hup.log"; ls "$R/checkpoints"; }

# ---- 4. inputs that must agree
cp "$SHARD" "$TMP/v300.tok"
python3 -c "import struct,sys; f=open(sys.argv[1],'r+b'); f.seek(24); f.write(struct.pack('<I', int(sys.argv[2])))" "$TMP/v300.tok" 300
expect_refusal "a validation shard of another vocabulary" "data.val_path .*v300.tok records vocab_size 300 but data.path .* records 256" \
    "$BIN" "$CFG" $COMMON --set train.steps=2 --set io.run_dir="$TMP/val" --set data.val_path="$TMP/v300.tok" --set model.vocab_size=512
expect_refusal "a validation shard above the model's vocabulary" "data.val_path .*v300.tok: header records vocab_size 300, above the model's 256" \
    "$BIN" "$CFG" $COMMON --set train.steps=2 --set io.run_dir="$TMP/val" --set data.val_path="$TMP/v300.tok"
cp "$SHARD" "$TMP/v1.tok"
python3 -c "import struct,sys; f=open(sys.argv[1],'r+b'); f.seek(24); f.write(struct.pack('<I', int(sys.argv[2])))" "$TMP/v1.tok" 1
expect_refusal "a shard header with vocab_size 1" "v1.tok: header records vocab_size 1; a language model needs at least 2" \
    "$BIN" "$CFG" --set data.path="$TMP/v1.tok" --set train.device=cpu --set io.run_dir="$TMP/v1"

R="$TMP/good"
"$BIN" "$CFG" $COMMON --set train.steps=2 --set io.run_dir="$R" >/dev/null 2>&1 || fail "good run failed"
GOOD="$R/checkpoints/step-00000002"
# damage DAMAGE-PYTHON: a copy of the good checkpoint edited by the python
# snippet (d: its folder), manifest entries of edited files given their new CRC
damaged() {
    rm -rf "$TMP/bad"; mkdir -p "$TMP/bad/checkpoints"; cp -r "$GOOD" "$TMP/bad/checkpoints/"
    python3 - "$TMP/bad/checkpoints/step-00000002" "$1" <<'PY'
import os, struct, sys
d, code = sys.argv[1], sys.argv[2]
def crc32c(b):
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    c = 0xFFFFFFFF
    for x in b:
        c = t[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF
def entry(name):
    data = open(os.path.join(d, name), "rb").read()
    return "%s %d %08x" % (name, len(data), crc32c(data))
def resum():
    lines = open(os.path.join(d, "manifest")).read().splitlines()
    out = [lines[0]] + [entry(l.split()[0]) if os.path.exists(os.path.join(d, l.split()[0])) else l for l in lines[1:]]
    open(os.path.join(d, "manifest"), "w").write("\n".join(out) + "\n")
exec(code)
PY
}
RUN_BAD="$BIN $CFG $COMMON --set train.steps=4 --set io.run_dir=$TMP/bad"
damaged 'open(os.path.join(d,"manifest"),"a").write(entry("state") + "\n")'
expect_refusal "a manifest with a duplicate entry" "manifest: line 8: a second entry for state" $RUN_BAD
damaged 'open(os.path.join(d,"manifest"),"a").write("notes.txt 0 00000000\n")'
expect_refusal "a manifest with an unknown entry" "manifest: line 8: unknown entry 'notes.txt'" $RUN_BAD
damaged 'open(os.path.join(d,"manifest"),"a").write("../../../etc/passwd 1 00000000\n")'
expect_refusal "a manifest with a path-like entry" "manifest: line 8 names '../../../etc/passwd', a path" $RUN_BAD
damaged 'open(os.path.join(d,"state"),"a").write("step 2\n"); resum()'
expect_refusal "a state with a duplicate key" "state: line .*: 'step' a second time" $RUN_BAD
damaged 'open(os.path.join(d,"state"),"a").write("learning_rate 1\n"); resum()'
expect_refusal "a state with an unknown key" "state: line .*: unknown key 'learning_rate'" $RUN_BAD
# a NaN in the master weights, at a value of the second tensor
damaged 'f=open(os.path.join(d,"master.bin"),"r+b"); f.seek(32 + 4 * 20000); f.write(struct.pack("<f", float("nan"))); f.close(); resum()'
expect_refusal "NaN in the master weights" "master.bin: tensor 'model.layers.0.[a-z_.]*' holds NaN at element" $RUN_BAD
damaged 'f=open(os.path.join(d,"adam_m.bin"),"r+b"); f.seek(32); f.write(struct.pack("<f", float("inf"))); f.close(); resum()'
expect_refusal "Inf in AdamW's first moment" "adam_m.bin: tensor 'model.embed_tokens.weight' holds \+Inf at element 0" $RUN_BAD
# weights of another checkpoint (step 1 of another run), every checksum right
"$BIN" "$CFG" $COMMON --set train.steps=1 --set io.run_dir="$TMP/other" >/dev/null 2>&1 || fail "other run failed"
damaged "import shutil; shutil.copy('$TMP/other/checkpoints/step-00000001/weights.bin', os.path.join(d, 'weights.bin')); resum()"
expect_refusal "weights of another checkpoint" "weights.bin and master.bin disagree: tensor '.*' element [0-9]+ is" $RUN_BAD

# ---- 5. numbers and environment
expect_refusal "a malformed ASP_PROGRESS_S" "environment variable ASP_PROGRESS_S='10s' is not a number" \
    env ASP_PROGRESS_S=10s "$BIN" "$CFG" $COMMON --set train.steps=2 --set io.run_dir="$TMP/env"
expect_refusal "a malformed ASP_PROFILE" "environment variable ASP_PROFILE='yes' is not a whole number from 0 to 1" \
    env ASP_PROFILE=yes "$BIN" "$CFG" $COMMON --set train.steps=2 --set io.run_dir="$TMP/env"
expect_refusal "a memory budget of 1e308 GiB" "checkpointing.memory_budget_gib" \
    "$BIN" "$CFG" $COMMON --set checkpointing.memory_budget_gib=1e308 --explain
expect_refusal "--gpu-memory 1e308" "--gpu-memory 1e308 GiB is beyond any machine" "$BIN" "$CFG" $COMMON --gpu-memory 1e308 --explain

[ $fails = 0 ] || { echo "$fails run-folder check(s) failed"; exit 1; }
echo "all run-folder checks passed"
