#!/usr/bin/env python3
"""Write the byte-level tokenizer of scripts/text_to_shard.py as a Hugging Face
tokenizer folder: tokenizer.json (token id = byte value, vocabulary 256) and
tokenizer_config.json with a chat template, so that a model trained on
byte-level shards (configs/tiny.yaml) can be fine-tuned on conversations with
scripts/prepare_data.py --chat, and loaded by transformers' AutoTokenizer.

The template writes each message as "<|ROLE|>\\n" + content + "\\n" in plain
text (bytes like any other) and, with add_generation_prompt, ends with
"<|assistant|>\\n". A byte vocabulary has no room for special tokens, so the
EOS token that ends each conversation is byte 0x04 (ASCII end of transmission),
whose token string in the byte-level alphabet is "\\u0104" ("Ą"). Standard
library only; writes atomically into an existing folder.

usage: byte_tokenizer.py DIR
"""
import json
import os
import sys
import tempfile

EOS_BYTE = 4
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def byte_alphabet():
    """GPT-2's bytes_to_unicode: byte value -> the character a ByteLevel tokenizer shows for it."""
    shown = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = dict((b, chr(b)) for b in shown), 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def tokenizer_json():
    chars = byte_alphabet()
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {chars[b]: b for b in range(256)}, "merges": []},
    }


def tokenizer_config():
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 20,
            "eos_token": byte_alphabet()[EOS_BYTE], "chat_template": CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False}


def write_json(path, obj):
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main():
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        sys.exit(2)
    folder = sys.argv[1]
    if not os.path.isdir(folder):
        print(f"byte_tokenizer: {folder} is not a folder: pass an existing folder "
              "(e.g. the run's hf/ folder written by io.export_hf)", file=sys.stderr)
        sys.exit(2)
    try:
        write_json(os.path.join(folder, "tokenizer.json"), tokenizer_json())
        write_json(os.path.join(folder, "tokenizer_config.json"), tokenizer_config())
    except OSError as e:
        print(f"byte_tokenizer: cannot write into {folder}: {e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    print(f"byte_tokenizer: {folder}/tokenizer.json (bytes, vocabulary 256) and tokenizer_config.json "
          f"(chat template, EOS byte 0x{EOS_BYTE:02x})")


if __name__ == "__main__":
    main()
