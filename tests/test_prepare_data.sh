#!/bin/sh
# scripts/prepare_data.py with a real Hugging Face tokenizer, built offline: a
# byte-level BPE trained on data/english.txt (300 ids) plus the special token
# <|end_of_text|> (id 300). The shard holds exactly the tokenizer's encoding of
# each file (encoded in small overlapping chunks), EOS after each, splits off
# the validation share, decodes back to the text and trains the tiny model; the
# error paths exit 2 and leave no shard. The script runs with the tokenizers
# library only: transformers, wherever it is installed, is hidden (a stand-in
# package that fails to import), so the result does not depend on what else
# the machine has. Skipped (77), saying why, where python3 cannot import
# tokenizers: scripts/python-deps.sh installs it (set-up and .ci/run call it;
# a test never reaches the network itself).
. "${top_srcdir:-.}/tests/common.sh"
mkdir -p "$TMP/hide/transformers"
echo 'raise ImportError("transformers is hidden by the test: it reads tokenizers only")' \
    >"$TMP/hide/transformers/__init__.py"
export PYTHONPATH="$TMP/hide${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import tokenizers" >/dev/null 2>&1 ||
    skip_test "python3 cannot import tokenizers: scripts/python-deps.sh installs it (setup and .ci/run call it)"
python3 -c "import transformers" >/dev/null 2>&1 && { echo "FAIL: transformers is not hidden"; exit 1; }
set +e  # some commands below are expected to fail
PREP="$top_srcdir/scripts/prepare_data.py"
RUN=""  # a prefix for the failing runs (env ...)
fails=0
ok() { echo "ok:   $1"; }
bad() { echo "FAIL: $1"; fails=$((fails + 1)); }

# The tokenizer, and two documents cut from the English text at line ends; the
# second also has CRLF line ends, blank-line runs and non-ASCII characters.
mkdir "$TMP/tok" "$TMP/docs"
python3 - "$top_srcdir/data/english.txt" "$TMP" <<'PY'
import sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
src, tmp = sys.argv[1], sys.argv[2]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train([src], trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False))
tok.add_special_tokens(["<|end_of_text|>"])
assert tok.get_vocab_size() == 301 and tok.token_to_id("<|end_of_text|>") == 300
tok.save(f"{tmp}/tok/tokenizer.json")
text = open(src, encoding="utf-8").read()
a_end = text.index("\n", 30000) + 1
b_end = text.index("\n", a_end + 20000) + 1
b = text[a_end:b_end].replace("\n", "\r\n", 40) + "\n\n\n   café, naïve, 東京 — ok\n\n"
for name, t in (("a.txt", text[:a_end]), ("b.txt", b)):
    with open(f"{tmp}/docs/{name}", "w", encoding="utf-8", newline="") as f:
        f.write(t)
PY
A="$TMP/docs/a.txt"
B="$TMP/docs/b.txt"
echo "not a document" >"$TMP/docs/notes.md"

# 1. two files, EOS after each, 10% held out, encoded 2000 characters at a time
if python3 "$PREP" --tokenizer "$TMP/tok" "$A" "$B" --output "$TMP/train.tok" --val "$TMP/val.tok" \
        --val-fraction 0.1 --eos --chunk-chars 2000 >"$TMP/out1" 2>&1; then
    cat "$TMP/out1"
    python3 - "$TMP" "$A" "$B" <<'PY' && ok "shard = the tokenizer's encoding + EOS per file, val split, decodes back" || bad "shard contents"
import array, struct, sys
from tokenizers import Tokenizer
tmp, a_path, b_path = sys.argv[1:]
tok = Tokenizer.from_file(f"{tmp}/tok/tokenizer.json")
def shard(path):
    data = open(path, "rb").read()
    magic, version, width, n, vocab = struct.unpack_from("<8sIIQI", data)
    assert (magic, version, width, vocab) == (b"ASPTOKS1", 1, 4, 301), (path, magic, version, width, vocab)
    # --eos records its id: flags bit 0 at offset 28, the id at 32, the rest zero
    assert struct.unpack_from("<II", data, 28) == (1, 300), (path, data[28:36])
    assert data[36:64] == bytes(28) and len(data) == 64 + 4 * n, path
    ids = array.array("I", data[64:])
    if sys.byteorder != "little":
        ids.byteswap()
    return ids.tolist()
train, val = shard(f"{tmp}/train.tok"), shard(f"{tmp}/val.tok")
texts = [open(p, encoding="utf-8", newline="").read() for p in (a_path, b_path)]
enc = [tok.encode(t, add_special_tokens=False).ids for t in texts]
EOS = 300
want = enc[0] + [EOS] + enc[1] + [EOS]
got = train + val
first = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
assert got == want, f"{len(got)} tokens, the tokenizer's encoding {len(want)}: they differ from index {first}"
assert len(val) == int(len(want) * 0.1), (len(val), len(want))
assert got.count(EOS) == 2
n0 = len(enc[0])
assert tok.decode(got[:n0]) == texts[0] and tok.decode(got[n0 + 1:-1]) == texts[1]
assert tok.decode(got, skip_special_tokens=False) == texts[0] + "<|end_of_text|>" + texts[1] + "<|end_of_text|>"
summary = open(f"{tmp}/out1").read()
assert "eos <|end_of_text|> = 300" in summary and f"{len(want)} tokens" in summary and "vocab_size 301" in summary, summary
assert "warning" not in summary, summary   # every chunk join found a word both chunks encode alike
print(f"{len(train)} + {len(val)} tokens, {max(got)} the largest id")
PY
else
    cat "$TMP/out1"; bad "prepare_data.py failed"
fi

# 2. the folder (its .txt files by name), one piece per file, no EOS, vocab_size raised
if python3 "$PREP" --tokenizer "$TMP/tok/tokenizer.json" "$TMP/docs" -o "$TMP/folder.tok" --vocab-size 512 \
        >"$TMP/out2" 2>&1; then
    python3 - "$TMP" "$A" "$B" <<'PY' && ok "a folder of .txt files, --vocab-size 512" || bad "folder input"
import array, struct, sys
from tokenizers import Tokenizer
tmp, a_path, b_path = sys.argv[1:]
tok = Tokenizer.from_file(f"{tmp}/tok/tokenizer.json")
data = open(f"{tmp}/folder.tok", "rb").read()
assert struct.unpack_from("<I", data, 24)[0] == 512
assert data[28:64] == bytes(36)   # no --eos: no EOS id recorded
want = []
for p in (a_path, b_path):
    want += tok.encode(open(p, encoding="utf-8", newline="").read(), add_special_tokens=False).ids
assert array.array("I", data[64:]).tolist() == want
assert "2 files" in open(f"{tmp}/out2").read()
PY
else
    cat "$TMP/out2"; bad "prepare_data.py on a folder failed"
fi

# 3. the engine takes its vocab_size from the shard's header (301), trains on
#    it with the recorded EOS ending documents, and refuses a smaller model
#    vocab_size naming both
export OMP_NUM_THREADS=2
if "$BIN" "$top_srcdir/configs/tiny.yaml" --set data.path="$TMP/train.tok" --set data.val_path= --set data.documents=eos \
        --set train.steps=2 --set train.device=cpu --set io.run_dir="$TMP/run" --set io.save_at_end=false \
        >"$TMP/train.log" 2>&1; then
    python3 - "$TMP/run/metrics.jsonl" "$TMP/run/config.yaml" <<'PY' && ok "autosp-train trains 2 steps on it (vocab_size 301 and EOS 300 from the header)" || bad "training metrics"
import json, math, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if "loss" in r]   # not the validation rows
assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows), rows
assert abs(rows[0]["loss"] - math.log(301)) < 0.3, f"first loss {rows[0]['loss']}, ln 301 = {math.log(301)}"
assert "vocab_size: 301" in open(sys.argv[2]).read()
PY
else
    cat "$TMP/train.log"; bad "training on the shard failed"
fi
"$BIN" "$top_srcdir/configs/tiny.yaml" --set data.path="$TMP/train.tok" --set model.vocab_size=256 --set train.steps=1 \
    --set train.device=cpu --set io.run_dir="$TMP/run256" >"$TMP/train256.log" 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q "records vocab_size 301, above the model vocab_size 256" "$TMP/train256.log"; then
    ok "model.vocab_size 256 refuses the shard's 301, naming both"
else
    cat "$TMP/train256.log"; bad "model.vocab_size 256: status $rc"
fi

# 4. errors: status 2, a message, and no shard
expect_fail() {  # WHAT PATTERN ARGS...: exit status 2, a message matching PATTERN, no $TMP/err.tok
    what=$1 pattern=$2; shift 2
    $RUN python3 "$PREP" "$@" >"$TMP/err.log" 2>&1
    rc=$?
    if [ $rc -eq 2 ] && grep -q -- "$pattern" "$TMP/err.log" && [ ! -e "$TMP/err.tok" ]; then
        ok "$what: $(cat "$TMP/err.log")"
    else
        bad "$what: status $rc, expected 2 and '$pattern'"; cat "$TMP/err.log"
    fi
}
mkdir "$TMP/empty"
E="$TMP/err.tok"
expect_fail "missing tokenizer" "tokenizer $TMP/nowhere does not exist" --tokenizer "$TMP/nowhere" "$A" -o "$E"
expect_fail "folder without tokenizer.json" "no tokenizer.json in $TMP/empty" --tokenizer "$TMP/empty" "$A" -o "$E"
expect_fail "--vocab-size too small" "vocab-size 100 is too small: the text has token id [0-9]*, so the vocab_size must be at least" \
    --tokenizer "$TMP/tok" "$A" -o "$E" --vocab-size 100
expect_fail "missing input" "input $TMP/missing.txt does not exist" --tokenizer "$TMP/tok" "$A" "$TMP/missing.txt" -o "$E"
printf 'a' >"$TMP/one.txt"
expect_fail "fewer than 2 tokens" "only 1 token; a shard needs at least 2" --tokenizer "$TMP/tok" "$TMP/one.txt" -o "$E"
expect_fail "EOS token not in the vocabulary" "eos-token '<|nope|>' is not a token" \
    --tokenizer "$TMP/tok" "$A" -o "$E" --eos --eos-token '<|nope|>'
mkdir -p "$TMP/block/tokenizers" "$TMP/block/transformers"
echo 'raise ImportError("hidden by the test")' >"$TMP/block/tokenizers/__init__.py"
cp "$TMP/block/tokenizers/__init__.py" "$TMP/block/transformers/__init__.py"
RUN="env PYTHONPATH=$TMP/block:$PYTHONPATH"
expect_fail "no tokenizers library" "pip install tokenizers" --tokenizer "$TMP/tok" "$A" -o "$E"
RUN=""

# a failure in the second file leaves the old shard as it was, and no temporary file
printf 'fine\n\377 not UTF-8\n' >"$TMP/bad.txt"
cp "$TMP/folder.tok" "$TMP/keep.tok"
python3 "$PREP" --tokenizer "$TMP/tok" "$A" "$TMP/bad.txt" -o "$TMP/keep.tok" >"$TMP/err.log" 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q "bad.txt is not UTF-8 text: byte 0xff at offset 5" "$TMP/err.log" &&
        cmp -s "$TMP/folder.tok" "$TMP/keep.tok" && [ -z "$(ls "$TMP" | grep '\.tmp$')" ]; then
    ok "invalid UTF-8 in the second file: status 2, old shard untouched, no temporary file"
else
    bad "invalid UTF-8: status $rc"; cat "$TMP/err.log"; ls "$TMP"
fi

# token ids must fit 32 bits (the writer refuses others; no tokenizer here makes them)
python3 - "$top_srcdir/scripts/text_to_shard.py" "$TMP/big-id.tok" <<'PY' && ok "the writer refuses a token id >= 2^32" || bad "id >= 2^32"
import glob, importlib.util, os, sys
spec = importlib.util.spec_from_file_location("text_to_shard", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
try:
    with mod.ShardWriter(sys.argv[2]) as w:
        w.append([1, 2 ** 32])
        w.commit(2)
    raise AssertionError("no error")
except OverflowError:
    pass
assert not os.path.exists(sys.argv[2]) and not glob.glob(sys.argv[2] + ".*.tmp")
PY

# SIGTERM while it writes: status 143, no shard, no temporary file
python3 "$PREP" --tokenizer "$TMP/tok" $(for i in 1 2 3 4 5 6 7 8; do echo "$top_srcdir/data/english.txt"; done) \
    -o "$TMP/term.tok" --chunk-chars 4096 --batch 1 >"$TMP/term.log" 2>&1 &
pid=$!
i=0
while [ $i -lt 200 ] && [ -z "$(ls "$TMP" | grep '^term\.tok\..*\.tmp$')" ]; do sleep 0.05; i=$((i + 1)); done
sleep 0.3
kill -TERM $pid 2>/dev/null
wait $pid
rc=$?
if [ $rc -eq 143 ] && [ ! -e "$TMP/term.tok" ] && [ -z "$(ls "$TMP" | grep '\.tmp$')" ]; then
    ok "SIGTERM while writing: status 143, no shard, no temporary file"
elif [ $rc -eq 0 ]; then
    echo "note: the run ended before SIGTERM reached it; interruption not checked"
else
    bad "SIGTERM: status $rc"; cat "$TMP/term.log"; ls "$TMP"
fi

# 5. --chat: conversations rendered with the tokenizer's chat template (the
#    byte tokenizer of scripts/byte_tokenizer.py: its ids are the bytes, so the
#    expected shard is computed here from the messages alone), prompt/completion
#    pairs, the assistant's (completion's) bytes the only targets, EOS after each
#    record, the last records held out, long records reported and dropped
mkdir "$TMP/bt"
python3 "$top_srcdir/scripts/byte_tokenizer.py" "$TMP/bt" >/dev/null
python3 - "$TMP/chat.jsonl" <<'PY'
import json, random, sys
rng = random.Random(5)
words = "the light was good and it was evening café 東京 naïve morning day night".split()
def text(n):
    return " ".join(rng.choice(words) for _ in range(n))
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for i in range(40):
        if i % 4 == 3:
            r = {"prompt": text(rng.randint(2, 9)) + ": ", "completion": text(rng.randint(1, 7))}
        else:
            m = [{"role": "system", "content": text(3)}] if i % 2 else []
            for _ in range(1 + i % 3):
                m += [{"role": "user", "content": text(rng.randint(1, 12))},
                      {"role": "assistant", "content": text(rng.randint(1, 12))}]
            r = {"messages": m}
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
    f.write("\n")   # a blank line is skipped
PY
if python3 "$PREP" --chat --tokenizer "$TMP/bt" "$TMP/chat.jsonl" -o "$TMP/chat.tok" --val "$TMP/chat_val.tok" \
        --val-fraction 0.1 --seq-len 150 >"$TMP/chat.log" 2>&1; then
    cat "$TMP/chat.log"
    python3 - "$TMP" <<'PY' && ok "--chat: bytes of the template's rendering, the assistant's and completions' bytes the targets, EOS per record, whole records held out" || bad "--chat shard"
import json, struct, sys
tmp = sys.argv[1]
EOS = 4
want_ids, want_mask, ends = [], [], []
for line in open(f"{tmp}/chat.jsonl", encoding="utf-8"):
    if not line.strip():
        continue
    r = json.loads(line)
    if "messages" in r:
        for m in r["messages"]:
            head = f"<|{m['role']}|>\n".encode()
            body = (m["content"] + "\n").encode()
            want_ids += list(head) + list(body)
            want_mask += [0] * len(head) + [int(m["role"] == "assistant")] * len(body)
    else:
        p, c = r["prompt"].encode(), r["completion"].encode()
        want_ids += list(p) + list(c)
        want_mask += [0] * len(p) + [1] * len(c)
    want_ids.append(EOS)
    want_mask.append(1)     # every record here ends with a learned part: the EOS is learned too
    ends.append(len(want_ids))
def shard(path):
    d = open(path, "rb").read()
    magic, version, width, n, vocab, flags, eos = struct.unpack_from("<8sIIQIII", d)
    assert (magic, version, width, vocab, flags, eos) == (b"ASPTOKS1", 2, 4, 256, 1, EOS), (path, version, flags)
    mb = (n + 7) // 8
    assert len(d) == 64 + 4 * n + mb, path
    ids = list(struct.unpack_from(f"<{n}I", d, 64))
    bits = d[64 + 4 * n:]
    return ids, [bits[i // 8] >> (i % 8) & 1 for i in range(n)]
ti, tm = shard(f"{tmp}/chat.tok")
vi, vm = shard(f"{tmp}/chat_val.tok")
assert ti + vi == want_ids, "token ids differ from the template's rendering"
first = next((i for i, (a, b) in enumerate(zip(tm + vm, want_mask)) if a != b), None)
assert first is None, f"target mask differs at token {first}"
assert len(ti) in ends, "the validation split cuts a record"
assert abs(len(vi) - 0.1 * len(want_ids)) < 200, (len(vi), len(want_ids))
log = open(f"{tmp}/chat.log").read()
assert f"{len(want_ids)} tokens of which {sum(want_mask)} targets" in log, log
longest = max(b - a for a, b in zip([0] + ends, ends))
n_long = sum(1 for a, b in zip([0] + ends, ends) if b - a > 150)
assert n_long and f"{n_long} of 40 conversations are longer than --seq-len 150 tokens (the longest has {longest})" in log, log
print(f"{len(ti)} + {len(vi)} tokens, {sum(want_mask)} targets, {n_long} records over 150 tokens")
PY
else
    cat "$TMP/chat.log"; bad "prepare_data.py --chat failed"
fi
python3 "$PREP" --chat --tokenizer "$TMP/bt" "$TMP/chat.jsonl" -o "$TMP/chat_drop.tok" --seq-len 150 --long drop \
    >"$TMP/drop.log" 2>&1 && grep -q "longer than --seq-len 150 tokens (the longest has [0-9]*): dropped" "$TMP/drop.log" &&
    [ "$(wc -c <"$TMP/chat_drop.tok")" -lt "$(wc -c <"$TMP/chat.tok")" ] &&
    ok "--long drop leaves the long records out" || { bad "--long drop"; cat "$TMP/drop.log"; }

# the engine trains on it: documents from the header's EOS, validation on the held-out records
if "$BIN" "$top_srcdir/configs/tiny.yaml" --set data.path="$TMP/chat.tok" --set data.val_path="$TMP/chat_val.tok" \
        --set data.documents=eos --set train.steps=2 --set train.eval_every=1 --set train.device=cpu \
        --set io.run_dir="$TMP/chatrun" --set io.save_at_end=false >"$TMP/chatrun.log" 2>&1 &&
        [ "$(grep -c '"val_loss"' "$TMP/chatrun/metrics.jsonl")" -ge 2 ]; then
    ok "autosp-train trains and validates on the masked shards"
else
    cat "$TMP/chatrun.log"; bad "training on the masked shard"
fi

# --chat errors: the file and line, status 2, no shard
printf '{"messages": [{"role": "user", "content": "hi"}]}\n' >"$TMP/noasst.jsonl"
expect_fail "a conversation without an assistant message" "noasst.jsonl:1: the conversation has no assistant message" \
    --chat --tokenizer "$TMP/bt" "$TMP/noasst.jsonl" -o "$E"
printf '{"prompt": "a", "completion": "b"}\n{"messages": [\n' >"$TMP/badjson.jsonl"
expect_fail "a line that is not JSON" "badjson.jsonl:2: not JSON" --chat --tokenizer "$TMP/bt" "$TMP/badjson.jsonl" -o "$E"
printf '{"text": "a"}\n' >"$TMP/nokeys.jsonl"
expect_fail "a record of neither form" 'nokeys.jsonl:1: a record needs "messages", or "prompt" and "completion"' \
    --chat --tokenizer "$TMP/bt" "$TMP/nokeys.jsonl" -o "$E"
expect_fail "a conversation and a tokenizer without a chat template" "has no chat template" \
    --chat --tokenizer "$TMP/tok" "$TMP/chat.jsonl" -o "$E" --eos-token '<|end_of_text|>'

[ $fails -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "ok: prepare_data.py"
