/* Token shards (mmap, validated) and the sample loader (SP slices, DP order,
 * deterministic shuffle). Format and semantics: docs/data.md. */
#include "io/data.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "token shards are mapped as little-endian uint32; this host is big-endian"
#endif

#define REMAKE "re-create it with scripts/text_to_shard.py"
#define REMAKE_MASK "re-create it with scripts/prepare_data.py --chat"
#define HDR_FLAGS 28            /* bit 0: the EOS id at HDR_EOS is recorded */
#define HDR_EOS 32
#define FLAG_EOS 1u

static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void wr64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* ------------------------------------------------------------------ shards */

/* The target mask of a version-2 shard: bits past n_tokens are zero, and at
 * least one token is a target (a shard without any would train nothing). */
static int check_mask(const char *path, const uint8_t *mask, uint64_t n, int64_t *n_targets, char *err,
                      size_t errlen) {
    uint64_t bytes = (n + 7) / 8, count = 0;
    for (uint64_t i = 0; i < bytes; i++) count += (uint64_t)__builtin_popcount(mask[i]);
    if (n % 8 && mask[bytes - 1] >> (n % 8))
        return asp_errf(err, errlen, "%s: the target mask's last byte 0x%02x sets bits past the %" PRIu64
                        " tokens (they must be zero: a damaged shard); " REMAKE_MASK, path, mask[bytes - 1], n);
    if (count == 0)
        return asp_errf(err, errlen, "%s: the target mask marks no token as a target, so there is nothing to "
                        "learn; " REMAKE_MASK, path);
    *n_targets = (int64_t)count;
    return 0;
}

int shard_open(shard_t *s, const char *path, int64_t vocab_limit, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    if (strlen(path) >= sizeof s->path)
        return asp_errf(err, errlen, "%s: path longer than %zu characters; use a shorter path", path,
                        sizeof s->path - 1);
    strcpy(s->path, path);
    void *map;
    size_t fsize;
    if (asp_map_file(path, "token shard", "create it with scripts/text_to_shard.py", &map, &fsize, err, errlen) != 0)
        return -1;
    if (fsize == 0) return asp_errf(err, errlen, "%s: empty file, not a token shard; " REMAKE, path);
    const unsigned char *hdr = map;
    if (fsize < 8 || memcmp(hdr, SHARD_MAGIC, 8) != 0) {
        asp_errf(err, errlen,
                 "%s: not a token shard (the file does not start with \"%s\"); convert text with "
                 "scripts/text_to_shard.py",
                 path, SHARD_MAGIC);
        goto fail;
    }
    if (fsize < SHARD_HEADER_BYTES) {
        asp_errf(err, errlen, "%s: truncated: the file has %zu bytes, less than the %d-byte header; " REMAKE, path,
                 fsize, SHARD_HEADER_BYTES);
        goto fail;
    }
    uint32_t version = rd32(hdr + 8), token_bytes = rd32(hdr + 12);
    uint64_t n = rd64(hdr + 16);
    uint32_t vocab = rd32(hdr + 24);
    /* flags (only bit 0 is defined), the EOS id when that bit says so, then padding */
    uint32_t flags = rd32(hdr + HDR_FLAGS);
    if (flags & ~FLAG_EOS) {
        asp_errf(err, errlen, "%s: header flags 0x%08" PRIx32 " set bits this build does not know (only bit 0, an "
                 "EOS id, is defined): a damaged shard, or another format; " REMAKE, path, flags);
        goto fail;
    }
    for (int i = HDR_EOS; i < SHARD_HEADER_BYTES; i++) {
        if (i < HDR_EOS + 4 && (flags & FLAG_EOS)) continue;
        if (hdr[i]) {
            asp_errf(err, errlen, "%s: header byte %d is 0x%02x, but it is %s and must be zero (a damaged shard, or "
                     "another format); " REMAKE, path, i, hdr[i], i < HDR_EOS + 4 ? "the EOS id of a shard that "
                     "records none" : "padding (bytes 36-63)");
            goto fail;
        }
    }
    if (version != SHARD_VERSION && version != SHARD_VERSION_MASKED) {
        asp_errf(err, errlen, "%s: shard format version %" PRIu32 ", this build reads versions %d (plain) and %d "
                 "(with a target mask); " REMAKE, path, version, SHARD_VERSION, SHARD_VERSION_MASKED);
        goto fail;
    }
    if (token_bytes != 4) {
        asp_errf(err, errlen, "%s: tokens of %" PRIu32 " bytes, this build reads 4-byte (uint32) tokens; " REMAKE,
                 path, token_bytes);
        goto fail;
    }
    /* n up to 2^60 keeps the byte count below 2^64; anything above is corrupt anyway */
    uint64_t mask_bytes = version == SHARD_VERSION_MASKED ? (n + 7) / 8 : 0;
    uint64_t expect = n > (UINT64_C(1) << 60) ? UINT64_MAX : SHARD_HEADER_BYTES + 4 * n + mask_bytes;
    if ((uint64_t)fsize < expect) {
        asp_errf(err, errlen,
                 "%s: truncated: header says %" PRIu64 " tokens%s (%" PRIu64 " bytes) but the file has %zu bytes; "
                 REMAKE, path, n, mask_bytes ? " and their target mask" : "", expect, fsize);
        goto fail;
    }
    if ((uint64_t)fsize > expect) {
        asp_errf(err, errlen,
                 "%s: header says %" PRIu64 " tokens%s (%" PRIu64 " bytes) but the file has %zu bytes (trailing "
                 "data); " REMAKE, path, n, mask_bytes ? " and their target mask" : "", expect, fsize);
        goto fail;
    }
    if (n < 2) {
        asp_errf(err, errlen,
                 "%s: only %" PRIu64 " token(s); a sample needs at least 2 (one input and its target): "
                 "use a longer text",
                 path, n);
        goto fail;
    }
    if (vocab < 2) {
        asp_errf(err, errlen, "%s: header records vocab_size %" PRIu32 "; a language model needs at least 2 tokens: "
                 REMAKE, path, vocab);
        goto fail;
    }
    const uint32_t *tok = (const uint32_t *)((const char *)map + SHARD_HEADER_BYTES);
    /* One pass over all tokens: an out-of-range id would index past the
     * embedding table much later, far from its cause. */
    for (uint64_t i = 0; i < n; i++) {
        if (vocab_limit > 0 && (int64_t)tok[i] >= vocab_limit) {
            asp_errf(err, errlen,
                     "%s: token %" PRIu32 " at index %" PRIu64 " is >= the model vocab_size %" PRId64
                     "; tokenize the text with the model's tokenizer or raise model.vocab_size",
                     path, tok[i], i, vocab_limit);
            goto fail;
        }
        if (tok[i] >= vocab) {
            asp_errf(err, errlen,
                     "%s: token %" PRIu32 " at index %" PRIu64 " is >= the vocab_size %" PRIu32
                     " recorded in the header (corrupt shard); " REMAKE,
                     path, tok[i], i, vocab);
            goto fail;
        }
    }
    s->eos_token_id = -1;
    if (rd32(hdr + HDR_FLAGS) & FLAG_EOS) {
        uint32_t eos = rd32(hdr + HDR_EOS);
        if (eos >= vocab) {
            asp_errf(err, errlen, "%s: the header's EOS id %" PRIu32 " is >= its vocab_size %" PRIu32
                     " (corrupt shard); " REMAKE, path, eos, vocab);
            goto fail;
        }
        s->eos_token_id = eos;
    }
    s->target_mask = NULL;
    s->n_targets = (int64_t)n;
    if (mask_bytes) {
        s->target_mask = (const uint8_t *)(tok + n);
        if (check_mask(path, s->target_mask, n, &s->n_targets, err, errlen) != 0) goto fail;
    }
    s->n_tokens = (int64_t)n;
    s->vocab_size = vocab;
    s->tokens = tok;
    s->map = map;
    s->map_bytes = fsize;
    return 0;
fail:
    munmap(map, fsize);
    return -1;
}

int shard_peek(const char *path, uint32_t *vocab_size, int64_t *eos_token_id, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return asp_errf(err, errlen, "%s: cannot open the token shard: %s; create it with scripts/text_to_shard.py",
                        path, strerror(errno));
    unsigned char hdr[SHARD_HEADER_BYTES];
    size_t got = fread(hdr, 1, sizeof hdr, f);
    fclose(f);
    if (got < sizeof hdr || memcmp(hdr, SHARD_MAGIC, 8) != 0)
        return asp_errf(err, errlen, "%s: not a token shard (no %d-byte \"%s\" header); " REMAKE, path,
                        SHARD_HEADER_BYTES, SHARD_MAGIC);
    *vocab_size = rd32(hdr + 24);
    if (*vocab_size < 2) {
        asp_errf(err, errlen, "%s: header records vocab_size %" PRIu32 "; a language model needs at least 2 tokens: "
                 REMAKE, path, *vocab_size);
        return -2;
    }
    *eos_token_id = rd32(hdr + HDR_FLAGS) & FLAG_EOS ? (int64_t)rd32(hdr + HDR_EOS) : -1;
    return 0;
}

int shard_check_pair(const shard_t *train, const shard_t *val, int64_t model_vocab, char *err, size_t errlen) {
    if ((int64_t)val->vocab_size > model_vocab)
        return asp_errf(err, errlen, "data.val_path %s: header records vocab_size %" PRIu32 ", above the model's %" PRId64
                        "; tokenize the validation text with the model's tokenizer", val->path, val->vocab_size,
                        model_vocab);
    if (val->vocab_size != train->vocab_size)
        return asp_errf(err, errlen, "data.val_path %s records vocab_size %" PRIu32 " but data.path %s records %" PRIu32
                        ": the two were made with different tokenizers, and the validation loss would measure "
                        "nothing; tokenize both with the same one", val->path, val->vocab_size, train->path,
                        train->vocab_size);
    return 0;
}

void shard_close(shard_t *s) {
    if (s->map) munmap(s->map, s->map_bytes);
    s->map = NULL;
    s->tokens = NULL;
    s->target_mask = NULL;
    s->map_bytes = 0;
}

static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

void shard_fingerprint(const shard_t *s, uint64_t *bytes, uint64_t *fingerprint) {
    const uint8_t *p = s->map;
    const size_t n = s->map_bytes, edge = (size_t)1 << 20, piece = (size_t)64 << 10;
    uint64_t h = 0xcbf29ce484222325ULL;
    if (n <= 2 * edge + 62 * piece) {
        h = fnv1a(h, p, n);
    } else {
        h = fnv1a(h, p, edge);
        for (size_t k = 1; k <= 62; k++) h = fnv1a(h, p + edge + (n - 2 * edge - piece) / 63 * k, piece);
        h = fnv1a(h, p + n - edge, edge);
    }
    *bytes = n;
    *fingerprint = h;
}

typedef struct {
    const uint32_t *tokens;
    int64_t n;
    uint32_t vocab_size;
    int64_t eos;
    const uint8_t *is_target;   /* NULL: a plain (version 1) shard */
} shard_out_t;

static int fill_shard(FILE *f, void *ctx, char *err, size_t errlen) {
    const shard_out_t *o = ctx;
    unsigned char hdr[SHARD_HEADER_BYTES] = {0};
    memcpy(hdr, SHARD_MAGIC, 8);
    wr32(hdr + 8, o->is_target ? SHARD_VERSION_MASKED : SHARD_VERSION);
    wr32(hdr + 12, 4);
    wr64(hdr + 16, (uint64_t)o->n);
    wr32(hdr + 24, o->vocab_size);
    if (o->eos >= 0) {
        wr32(hdr + HDR_FLAGS, FLAG_EOS);
        wr32(hdr + HDR_EOS, (uint32_t)o->eos);
    }
    if (fwrite(hdr, 1, sizeof hdr, f) != sizeof hdr) return -1;
    if (o->n > 0 && fwrite(o->tokens, sizeof *o->tokens, (size_t)o->n, f) != (size_t)o->n) return -1;
    if (!o->is_target) return 0;
    unsigned char byte = 0;
    for (int64_t i = 0; i < o->n; i++) {
        if (o->is_target[i]) byte |= (unsigned char)(1u << (i & 7));
        if ((i & 7) == 7 || i == o->n - 1) {
            if (fputc(byte, f) == EOF) return -1;
            byte = 0;
        }
    }
    return 0;
}

int shard_write(const char *path, const uint32_t *tokens, int64_t n, uint32_t vocab_size, char *err,
                size_t errlen) {
    return shard_write_eos(path, tokens, n, vocab_size, -1, err, errlen);
}

int shard_write_eos(const char *path, const uint32_t *tokens, int64_t n, uint32_t vocab_size, int64_t eos_token_id,
                    char *err, size_t errlen) {
    return shard_write_masked(path, tokens, NULL, n, vocab_size, eos_token_id, err, errlen);
}

int shard_write_masked(const char *path, const uint32_t *tokens, const uint8_t *is_target, int64_t n,
                       uint32_t vocab_size, int64_t eos_token_id, char *err, size_t errlen) {
    if (eos_token_id >= (int64_t)vocab_size)
        return asp_errf(err, errlen, "%s: EOS id %" PRId64 " is >= vocab_size %" PRIu32, path, eos_token_id,
                        vocab_size);
    if (n < 0) return asp_errf(err, errlen, "%s: negative token count %" PRId64, path, n);
    if (vocab_size == 0) return asp_errf(err, errlen, "%s: vocab_size must be at least 1", path);
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] >= vocab_size)
            return asp_errf(err, errlen, "%s: token %" PRIu32 " at index %" PRId64 " is >= vocab_size %" PRIu32
                            "; pass the tokenizer's vocabulary size",
                            path, tokens[i], i, vocab_size);
    /* readers see the old shard or the new one, never half of one */
    shard_out_t o = {tokens, n, vocab_size, eos_token_id, is_target};
    return asp_write_atomic(path, fill_shard, &o, err, errlen);
}

/* ------------------------------------------------------------------ loader */

static uint64_t mix64(uint64_t z) {     /* splitmix64 finaliser */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Counter-based: the i-th draw of (seed, epoch) needs no state, so any epoch's
 * order can be rebuilt directly when resuming from a checkpoint. */
static uint64_t draw(uint64_t seed, int64_t epoch, uint64_t i) {
    uint64_t key = mix64(seed ^ mix64((uint64_t)epoch + 0x632BE59BD9B4E019ull));
    return mix64(key + (i + 1) * 0x9E3779B97F4A7C15ull);
}

static void build_order(loader_t *l) {
    int64_t n = l->n_samples;
    for (int64_t i = 0; i < n; i++) l->order[i] = i;
    if (l->shuffle) {
        /* Fisher-Yates; modulo bias is below n / 2^64, negligible */
        for (int64_t i = n - 1; i > 0; i--) {
            int64_t j = (int64_t)(draw(l->seed, l->epoch, (uint64_t)i) % (uint64_t)(i + 1));
            int64_t t = l->order[i];
            l->order[i] = l->order[j];
            l->order[j] = t;
        }
    }
    l->order_epoch = l->epoch;
}

int loader_init(loader_t *l, const shard_t *s, int64_t seq_len, int64_t seq_pad, int sp_rank, int sp_size,
                int dp_rank, int dp_size, int shuffle, uint64_t seed, char *err, size_t errlen) {
    memset(l, 0, sizeof *l);
    if (!s || !s->tokens) return asp_errf(err, errlen, "loader: the token shard is not open");
    if (seq_len < 1) return asp_errf(err, errlen, "loader: seq_len %" PRId64 " must be at least 1", seq_len);
    if (sp_size < 1 || sp_rank < 0 || sp_rank >= sp_size)
        return asp_errf(err, errlen, "loader: sp_rank %d outside an SP group of %d ranks", sp_rank, sp_size);
    if (dp_size < 1 || dp_rank < 0 || dp_rank >= dp_size)
        return asp_errf(err, errlen, "loader: dp_rank %d outside a DP group of %d ranks", dp_rank, dp_size);
    if (seq_pad == 0) seq_pad = asp_ceil_div(seq_len, sp_size) * sp_size;
    if (seq_pad < seq_len || seq_pad % sp_size != 0)
        return asp_errf(err, errlen,
                        "loader: padded length %" PRId64 " must be >= seq_len %" PRId64
                        " and a multiple of the SP size %d (e.g. %" PRId64 ")",
                        seq_pad, seq_len, sp_size, asp_ceil_div(seq_len, sp_size) * sp_size);
    if (seq_pad > INT32_MAX)
        return asp_errf(err, errlen, "loader: padded length %" PRId64 " exceeds int32 positions (%d)", seq_pad,
                        INT32_MAX);
    if (s->vocab_size > (uint32_t)INT32_MAX)
        return asp_errf(err, errlen, "%s: vocab_size %" PRIu32 " does not fit int32 token ids", s->path,
                        s->vocab_size);
    int64_t n_samples = (s->n_tokens - 1) / seq_len;
    if (n_samples < dp_size)
        return asp_errf(err, errlen,
                        "%s: %" PRId64 " tokens make %" PRId64 " sample(s) of seq_len %" PRId64
                        ", fewer than the %d data-parallel ranks; need at least %" PRId64
                        " tokens (dp_size * seq_len + 1): use more text or a shorter seq_len",
                        s->path, s->n_tokens, n_samples, seq_len, dp_size, (int64_t)dp_size * seq_len + 1);
    l->shard = s;
    l->seq_len = seq_len;
    l->seq_pad = seq_pad;
    l->seq_local = seq_pad / sp_size;
    l->sp_rank = sp_rank;
    l->sp_size = sp_size;
    l->dp_rank = dp_rank;
    l->dp_size = dp_size;
    l->shuffle = shuffle != 0;
    l->seed = seed;
    l->n_samples = n_samples;
    l->order = asp_malloc((size_t)n_samples * sizeof *l->order, "loader sample order");
    l->eos = -1;
    l->epoch = 0;
    l->cursor = 0;
    build_order(l);
    return 0;
}

void loader_free(loader_t *l) {
    free(l->order);
    l->order = NULL;
}

void loader_set_documents(loader_t *l, int64_t eos) { l->eos = eos; }

int64_t loader_next(loader_t *l, int32_t *tokens, int32_t *targets, int32_t *positions) {
    return loader_next_docs(l, tokens, targets, positions, NULL, NULL);
}

int64_t loader_next_docs(loader_t *l, int32_t *tokens, int32_t *targets, int32_t *positions, int32_t *doc_start,
                         double *len_sq) {
    if (l->cursor < 0 || l->epoch < 0)
        asp_die(ASP_EXIT_USAGE, "loader: invalid stream position (epoch %" PRId64 ", cursor %" PRId64
                "); the checkpoint's data position is corrupt", l->epoch, l->cursor);
    /* fewer than dp_size samples left: they would split a step unevenly */
    if (l->n_samples - l->cursor < l->dp_size) {
        l->epoch++;
        l->cursor = 0;
    }
    /* a resumed run sets epoch and cursor: rebuild that epoch's order */
    if (l->order_epoch != l->epoch) build_order(l);
    int64_t sample = l->order[l->cursor + l->dp_rank];
    l->cursor += l->dp_size;

    const shard_t *sh = l->shard;
    const int64_t base = sample * l->seq_len;   /* shard index of the sample's first input */
    const uint32_t *src = sh->tokens + base;
    int64_t S = l->seq_len, first = (int64_t)l->sp_rank * l->seq_local;
    if (l->eos < 0) {
        for (int64_t t = 0; t < l->seq_local; t++) {
            int64_t p = first + t;
            positions[t] = (int32_t)p;
            if (p < S) {
                tokens[t] = (int32_t)src[p];
                /* shifted before the SP split; a masked token is context only */
                targets[t] = shard_is_target(sh, base + p + 1) ? (int32_t)src[p + 1] : -1;
            } else {
                tokens[t] = 0;
                targets[t] = -1;
            }
        }
        if (doc_start)   /* one document, and the padding after it */
            for (int64_t p = 0; p < l->seq_pad; p++) doc_start[p] = p < S ? 0 : (int32_t)S;
        if (len_sq) *len_sq = (double)S * (double)S;
        int64_t valid = S;   /* of the whole sample, the same on every SP rank */
        if (sh->target_mask)
            for (int64_t p = 0; p < S; p++) valid -= !shard_is_target(sh, base + p + 1);
        return valid;
    }
    /* Documents: every rank walks the whole sample, so all ranks of the SP
     * group agree on the boundaries (attention sees the whole sequence). A
     * document starts at 0 and after every EOS input; padding starts one. */
    uint32_t eos = (uint32_t)l->eos;
    int64_t start = 0, valid = 0, last = first + l->seq_local;
    double sq = 0;
    for (int64_t p = 0; p < l->seq_pad; p++) {
        if (p == S || (p > 0 && p < S && src[p - 1] == eos)) {
            if (p <= S) sq += (double)(p - start) * (double)(p - start);
            start = p;
        }
        if (doc_start) doc_start[p] = (int32_t)start;
        /* EOS predicts nothing across the boundary; a masked token is context only */
        int masked = p >= S || src[p] == eos || !shard_is_target(sh, base + p + 1);
        if (!masked) valid++;
        if (p >= first && p < last) {
            int64_t t = p - first;
            positions[t] = (int32_t)(p - start);
            tokens[t] = p < S ? (int32_t)src[p] : 0;
            targets[t] = masked ? -1 : (int32_t)src[p + 1];
        }
    }
    if (start < S) sq += (double)(S - start) * (double)(S - start);
    if (len_sq) *len_sq = sq;
    return valid;
}
