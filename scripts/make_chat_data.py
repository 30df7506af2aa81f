#!/usr/bin/env python3
"""Make a small fine-tuning data set from a text file, for trying --chat end to end.

Writes JSON Lines in the forms Hugging Face datasets use: conversations
({"messages": [{"role": ..., "content": ...}, ...]}, one or two turns, some with a
system message) in which the user gives a sentence of the text and the assistant
answers with the sentence that follows it, and every fifth record a
prompt/completion pair of the same task. Deterministic (the same text gives the
same file); standard library only; written atomically.

usage: make_chat_data.py TEXT OUT.jsonl [--records N]
"""
import argparse
import json
import os
import re
import sys
import tempfile


def sentences(text, longest=160):
    """The text's sentences (runs of words ending in . ! or ?), whitespace folded, short ones kept."""
    out = []
    for m in re.finditer(r"[^.!?]+[.!?]", text):
        s = " ".join(m.group(0).split())
        if 12 <= len(s) <= longest:
            out.append(s)
    return out


def records(sents, n):
    system = {"role": "system", "content": "You continue the text you are given with its next sentence."}
    for i in range(n):
        k = (i * 7) % (len(sents) - 2)
        a, b, c = sents[k], sents[k + 1], sents[k + 2]
        if i % 5 == 4:
            yield {"prompt": f"Text: {a}\nNext: ", "completion": b}
        elif i % 5 == 3:    # two turns: both answers are learned
            yield {"messages": [{"role": "user", "content": f"Continue: {a}"}, {"role": "assistant", "content": b},
                                {"role": "user", "content": "And then?"}, {"role": "assistant", "content": c}]}
        else:
            msgs = [{"role": "user", "content": f"Continue: {a}"}, {"role": "assistant", "content": b}]
            yield {"messages": ([system] if i % 2 else []) + msgs}


def main():
    ap = argparse.ArgumentParser(description="Make a small chat fine-tuning JSONL from a text file.")
    ap.add_argument("text")
    ap.add_argument("output")
    ap.add_argument("--records", type=int, default=2000, help="records to write (default 2000)")
    a = ap.parse_args()
    try:
        with open(a.text, encoding="utf-8") as f:
            sents = sentences(f.read())
    except (OSError, UnicodeDecodeError) as e:
        print(f"make_chat_data: cannot read {a.text}: {e}", file=sys.stderr)
        sys.exit(2)
    if len(sents) < 3 or a.records < 1:
        print(f"make_chat_data: {a.text} has {len(sents)} usable sentences (3 needed) or --records "
              f"{a.records} is below 1", file=sys.stderr)
        sys.exit(2)
    folder = os.path.dirname(os.path.abspath(a.output))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(a.output) + ".", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for r in records(sents, a.records):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, a.output)
    print(f"make_chat_data: {a.records} records from {len(sents)} sentences of {a.text} -> {a.output}")


if __name__ == "__main__":
    main()
