#!/bin/sh
# Runs survive their end: SIGTERM mid-run leaves a complete checkpoint and
# exit status 75 (stopped early, resumable); SIGUSR1 checkpoints and training goes on; SIGKILL in the
# middle of writing a checkpoint leaves the previous one usable and the half
# one is never picked. A corrupted byte, a truncated file, a missing file and
# a different model are refused with a message naming the file and problem.
. "${top_srcdir:-.}/tests/common.sh"
SHARD=$(make_shard)
CFG="$top_srcdir/configs/tiny.yaml"
COMMON="--set data.path=$SHARD --set model.num_hidden_layers=2 --set train.seq_len=64 --set train.global_batch_size=4
        --set io.log_every=1000 --set train.device=cpu"
fails=0
ok() { echo "ok:   $1"; }
fail() { echo "FAIL: $1"; fails=$((fails + 1)); }

# wait until the run in $1 has logged at least $2 steps (or 30 s)
wait_steps() {
    i=0
    while [ $i -lt 300 ]; do
        [ -f "$1/metrics.jsonl" ] && [ "$(wc -l <"$1/metrics.jsonl")" -ge "$2" ] && return 0
        sleep 0.1; i=$((i + 1))
    done
    return 1
}
newest() { ls -d "$1"/checkpoints/step-* 2>/dev/null | grep -v '\.tmp-' | tail -1; }

# ---- SIGTERM: checkpoint, exit 75 (stopped early, resumable)
R="$TMP/term"
"$BIN" "$CFG" $COMMON --set train.steps=100000 --set io.run_dir="$R" >"$TMP/term.log" 2>&1 &
pid=$!
wait_steps "$R" 3 || fail "SIGTERM run did not start"
kill -TERM $pid
rc=0; wait $pid || rc=$?
ck=$(newest "$R")
[ $rc = 75 ] && grep -q "stopped early by SIGTERM at step" "$TMP/term.log" && ok "SIGTERM: exit status 75, stopped early" ||
    { fail "SIGTERM: exit status $rc, expected 75"; cat "$TMP/term.log"; }
if [ -n "$ck" ] && [ -f "$ck/manifest" ]; then ok "SIGTERM: complete checkpoint $(basename "$ck")"; else fail "SIGTERM: no checkpoint"; fi
steps=$(sed -n 's/^step \([0-9]*\)$/\1/p' "$ck/state")
"$BIN" "$CFG" $COMMON --set train.steps=$((steps + 2)) --set io.run_dir="$R" >"$TMP/term2.log" 2>&1 &&
    grep -q "resumed from .*$(basename "$ck")" "$TMP/term2.log" && ok "SIGTERM: resumed from it and trained 2 more steps" ||
    { fail "SIGTERM: resume failed"; cat "$TMP/term2.log"; }

# ---- SIGUSR1: checkpoint and continue
R="$TMP/usr1"
"$BIN" "$CFG" $COMMON --set train.steps=100000 --set io.run_dir="$R" >"$TMP/usr1.log" 2>&1 &
pid=$!
wait_steps "$R" 2 || fail "SIGUSR1 run did not start"
kill -USR1 $pid
i=0; while [ -z "$(newest "$R")" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
first=$(newest "$R")
# training goes on: a new metrics line within 20 s (a step is slow under the sanitizers)
n1=$(wc -l <"$R/metrics.jsonl"); n2=$n1; i=0
while [ "$n2" -le "$n1" ] && [ $i -lt 200 ]; do sleep 0.1; n2=$(wc -l <"$R/metrics.jsonl"); i=$((i + 1)); done
if [ -n "$first" ] && kill -0 $pid 2>/dev/null && [ "$n2" -gt "$n1" ]; then
    ok "SIGUSR1: checkpoint $(basename "$first") written and training goes on"
else fail "SIGUSR1: no checkpoint, or training stopped"; cat "$TMP/usr1.log"; fi
kill -TERM $pid; wait $pid || true

# ---- SIGKILL in the middle of a checkpoint write
R="$TMP/kill"
"$BIN" "$CFG" $COMMON --set train.steps=4 --set io.run_dir="$R" >"$TMP/kill0.log" 2>&1 || fail "first run failed"
ASP_CKPT_WRITE_DELAY_MS=300 "$BIN" "$CFG" $COMMON --set train.steps=8 --set io.run_dir="$R" >"$TMP/kill.log" 2>&1 &
pid=$!
i=0; while ! ls -d "$R"/checkpoints/*.tmp-* >/dev/null 2>&1 && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
sleep 0.4
kill -KILL $pid; wait $pid || true
if ls -d "$R"/checkpoints/step-00000008.tmp-* >/dev/null 2>&1 && [ ! -e "$R/checkpoints/step-00000008" ]; then
    ok "SIGKILL: killed mid-write, only a temporary folder of step 8 is left"
else fail "SIGKILL: expected a half-written temporary folder and no step-00000008"; ls -la "$R/checkpoints"; fi
"$BIN" "$CFG" $COMMON --set train.steps=8 --set io.run_dir="$R" >"$TMP/kill2.log" 2>&1 &&
    grep -q "resumed from .*step-00000004" "$TMP/kill2.log" &&
    ok "SIGKILL: the previous checkpoint (step 4) is picked and training finishes" ||
    { fail "SIGKILL: resume after the kill"; cat "$TMP/kill2.log"; }
ls -d "$R"/checkpoints/*.tmp-* >/dev/null 2>&1 && fail "SIGKILL: the dead writer's temporary folder was not cleaned up" ||
    ok "SIGKILL: the dead writer's temporary folder was removed"

# ---- SIGKILL after every file operation of a save and its prune: a folder
# with the final name always holds every file its manifest lists
R="$TMP/prune"
"$BIN" "$CFG" $COMMON --set train.steps=2 --set io.save_every=1 --set io.keep_last=2 --set io.run_dir="$R" \
    >"$TMP/prune0.log" 2>&1 || fail "prune: first run failed"
complete_or_absent() { # run dir: every step-NNNNNNNN folder is whole; at least one exists
    whole=0
    for d in "$1"/checkpoints/step-????????; do
        [ -d "$d" ] || continue
        [ -f "$d/manifest" ] || { echo "$d has no manifest"; return 1; }
        tail -n +2 "$d/manifest" | while read -r name size crc; do
            [ -f "$d/$name" ] && [ "$(wc -c <"$d/$name")" = "$size" ] || { echo "$d/$name missing or short"; exit 1; }
        done || return 1
        whole=$((whole + 1))
    done
    [ $whole -gt 0 ] || { echo "no complete checkpoint left"; return 1; }
}
n=1; killed=0; bad_at=""
while [ $n -le 60 ]; do
    rm -rf "$TMP/prune-k"; cp -r "$R" "$TMP/prune-k"
    rc=0
    ASP_CKPT_KILL_AFTER=$n "$BIN" "$CFG" $COMMON --set train.steps=3 --set io.save_every=1 --set io.keep_last=1 \
        --set io.run_dir="$TMP/prune-k" >"$TMP/prune-k.log" 2>&1 || rc=$?
    [ $rc = 0 ] && break
    [ $rc = 137 ] || { bad_at="$bad_at $n(status $rc)"; break; }
    killed=$((killed + 1))
    complete_or_absent "$TMP/prune-k" >"$TMP/prune-why.log" || bad_at="$bad_at $n($(cat "$TMP/prune-why.log"))"
    n=$((n + 1))
done
if [ -z "$bad_at" ] && [ $killed -ge 20 ]; then
    ok "SIGKILL after each of the $killed file operations of a save + prune: every final-named folder is complete"
else fail "kill during save/prune (killed $killed times): incomplete final-named folder at:$bad_at"; fi
# the last killed state (in the middle of deleting the oldest) resumes
rm -rf "$TMP/prune-k"; cp -r "$R" "$TMP/prune-k"
ASP_CKPT_KILL_AFTER=$((killed - 2)) "$BIN" "$CFG" $COMMON --set train.steps=3 --set io.save_every=1 --set io.keep_last=1 \
    --set io.run_dir="$TMP/prune-k" >/dev/null 2>&1 || true
"$BIN" "$CFG" $COMMON --set train.steps=4 --set io.keep_last=1 --set io.run_dir="$TMP/prune-k" >"$TMP/prune-r.log" 2>&1 &&
    grep -q "resumed from .*step-00000003" "$TMP/prune-r.log" && ! ls -d "$TMP"/prune-k/checkpoints/*.del-* >/dev/null 2>&1 &&
    ok "after a kill mid-prune: resumed from the newest checkpoint, the half-deleted folder removed" ||
    { fail "resume after a kill mid-prune"; cat "$TMP/prune-r.log"; ls "$TMP/prune-k/checkpoints"; }

# ---- refused checkpoints: each case copies a good one and damages it
R="$TMP/good"
"$BIN" "$CFG" $COMMON --set train.steps=2 --set io.run_dir="$R" >"$TMP/good.log" 2>&1 || fail "good run failed"
GOOD="$R/checkpoints/step-00000002"
refuse() { # what expected-message-regex [extra args]
    what=$1; pat=$2; shift 2
    rc=0
    "$BIN" "$CFG" $COMMON --set train.steps=4 --set io.run_dir="$TMP/bad" "$@" >"$TMP/bad.log" 2>&1 || rc=$?
    if [ $rc = 2 ] && grep -Eq "$pat" "$TMP/bad.log" && ! grep -q "^step" "$TMP/bad.log"; then
        ok "$what refused: $(grep -E "$pat" "$TMP/bad.log" | head -1 | sed 's|.*error: ||' | rev | cut -c1-140 | rev)"
    else fail "$what: expected exit 2 and /$pat/, got $rc"; cat "$TMP/bad.log"; fi
}
fresh_bad() { rm -rf "$TMP/bad"; mkdir -p "$TMP/bad/checkpoints"; cp -r "$GOOD" "$TMP/bad/checkpoints/"; B="$TMP/bad/checkpoints/step-00000002"; }
fresh_bad
python3 -c "import sys; p=sys.argv[1]; d=bytearray(open(p,'rb').read()); d[1000]^=0x40; open(p,'wb').write(d)" "$B/master.bin"
refuse "a corrupted byte" "master.bin: checksum mismatch"
fresh_bad; truncate -s 4000 "$B/adam_v.bin"
refuse "a truncated file" "adam_v.bin: 4000 bytes .*truncated"
fresh_bad; rm "$B/adam_m.bin"
refuse "a missing file" "adam_m.bin: missing"
fresh_bad; rm "$B/manifest"
refuse "a checkpoint without manifest" "manifest: missing"
fresh_bad
refuse "a different model" "model.hidden_size is 64 in the checkpoint but 128" --set model.hidden_size=128 --set model.head_dim=32
refuse "a different RoPE base" "model.rope_theta is 10000 in the checkpoint but 500000" --set model.rope_theta=500000
refuse "a different norm epsilon" "model.rms_norm_eps is 1e-05 in the checkpoint but 1e-06" --set model.rms_norm_eps=1e-6
refuse "a different max_position_embeddings" "model.max_position_embeddings is 4096 in the checkpoint but 8192" --set model.max_position_embeddings=8192
refuse "RoPE scaling switched on" "model.rope_scaling.enabled is 0 in the checkpoint but 1" --set model.rope_scaling.factor=8
# a crafted state (with a manifest that matches it): an empty step, a huge data position
restate() { # sed-expression: edit the state, then give the manifest its new size and CRC-32C
    sed -i "$1" "$B/state"
    python3 - "$B" <<'PY'
import os, sys
d = sys.argv[1]
def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c ^= x
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF
data = open(os.path.join(d, "state"), "rb").read()
lines = open(os.path.join(d, "manifest")).read().splitlines()
out = [l if not l.startswith("state ") else "state %d %08x" % (len(data), crc32c(data)) for l in lines]
open(os.path.join(d, "manifest"), "w").write("\n".join(out) + "\n")
PY
}
fresh_bad; restate 's/^step .*/step /'
refuse "a state with an empty step" "state: 'step' is missing or not a number"
fresh_bad; restate 's/^epoch .*/epoch 9223372036854775807/; s/^cursor .*/cursor 9223372036854775807/'
refuse "a state with epoch and cursor at INT64_MAX" "state: step 2, epoch 9223372036854775807, cursor 9223372036854775807 is beyond any run"
# a FIFO in place of a checkpoint file is refused, not waited on
fresh_bad; rm "$B/manifest"; mkfifo "$B/manifest"
start=$(date +%s)
refuse "a FIFO as the manifest" "manifest: is a FIFO \(named pipe\), not a regular file"
[ $(( $(date +%s) - start )) -lt 20 ] || fail "the FIFO took $(( $(date +%s) - start )) s to refuse"
fresh_bad
refuse "an explicit path that is no checkpoint" "io.resume: .* is not a checkpoint folder" --set io.resume="$TMP/nowhere"
fresh_bad; rm "$B/weights.bin"
refuse "an explicit damaged path" "weights.bin: missing" --set io.resume="$B"

# a damaged newest checkpoint: auto says so and uses the older one
rm -rf "$TMP/two"; mkdir -p "$TMP/two/checkpoints"; cp -r "$GOOD" "$TMP/two/checkpoints/"
"$BIN" "$CFG" $COMMON --set train.steps=4 --set io.run_dir="$TMP/two" --set io.save_every=3 --set io.resume=never >/dev/null 2>&1
# now step-2 (copied), step-3 and step-4 exist; damage step-4
python3 -c "import sys; p=sys.argv[1]; d=bytearray(open(p,'rb').read()); d[-1]^=1; open(p,'wb').write(d)" "$TMP/two/checkpoints/step-00000004/weights.bin"
"$BIN" "$CFG" $COMMON --set train.steps=5 --set io.run_dir="$TMP/two" >"$TMP/two.log" 2>&1 &&
    grep -q "skipping unusable newer checkpoint.*step-00000004/weights.bin: checksum mismatch.*using .*step-00000003" "$TMP/two.log" &&
    ok "auto warns about the damaged newest checkpoint and uses the older one" ||
    { fail "auto fallback with a warning"; cat "$TMP/two.log"; }
# keep_last 3: after step-5 is written, step-2 is deleted
[ ! -e "$TMP/two/checkpoints/step-00000002" ] && [ -e "$TMP/two/checkpoints/step-00000005" ] &&
    ok "keep_last 3: the oldest checkpoint was deleted after the new one was complete" ||
    { fail "keep_last"; ls "$TMP/two/checkpoints"; }

[ $fails = 0 ] || { echo "$fails fault check(s) failed"; exit 1; }
echo "all fault checks passed"
