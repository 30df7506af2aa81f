#!/bin/sh
# The predicted step on the command line: --explain --gpu h100|h200|FILE
# prints a PREDICTED STEP section (default: the card present, else h100), a
# bad profile is refused with status 2 naming its line and key, and a run
# given --gpu prints its predicted step beside the measured one and writes
# predicted_ms in every metrics line (none without --gpu on the cpu backend).
. "${top_srcdir:-.}/tests/common.sh"
CFG="$top_srcdir/configs/tiny.yaml"
fail() { echo "FAIL: $*"; exit 1; }
for card in h100 h200; do
    "$BIN" "$CFG" --explain --gpu $card >"$TMP/ex.$card" 2>&1 || { cat "$TMP/ex.$card"; fail "--explain --gpu $card"; }
    grep -q "^PREDICTED STEP on $card" "$TMP/ex.$card" || fail "no PREDICTED STEP on $card section"
    for kind in GEMMs attention "memory-bound ops" recompute "exposed PCIe copies" "exposed communication" \
                "exposed host AdamW" step; do
        grep -q "^  $kind  *[0-9.]* s" "$TMP/ex.$card" || fail "no '$kind' row on $card"
    done
    grep -q "tokens/s [0-9]*, .* MFU [0-9.]*% of 989" "$TMP/ex.$card" || fail "no tokens/s and MFU on $card"
done
"$BIN" "$CFG" --explain >"$TMP/ex.default" 2>&1 || fail "--explain without --gpu"
grep -q "^PREDICTED STEP on h[12]00" "$TMP/ex.default" || fail "no default prediction"
# a profile file: the built-in h100's text reads back as the same prediction
cp "$top_srcdir/tests/fuzz/corpus/profile/h100.txt" "$TMP/card.txt"
"$BIN" "$CFG" --explain --gpu "$TMP/card.txt" >"$TMP/ex.file" 2>&1 || { cat "$TMP/ex.file"; fail "--gpu FILE"; }
[ "$(sed -n '/^PREDICTED/,$p' "$TMP/ex.file")" = "$(sed -n '/^PREDICTED/,$p' "$TMP/ex.h100")" ] ||
    fail "the h100 text as a file predicts differently from the built-in"
# refusals: status 2, the line and the key named
printf 'autosp-card-profile 1\npeak_tflops 989\ngemm 1e9 fast\n' >"$TMP/bad.txt"
rc=0; "$BIN" "$CFG" --explain --gpu "$TMP/bad.txt" >"$TMP/bad.log" 2>&1 || rc=$?
[ $rc = 2 ] || fail "a bad profile exited $rc, not 2"
grep -q "bad.txt:3: gemm: 'fast' is not a number" "$TMP/bad.log" || { cat "$TMP/bad.log"; fail "the refusal names no line and key"; }
rc=0; "$BIN" "$CFG" --explain --gpu "$TMP/none.txt" >"$TMP/none.log" 2>&1 || rc=$?
[ $rc = 2 ] && grep -q "none.txt" "$TMP/none.log" || fail "a missing profile: status $rc"
# a run: the predicted line after the first timed step, predicted_ms in metrics
SHARD=$(make_shard)
run() {
    name=$1
    shift
    "$BIN" "$CFG" --set data.path="$SHARD" --set train.steps=3 --set model.num_hidden_layers=2 \
        --set train.seq_len=64 --set train.device=cpu --set io.save_at_end=false --set io.run_dir="$TMP/$name" "$@" \
        >"$TMP/$name.log" 2>&1 || { cat "$TMP/$name.log"; fail "run $name"; }
}
run pred --gpu h100
grep -q "^predicted step: [0-9.]* s on the h100 card profile; measured [0-9.]* s" "$TMP/pred.log" ||
    { cat "$TMP/pred.log"; fail "no predicted step line"; }
[ "$(grep -c '^predicted step' "$TMP/pred.log")" = 1 ] || fail "the predicted line is not printed once"
[ "$(grep -c '"predicted_ms": [0-9.]*}' "$TMP/pred/metrics.jsonl")" = 3 ] || fail "predicted_ms missing from metrics"
python3 -c "import json,sys; [json.loads(l) for l in open(sys.argv[1])]" "$TMP/pred/metrics.jsonl" || fail "metrics not JSON"
run nopred
grep -q "^predicted step" "$TMP/nopred.log" && fail "the cpu backend predicted without --gpu"
grep -q predicted_ms "$TMP/nopred/metrics.jsonl" && fail "predicted_ms without a prediction"
echo "ok: --explain --gpu predicts the step; a run reports it beside the measured one"
