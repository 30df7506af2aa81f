#!/bin/sh
# The README's --explain example is the binary's own output: every line of
# the example block is a line --explain prints, and every figure the prose
# beside it quotes is what the command it names prints today.
. "${top_srcdir:-.}/tests/common.sh"
command -v python3 >/dev/null 2>&1 || skip_test "no python3 (scripts/setup.sh installs it)"
R="$top_srcdir/README.md"
C8="$top_srcdir/configs/llama31_8b.yaml"
C1="$top_srcdir/configs/llama32_1b.yaml"
DEV="--set checkpointing.offload=false --set optimizer.offload=false"
"$BIN" "$C8" --explain --world 8 >"$TMP/8b.txt" 2>&1
"$BIN" "$C8" --explain --world 8 --host-memory 2048 >"$TMP/8b-host.txt" 2>&1
"$BIN" "$C8" --explain --world 8 $DEV >"$TMP/8b-dev.txt" 2>&1
"$BIN" "$C1" --explain $DEV >"$TMP/1b-dev.txt" 2>&1
"$BIN" "$C1" --explain >"$TMP/1b.txt" 2>&1
python3 - "$R" "$TMP" <<'PY'
import re, sys
readme, tmp = open(sys.argv[1]).read(), sys.argv[2]
out = lambda n: open(f"{tmp}/{n}.txt").read()
fails = 0
def check(what, ok, detail=""):
    global fails
    print(("ok:   " if ok else "FAIL: ") + what + (f" ({detail})" if detail else ""))
    fails += not ok
cmd = "    $ ./autosp-train configs/llama31_8b.yaml --explain --world 8"
i = readme.index(cmd)
block = readme[readme.index("```\n", i) + 4:]
block = block[:block.index("```")]
lines = set(out("8b").split("\n"))
missing = [l for l in block.split("\n") if l and not l.strip().startswith("...") and l not in lines]
check("every line of the README's --explain block is printed by the binary", not missing,
      "; ".join(missing[:3]))
def longest(name, which):   # which: 0 = the fixed placement's, 1 = auto's, 2 = without recomputing attention
    t = out(name)
    m = re.search(r"LONGEST S that fits .*?: (\d+) tokens with .*?; (\d+) tokens with the placement auto", t)
    k = re.search(r"LONGEST S with no layer recomputing attention: (\d+) tokens", t)
    return int([m.group(1), m.group(2), k.group(1)][which])
def quoted(figure):
    return f"{figure:,}" in readme
for name, which, what in [("8b-host", 1, "--host-memory 2048, auto"), ("8b-host", 2, "--host-memory 2048, no recompute"),
                          ("8b-dev", 1, "devices alone"), ("1b-dev", 0, "1B device alone"), ("1b", 1, "1B with the host tier")]:
    v = longest(name, which)
    check(f"the README quotes {what}: {v:,}", quoted(v))
sys.exit(1 if fails else 0)
PY
