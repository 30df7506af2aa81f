#!/usr/bin/env python3
"""Tokenize text files, or fine-tuning conversations, with a Hugging Face tokenizer
into a token shard (docs/data.md).

Needs only the tokenizer's files on disk (a folder with tokenizer.json, or the
path of a tokenizer.json), never the network. Encodes with the `tokenizers`
library; without it (or for a folder without tokenizer.json) with transformers'
AutoTokenizer. Each input file is one document: its tokens are the tokenizer's
encoding of the whole file, optionally preceded by BOS (--bos) and followed by
EOS (--eos). Large files are read and encoded in chunks (several at once through
encode_batch); chunks overlap and are joined where their encodings agree on whole
words, so the result equals encoding the file in one piece. Tokens go to a
temporary file renamed into place at the end: an interrupted or failed run
leaves no half-written shard (and an existing one untouched).

With --chat the inputs are JSON Lines of conversations ({"messages": [...]},
rendered with the tokenizer's own chat template from tokenizer_config.json) or
prompt/completion pairs; the shard (format version 2) marks the assistant's (the
completion's) tokens as the only targets, and each record is an EOS-ended document.

usage: prepare_data.py --tokenizer DIR_OR_JSON INPUT... --output OUT.tok
                       [--val VAL.tok [--val-fraction F]] [--eos] [--bos] [--vocab-size N]
       prepare_data.py --chat --tokenizer DIR_OR_JSON DATA.jsonl... --output OUT.tok
                       [--val VAL.tok] [--seq-len N [--long keep|drop]] [--eos-token T]
Exit status: 0 done, 2 bad arguments, input, tokenizer or result, 128+N stopped by signal N.
"""
import argparse
import codecs
import importlib.util
import json
import os
import signal
import sys
import types

PROG = "prepare_data"
# EOS and BOS tokens tried, in order, when tokenizer_config.json names none.
EOS_NAMES = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>")
BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")
UINT32_LIMIT = 1 << 32


def fail(msg):
    print(f"{PROG}: {msg}", file=sys.stderr)
    sys.exit(2)


def load_shard_module():
    """scripts/text_to_shard.py, for ShardWriter (atomic shard writing)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "text_to_shard.py")
    spec = importlib.util.spec_from_file_location("text_to_shard", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- tokenizer


class Tok:
    """What the rest needs of a tokenizer: encode_batch, vocab_size, token_to_id."""

    def __init__(self, name, backend, encode_batch, vocab_size, token_to_id, config, offsets=True, words=True):
        self.name = name
        self.backend = backend
        # encode_batch(list of str) -> list of encodings: .ids, and with offsets the
        # tokenizers.Encoding methods token_to_chars and token_to_word
        self.encode_batch = encode_batch
        self.vocab_size = vocab_size
        self.token_to_id = token_to_id
        self.config = config        # tokenizer_config.json (a dict, maybe empty)
        self.offsets = offsets      # False: chunks are encoded apart (slow transformers tokenizers)
        self.words = words          # whether it splits text into words before encoding


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read {path}: {e}")


def wrap_tokenizers(tk, name, config, backend="tokenizers"):
    """A tokenizers.Tokenizer as a Tok (exact chunking: offsets and words)."""
    # Does it split text into words (pre-tokenization) before the model sees it? Most do;
    # SentencePiece conversions without a pre-tokenizer see the whole text as one word.
    probe = tk.encode("one two\nthree, four", add_special_tokens=False).word_ids
    splits_words = len(set(w for w in probe if w is not None)) > 1

    def encode_batch(texts):
        return tk.encode_batch(texts, add_special_tokens=False)
    vocab = tk.get_vocab(with_added_tokens=True)
    size = max(tk.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)
    return Tok(name, backend, encode_batch, size, tk.token_to_id, config, words=splits_words)


def load_tokenizer(spec, backend):
    """Load the tokenizer at `spec` (a folder or a tokenizer.json) without the network."""
    if not os.path.exists(spec):
        fail(f"tokenizer {spec} does not exist: pass a folder holding tokenizer.json "
             "(a Hugging Face model folder) or the path of a tokenizer.json")
    if os.path.isdir(spec):
        folder, tjson = spec, os.path.join(spec, "tokenizer.json")
    else:
        folder, tjson = os.path.dirname(spec) or ".", spec
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    config = read_json(cfg_path) if os.path.isfile(cfg_path) else {}
    if not isinstance(config, dict):
        config = {}

    def importable(name):
        try:
            importlib.import_module(name)
            return True
        except ImportError:
            return False
    if backend == "auto":   # tokenizers where it can; transformers reads other formats too
        if importable("tokenizers") and os.path.isfile(tjson):
            backend = "tokenizers"
        elif importable("transformers"):
            backend = "transformers"
        elif importable("tokenizers"):
            backend = "tokenizers"      # and fails below: no tokenizer.json
        else:
            fail("reading a Hugging Face tokenizer needs the tokenizers library: pip install tokenizers "
                 "(transformers works too)")
    elif not importable(backend):
        fail(f"--backend {backend}: python3 cannot import {backend}: pip install {backend}")

    if backend == "tokenizers":
        import tokenizers
        if not os.path.isfile(tjson):
            fail(f"no tokenizer.json in {folder}: pass a folder holding tokenizer.json or its path "
                 "(other tokenizer formats, such as tokenizer.model, need transformers: pip install transformers)")
        try:
            tk = tokenizers.Tokenizer.from_file(tjson)
        except Exception as e:  # the library raises its own exception types
            fail(f"{tjson} is not a tokenizer the tokenizers library can read: {e}")
        return wrap_tokenizers(tk, tjson, config)

    if not os.path.isdir(spec):
        fail(f"transformers loads a tokenizer from its folder, not from the file {spec}")
    import transformers
    try:
        tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # OSError, ValueError, ... depending on what is missing
        fail(f"transformers cannot load a tokenizer from {folder}: {e}")
    tf_config = dict(config)
    for key in ("eos_token", "bos_token"):
        if getattr(tok, key, None):
            tf_config[key] = str(getattr(tok, key))
    if getattr(tok, "is_fast", False):
        return wrap_tokenizers(tok.backend_tokenizer, folder, tf_config, backend="transformers")

    def encode_batch(texts):
        return [types.SimpleNamespace(ids=tok.encode(t, add_special_tokens=False)) for t in texts]

    def token_to_id(t):
        i = tok.convert_tokens_to_ids(t)
        return None if i is None or i == tok.unk_token_id and t != tok.unk_token else i
    size = max(len(tok), max(tok.get_vocab().values(), default=-1) + 1)
    return Tok(folder, "transformers, slow", encode_batch, size, token_to_id, tf_config, offsets=False)


def special_token(tok, kind, explicit, names):
    """(token, id, where it came from) of the tokenizer's EOS or BOS token."""
    if explicit is not None:
        i = tok.token_to_id(explicit)
        if i is None:
            fail(f"--{kind}-token {explicit!r} is not a token of {tok.name}")
        return explicit, i, f"--{kind}-token"
    entry = tok.config.get(f"{kind}_token")
    if isinstance(entry, dict):
        entry = entry.get("content")
    if isinstance(entry, str) and entry:
        i = tok.token_to_id(entry)
        if i is not None:
            return entry, i, "tokenizer_config.json"
    for name in names:
        i = tok.token_to_id(name)
        if i is not None:
            return name, i, "its name"
    fail(f"--{kind}: {tok.name} has no {kind.upper()} token that tokenizer_config.json names or "
         f"that is called {', '.join(names)}: name it with --{kind}-token TOKEN")


# ---------------------------------------------------------------- reading


def input_files(paths, ext=".txt"):
    """The input files in order: files as given, folders as their *{ext} files sorted by name."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            txt = sorted(n for n in os.listdir(p) if n.endswith(ext) and os.path.isfile(os.path.join(p, n)))
            if not txt:
                fail(f"input folder {p} holds no {ext} file")
            files += [os.path.join(p, n) for n in txt]
        elif os.path.isfile(p):
            files.append(p)
        elif os.path.exists(p):
            fail(f"input {p} is neither a file nor a folder")
        else:
            fail(f"input {p} does not exist")
    for p in files:
        if not os.access(p, os.R_OK):
            fail(f"cannot read input {p}: permission denied")
    return files


def read_pieces(path, chunk_chars):
    """The text of `path` (UTF-8, line endings kept as they are) in consecutive pieces
    of about chunk_chars characters, cut after a newline where the second half of a
    piece has one. Never holds more than about two pieces of the file."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    fed = 0             # bytes given to the decoder so far
    try:
        with open(path, "rb") as f:
            rest = ""
            while True:
                block = f.read(chunk_chars)
                pending = len(decoder.getstate()[0])
                try:
                    text = rest + decoder.decode(block, final=not block)
                except UnicodeDecodeError as e:
                    fail(f"{path} is not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset "
                         f"{fed - pending + e.start} cannot be decoded; convert the file to UTF-8")
                fed += len(block)
                if not block:
                    if text:
                        yield text
                    return
                cut = text.rfind("\n", len(text) // 2) + 1 or len(text)
                yield text[:cut]
                rest = text[cut:]
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror or e}")


# ---------------------------------------------------------------- encoding


class Segment:
    """One encoded stretch of a document: its text starts at character `start` of the
    document; the piece it was made for starts at piece_start, the rest is context.
    Offsets and words are looked up per token, near the joins only: a segment keeps
    just its ids as a Python list."""

    def __init__(self, start, text, enc, piece_start, words):
        self.start = start
        self.text = text
        self.end = start + len(text)
        self.piece_start = piece_start
        self.enc = enc
        self.ids = enc.ids
        self.words = words

    def pos(self, j):
        """Document position of the first character of token j."""
        return self.start + self.enc.token_to_chars(j)[0]

    def word_start(self, j):
        return j == 0 or not self.words or self.enc.token_to_word(j) != self.enc.token_to_word(j - 1)

    def first_at(self, x):
        """Index of the first token at document position >= x (len(ids) if none)."""
        lo, hi = 0, len(self.ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.pos(mid) < x:
                lo = mid + 1
            else:
                hi = mid
        return lo


AGREE_WORDS = 2     # encodings must agree on this many whole words after a join
AGREE_TOKENS = 8    # ... or on this many tokens when the tokenizer does not split into words


def find_join(a, b, after):
    """A position q > after where segment `a` can hand over to the next segment `b`:
    a token (and word) starts at q in both, q is past b's first word (whose start may
    carry artefacts, such as a prefix space), and both encodings agree on the words
    that follow q, which lie before a's last word (a's end may cut that one).
    Returns (index in a, index in b) of the token at q, or None."""
    by_start = {}       # document position -> index in b, for word starts past b's first word
    for j in range(1, len(b.ids)):
        q = b.pos(j)
        if q >= a.end:
            break
        if b.word_start(j):
            by_start.setdefault(q, j)
    if not by_start:
        return None
    if a.words:         # the first token of a's last word
        trusted = len(a.ids) - 1
        while trusted > 0 and not a.word_start(trusted):
            trusted -= 1
    else:
        trusted = len(a.ids) - AGREE_TOKENS
    for ia in range(a.first_at(max(b.start, after) + 1), trusted):
        q = a.pos(ia)
        if q not in by_start or not a.word_start(ia):
            continue
        ib = by_start[q]
        k, words = 0, 0
        while ia + k < trusted and ib + k < len(b.ids):
            if k > 0 and a.word_start(ia + k):
                words += 1
            if (a.words and words == AGREE_WORDS) or (not a.words and k == AGREE_TOKENS):
                if b.word_start(ib + k) and a.pos(ia + k) == b.pos(ib + k):
                    return ia, ib
                break
            if a.ids[ia + k] != b.ids[ib + k] or a.pos(ia + k) != b.pos(ib + k) or \
                    (k > 0 and b.word_start(ib + k) != a.word_start(ia + k)):
                break
            k += 1
    return None


def encode_document(tok, pieces, chunk_chars, batch, stats):
    """Yield lists of token ids whose concatenation is the encoding of the document
    whose text comes as consecutive `pieces`.

    Each piece is encoded with `ctx` characters of its neighbours on both sides, a batch
    of pieces at a time. Consecutive segments are joined at a word both encode alike
    (find_join); where there is none, the two are encoded again as one stretch."""
    ctx = max(16, min(4096, chunk_chars // 4))  # characters of overlap on each side of a cut
    max_merge = 16 * chunk_chars                # longest stretch encoded in one piece
    it = iter(pieces)
    nxt = next(it, None)
    pos = 0             # document position of `nxt`
    prev_tail = ""      # the ctx characters before `nxt`
    a = None            # the segment being emitted, from token a_from on
    a_from = 0
    apart = 0           # pieces encoded on their own (no offsets)
    while nxt is not None:
        texts, spans = [], []
        while nxt is not None and len(texts) < batch:
            cur, cur_pos = nxt, pos
            nxt = next(it, None)
            pos += len(cur)
            if not tok.offsets:     # no offsets: pieces are encoded on their own
                texts.append(cur)
                continue
            texts.append(prev_tail + cur + (nxt[:ctx] if nxt is not None else ""))
            spans.append((cur_pos - len(prev_tail), cur_pos))
            prev_tail = (prev_tail + cur)[-ctx:]
        encs = tok.encode_batch(texts)
        if not tok.offsets:
            for enc in encs:
                stats["inexact"] += apart > 0
                apart += 1
                yield enc.ids
            continue
        for text, (start, piece_start), enc in zip(texts, spans, encs):
            b = Segment(start, text, enc, piece_start, tok.words)
            if a is None:
                a, a_from = b, 0
                continue
            after = a.pos(a_from) if a_from < len(a.ids) else a.end
            join = find_join(a, b, after)
            if join is not None:
                yield a.ids[a_from:join[0]]
                a, a_from = b, join[1]
                continue
            if b.end - a.start <= max_merge:
                # no word where the two agree: encode both as one stretch
                text = a.text + b.text[a.end - b.start:]
                m = Segment(a.start, text, tok.encode_batch([text])[0], a.piece_start, tok.words)
                a, a_from = m, m.first_at(after)
                continue
            # a tokenizer that never agrees over this long: cut where b's piece begins
            ia = max(a_from, a.first_at(b.piece_start))
            yield a.ids[a_from:ia]
            a, a_from = b, b.first_at(a.pos(ia) if ia < len(a.ids) else a.end)
            stats["inexact"] += 1
    if a is not None:
        yield a.ids[a_from:]


# ---------------------------------------------------------------- fine-tuning data (--chat)


def chat_renderer(tok, path):
    """render(messages, add_generation_prompt) -> text, from the tokenizer's own chat
    template (tokenizer_config.json's chat_template), rendered as transformers'
    apply_chat_template renders it (a sandboxed jinja2 environment, trim_blocks and
    lstrip_blocks, the special tokens as variables, raise_exception)."""
    template = tok.config.get("chat_template")
    if isinstance(template, list):      # [{"name": ..., "template": ...}]: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template:
        fail(f"--chat: {tok.name} has no chat template (tokenizer_config.json's chat_template): use a model "
             "folder whose tokenizer has one, or prompt/completion records, which need none")
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        fail("--chat renders the tokenizer's chat template with jinja2: pip install jinja2")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    try:
        compiled = env.from_string(template)
    except jinja2.exceptions.TemplateError as e:
        fail(f"--chat: the chat template of {tok.name} does not compile: {e}")
    specials = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        v = tok.config.get(key)
        v = v.get("content") if isinstance(v, dict) else v
        specials[key] = v if isinstance(v, str) else ""

    def render(messages, add_generation_prompt, where):
        try:
            return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **specials)
        except jinja2.exceptions.TemplateError as e:
            fail(f"{where}: the chat template refuses this conversation: {e}")
    return render


def chat_record(obj, where):
    """(messages, learn): the messages of a record and, per message, whether its tokens
    are targets. {"messages": [...]}: the assistant's messages are learned.
    {"prompt": ..., "completion": ...}: strings (plain text, no template; returned
    as None) or lists of messages (the completion's are learned)."""
    def messages_of(v, key):
        if not isinstance(v, list) or not v:
            fail(f"{where}: \"{key}\" must be a non-empty list of {{\"role\": ..., \"content\": ...}}")
        for i, m in enumerate(v):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                fail(f"{where}: {key}[{i}] must be an object with string \"role\" and \"content\"")
        return v
    if not isinstance(obj, dict):
        fail(f"{where}: a record must be a JSON object with \"messages\", or \"prompt\" and \"completion\"")
    if "messages" in obj:
        msgs = messages_of(obj["messages"], "messages")
        learn = [m["role"] == "assistant" for m in msgs]
        if not any(learn):
            fail(f"{where}: the conversation has no assistant message, so nothing to learn")
        return msgs, learn
    if "prompt" in obj and "completion" in obj:
        p, c = obj["prompt"], obj["completion"]
        if isinstance(p, str) and isinstance(c, str):
            return None, (p, c)
        if isinstance(p, list) and isinstance(c, list):
            p, c = messages_of(p, "prompt"), messages_of(c, "completion")
            return p + c, [False] * len(p) + [True] * len(c)
        fail(f"{where}: \"prompt\" and \"completion\" must both be strings or both lists of messages")
    fail(f"{where}: a record needs \"messages\", or \"prompt\" and \"completion\" (it has: {', '.join(obj) or 'nothing'})")


def target_spans(render, msgs, learn, where):
    """(text, [(start, end)]): the rendered conversation and the character spans of
    its learned messages, found by rendering prefixes: a learned message's span is
    what it adds after the prompt for it (its generation prompt, for an assistant)."""
    text = render(msgs, False, where)
    spans = []
    for i, on in enumerate(learn):
        if not on:
            continue
        post = render(msgs[:i + 1], False, where)
        pre = render(msgs[:i], msgs[i]["role"] == "assistant", where) if i else ""
        if not post.startswith(pre):
            pre = render(msgs[:i], False, where)
        if not post.startswith(pre) or not text.startswith(post):
            fail(f"{where}: the chat template does not render this conversation as a growing prefix (message "
                 f"{i} changes what comes before it), so its learned tokens cannot be told apart")
        if len(post) > len(pre):
            spans.append((len(pre), len(post)))
    return text, spans


def encode_example(tok, text, spans):
    """Token ids of `text` (one encoding, as the tokenizer encodes it) and 0/1 per
    token: 1 where the token starts inside a learned span."""
    enc = tok.encode_batch([text])[0]
    ids = list(enc.ids)
    offsets = getattr(enc, "offsets", None)
    if offsets is None:
        fail(f"--chat needs a tokenizer that reports character offsets (tokenizer.json, or a fast transformers "
             f"tokenizer); {tok.name} is a slow one")
    flags, k = [], 0
    for (a, b) in offsets:
        while k < len(spans) and spans[k][1] <= a:
            k += 1
        flags.append(1 if k < len(spans) and spans[k][0] <= a < spans[k][1] else 0)
    return ids, flags


def read_jsonl(path):
    """(where, record) for every non-blank line of a JSON Lines file."""
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield f"{path}:{n}", json.loads(line)
                    except ValueError as e:
                        fail(f"{path}:{n}: not JSON: {e}")
    except UnicodeDecodeError as e:
        fail(f"{path} is not UTF-8 text ({e.reason} at byte {e.start} of a block); convert the file to UTF-8")
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror or e}")


def chat_examples(tok, files, eos_id):
    """Yield (where, ids, flags) per record, EOS-ended: one document per conversation."""
    render = None
    for path in files:
        for where, obj in read_jsonl(path):
            msgs, learn = chat_record(obj, where)
            if msgs is None:                # plain prompt/completion: the completion is learned
                prompt, completion = learn
                text, spans = prompt + completion, [(len(prompt), len(prompt) + len(completion))]
            else:
                render = render or chat_renderer(tok, where)
                text, spans = target_spans(render, msgs, learn, where)
            ids, flags = encode_example(tok, text, spans)
            if not any(flags):
                fail(f"{where}: the learned part encodes to no token")
            # the EOS ends the document; it is learned after a learned last token (the model learns to stop)
            yield where, ids + [eos_id], flags + [flags[-1]]


def split_at_document(doc_ends, n_total, fraction):
    """The document end nearest to leaving `fraction` of the tokens for validation."""
    want = n_total - int(n_total * fraction)
    inner = [e for e in doc_ends[:-1] if 2 <= e <= n_total - 2]
    if not inner:
        return None
    return min(inner, key=lambda e: abs(e - want))


def prepare_chat(a, tok, files, shard):
    """--chat: JSON Lines of conversations or prompt/completion pairs -> a masked shard."""
    eos = special_token(tok, "eos", a.eos_token, EOS_NAMES)
    n_docs, dropped, long_docs, longest, doc_ends = 0, 0, 0, 0, []
    n_targets = 0
    with shard.ShardWriter(a.output) as out:
        for where, ids, flags in chat_examples(tok, files, eos[1]):
            longest = max(longest, len(ids))
            if a.seq_len and len(ids) > a.seq_len:
                long_docs += 1
                if a.long == "drop":
                    dropped += 1
                    continue
            out.append(ids, flags)
            n_docs += 1
            n_targets += sum(flags)
            doc_ends.append(out.n_tokens)
        if n_docs == 0:
            fail("no conversation left to write" + (f" ({dropped} longer than --seq-len {a.seq_len} dropped)"
                                                    if dropped else ": the input has no records"))
        n_total, vocab = out.n_tokens, a.vocab_size if a.vocab_size is not None else tok.vocab_size
        if out.max_id >= vocab:
            fail(f"token id {out.max_id} is >= the vocab_size {vocab}: pass --vocab-size")
        n_val = 0
        if a.val:
            cut = split_at_document(doc_ends, n_total, a.val_fraction)
            if cut is None:
                fail(f"{n_docs} conversation(s) cannot be split into a training and a validation part: "
                     "use more data, or leave --val out")
            n_val = n_total - cut
            with shard.ShardWriter(a.val) as val:
                out.move_tail(n_val, val)
                val.commit(vocab, eos[1])
        out.commit(vocab, eos[1])
    return dict(n_docs=n_docs, dropped=dropped, long=long_docs, longest=longest, n_total=n_total, n_val=n_val,
                n_targets=n_targets, eos=eos, vocab=vocab, n_val_docs=sum(1 for e in doc_ends if e > n_total - n_val))


def report_chat(a, tok, files, r):
    msg = (f"{PROG}: {len(files)} file{'s' if len(files) != 1 else ''}, {r['n_docs']} conversations, "
           f"{r['n_total']} tokens of which {r['n_targets']} targets, eos {r['eos'][0]!r} = {r['eos'][1]} after each, "
           f"vocab_size {r['vocab']} ({tok.backend}: {tok.name}) -> {a.output} ({r['n_total'] - r['n_val']} tokens)")
    if a.val:
        msg += f", {a.val} ({r['n_val']} tokens, the last {r['n_val_docs']} conversations)"
    print(msg)
    if r["long"]:
        what = ("dropped" if a.long == "drop" else
                "kept whole: each spans samples, and the part in a later sample starts a new document at "
                "position 0 without the earlier context (--long drop leaves them out)")
        print(f"{PROG}: warning: {r['long']} of {r['n_docs'] + r['dropped']} conversations are longer than "
              f"--seq-len {a.seq_len} tokens (the longest has {r['longest']}): {what}", file=sys.stderr)
    elif a.seq_len:
        print(f"{PROG}: every conversation fits --seq-len {a.seq_len} (the longest has {r['longest']} tokens)")


# ---------------------------------------------------------------- main


def on_signal(signum, frame):
    raise SystemExit(128 + signum)


def main():
    ap = argparse.ArgumentParser(
        description="Tokenize text files with a Hugging Face tokenizer into a token shard (docs/data.md).",
        epilog="Each input file is one document. Exit status: 0 done, 2 bad arguments, input, "
               "tokenizer or result.")
    ap.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="UTF-8 text files, or folders (their *.txt files, sorted by name), in order; "
                         "with --chat, JSON Lines files")
    ap.add_argument("--tokenizer", required=True, metavar="DIR_OR_JSON",
                    help="folder holding tokenizer.json (a Hugging Face model folder) or a tokenizer.json")
    ap.add_argument("--output", "-o", required=True, metavar="OUT.tok", help="token shard to write")
    ap.add_argument("--val", metavar="VAL.tok", help="also write the last tokens to this validation shard")
    ap.add_argument("--val-fraction", type=float, default=0.05,
                    help="fraction of the tokens held out for --val (default 0.05)")
    ap.add_argument("--eos", action="store_true", help="end every document with the tokenizer's EOS token")
    ap.add_argument("--bos", action="store_true", help="begin every document with the tokenizer's BOS token")
    ap.add_argument("--eos-token", metavar="TOKEN", help="the EOS token (default: tokenizer_config.json's "
                    "eos_token, else the first of " + " ".join(EOS_NAMES) + " the tokenizer has)")
    ap.add_argument("--bos-token", metavar="TOKEN", help="the BOS token (default: tokenizer_config.json's "
                    "bos_token, else the first of " + " ".join(BOS_NAMES) + " the tokenizer has)")
    ap.add_argument("--vocab-size", type=int, metavar="N",
                    help="vocab_size for the header (default: the tokenizer's, added tokens included); "
                         "at least the largest token id + 1")
    ap.add_argument("--backend", choices=("auto", "tokenizers", "transformers"), default="auto",
                    help="library that reads the tokenizer (default auto: tokenizers when it can)")
    ap.add_argument("--chat", action="store_true",
                    help="the inputs are JSON Lines of fine-tuning records: {\"messages\": [...]} (rendered with the "
                         "tokenizer's chat template; the assistant's tokens are the targets) or {\"prompt\": ..., "
                         "\"completion\": ...} (the completion's tokens are); each record is a document ended by EOS")
    ap.add_argument("--seq-len", type=int, default=0, metavar="N",
                    help="with --chat: the run's train.seq_len; longer conversations are reported (and see --long)")
    ap.add_argument("--long", choices=("keep", "drop"), default="keep",
                    help="with --chat: keep conversations longer than --seq-len whole across samples, with a "
                         "warning (default), or drop them")
    ap.add_argument("--chunk-chars", type=int, default=1 << 18, metavar="N",
                    help="characters read and encoded at a time (default 262144)")
    ap.add_argument("--batch", type=int, default=0, metavar="N",
                    help="chunks encoded together, in parallel (default: the number of CPUs, at most 16)")
    a = ap.parse_args()

    if a.val is not None and not 0.0 < a.val_fraction < 1.0:
        fail(f"--val-fraction {a.val_fraction} must be between 0 and 1 (exclusive)")
    if a.vocab_size is not None and not 1 <= a.vocab_size < UINT32_LIMIT:
        fail(f"--vocab-size {a.vocab_size} must be between 1 and {UINT32_LIMIT - 1}")
    if a.chunk_chars < 64:
        fail(f"--chunk-chars {a.chunk_chars} must be at least 64")
    if a.val is not None and os.path.abspath(a.val) == os.path.abspath(a.output):
        fail("--val and --output name the same file")
    for out in [a.output] + ([a.val] if a.val else []):
        folder = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(folder):
            fail(f"cannot write {out}: folder {folder} does not exist")
        if os.path.isdir(out):
            fail(f"cannot write {out}: it is a folder")
    batch = a.batch if a.batch > 0 else min(16, os.cpu_count() or 1)

    if a.seq_len < 0:
        fail(f"--seq-len {a.seq_len} must be positive")
    if a.chat and a.bos:
        fail("--chat: the chat template decides where BOS goes; leave --bos out")
    files = input_files(a.inputs, ".jsonl" if a.chat else ".txt")
    tok = load_tokenizer(a.tokenizer, a.backend)
    if a.chat:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, on_signal)
        try:
            report_chat(a, tok, files, prepare_chat(a, tok, files, load_shard_module()))
        except OSError as e:
            fail(f"cannot write {e.filename or a.output}: {e.strerror or e}")
        except OverflowError:
            fail("a token id does not fit in 32 bits (ids must be below 2^32)")
        return
    eos = special_token(tok, "eos", a.eos_token, EOS_NAMES) if a.eos else None
    bos = special_token(tok, "bos", a.bos_token, BOS_NAMES) if a.bos else None

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    shard = load_shard_module()
    stats = {"inexact": 0}
    try:
        with shard.ShardWriter(a.output) as out:
            for path in files:
                n_before = out.n_tokens
                for ids in encode_document(tok, read_pieces(path, a.chunk_chars), a.chunk_chars, batch, stats):
                    if ids and out.n_tokens == n_before and bos:
                        out.append([bos[1]])
                    out.append(ids)
                if out.n_tokens > n_before and eos:
                    out.append([eos[1]])
            n_total = out.n_tokens
            vocab = a.vocab_size if a.vocab_size is not None else tok.vocab_size
            if out.max_id >= vocab:
                if a.vocab_size is not None:
                    fail(f"--vocab-size {vocab} is too small: the text has token id {out.max_id}, so the "
                         f"vocab_size must be at least {out.max_id + 1} (the tokenizer's is {tok.vocab_size})")
                fail(f"token id {out.max_id} is >= the tokenizer's vocabulary size {vocab}: "
                     "pass --vocab-size")
            if n_total < 2:
                fail(f"the input gives only {n_total} token{'s' if n_total != 1 else ''}; a shard needs "
                     "at least 2 (one input and its target): use a longer text")
            n_val = 0
            if a.val:
                n_val = int(n_total * a.val_fraction)
                if n_val < 2 or n_total - n_val < 2:
                    fail(f"{n_total} tokens split at --val-fraction {a.val_fraction} leave {n_total - n_val} "
                         f"for {a.output} and {n_val} for {a.val}; each shard needs at least 2: "
                         "use a longer text or another --val-fraction")
                with shard.ShardWriter(a.val) as val:
                    out.move_tail(n_val, val)
                    val.commit(vocab, eos[1] if eos else None)
            out.commit(vocab, eos[1] if eos else None)
    except OverflowError:
        fail("a token id does not fit in 32 bits (ids must be below 2^32); this tokenizer cannot be "
             "stored in the shard format")
    except OSError as e:
        fail(f"cannot write {e.filename or a.output}: {e.strerror or e}")

    eos_note = f", eos {eos[0]} = {eos[1]} after each document" if eos else ""
    bos_note = f", bos {bos[0]} = {bos[1]} before each document" if bos else ""
    msg = (f"{PROG}: {len(files)} file{'s' if len(files) != 1 else ''}, {n_total} tokens{bos_note}{eos_note}, "
           f"vocab_size {vocab} ({tok.backend}: {tok.name}) -> {a.output} ({n_total - n_val} tokens)")
    if a.val:
        msg += f", {a.val} ({n_val} tokens)"
    print(msg)
    if stats["inexact"]:
        print(f"{PROG}: warning: {stats['inexact']} chunk joins where this tokenizer gives no common "
              "word boundary: the tokens there may differ from encoding the file in one piece "
              "(a larger --chunk-chars makes fewer)", file=sys.stderr)


if __name__ == "__main__":
    main()
