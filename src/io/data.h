/* Token shards and the sample loader (format: docs/data.md).
 *
 * A sample is S+1 consecutive tokens: inputs tokens[0..S), targets
 * tokens[1..S]. Targets are shifted BEFORE the sequence is split over SP
 * ranks, so every rank's last target is the first token of the next rank's
 * slice and no boundary target is lost. When S is padded to seq_pad, padded
 * positions get token 0 and target -1 (ignored by the loss). A version-2
 * shard carries a target mask (one bit per token): a token whose bit is 0 is
 * context, never a target, and its target slot is -1 like padding's. */
#ifndef AUTOSP_DATA_H
#define AUTOSP_DATA_H

#include <stddef.h>
#include <stdint.h>

#define SHARD_MAGIC "ASPTOKS1"
#define SHARD_VERSION 1          /* plain shards */
#define SHARD_VERSION_MASKED 2   /* + a target mask of ceil(n_tokens / 8) bytes after the tokens */
#define SHARD_HEADER_BYTES 64

typedef struct {
    char path[1024];
    int64_t n_tokens;
    uint32_t vocab_size;        /* as recorded by the writer (max token id + 1 at least) */
    int64_t eos_token_id;       /* the EOS id the writer recorded (header flag bit 0), else -1 */
    const uint32_t *tokens;     /* mapped read-only */
    const uint8_t *target_mask; /* version 2: bit i (LSB first) of byte i / 8 says token i is a target; NULL: all are */
    int64_t n_targets;          /* tokens marked as targets (n_tokens without a mask) */
    void *map;
    size_t map_bytes;
} shard_t;

/* Open and validate a shard: magic, version, token width, count against the
 * file size, every token id < vocab_limit (when vocab_limit > 0). Returns 0,
 * or -1 with a message naming the file and the problem. */
int shard_open(shard_t *s, const char *path, int64_t vocab_limit, char *err, size_t errlen);
void shard_close(shard_t *s);
/* The shard's size in bytes and a fingerprint of its content (FNV-1a over
 * its header, its first and last MiB and 64 KiB at 62 points between: a
 * few MiB read whatever the shard's size), recorded in checkpoints so that
 * a resume sees the data changed. */
void shard_fingerprint(const shard_t *s, uint64_t *bytes, uint64_t *fingerprint);

/* A validation shard belongs with the training shard: the same vocabulary
 * (the same tokenizer), not above the model's. 0, or -1 with a message. */
int shard_check_pair(const shard_t *train, const shard_t *val, int64_t model_vocab, char *err, size_t errlen);

/* The header fields of a shard without mapping its tokens: its vocab_size
 * and recorded EOS id (-1 when none). 0; -1 with a message when it cannot be
 * read as a shard; -2 with a message when its header is refused (a
 * vocabulary below 2). */
int shard_peek(const char *path, uint32_t *vocab_size, int64_t *eos_token_id, char *err, size_t errlen);

/* Write a shard atomically (temporary file + rename). eos_token_id >= 0 is
 * recorded in the header (flag bit 0 at offset 28, the id at offset 32). */
int shard_write(const char *path, const uint32_t *tokens, int64_t n, uint32_t vocab_size,
                char *err, size_t errlen);
int shard_write_eos(const char *path, const uint32_t *tokens, int64_t n, uint32_t vocab_size, int64_t eos_token_id,
                    char *err, size_t errlen);
/* A version-2 shard: is_target[i] != 0 marks token i as a target (n entries). */
int shard_write_masked(const char *path, const uint32_t *tokens, const uint8_t *is_target, int64_t n,
                       uint32_t vocab_size, int64_t eos_token_id, char *err, size_t errlen);

/* Whether token i of the shard is a target (always, without a mask). */
static inline int shard_is_target(const shard_t *s, int64_t i) {
    return !s->target_mask || (s->target_mask[i >> 3] >> (i & 7) & 1);
}

typedef struct {
    const shard_t *shard;
    int64_t seq_len, seq_pad, seq_local;
    int sp_rank, sp_size, dp_rank, dp_size;
    int shuffle;
    uint64_t seed;
    int64_t n_samples;          /* samples per epoch: (n_tokens - 1) / seq_len */
    int64_t *order;             /* permutation of samples for epoch order_epoch */
    int64_t order_epoch;        /* rebuilt when a resumed run sets epoch */
    /* position in the stream (what a checkpoint records) */
    int64_t epoch;
    int64_t cursor;             /* global sample index within the epoch */
    int64_t eos;                /* >= 0: documents end with this token (loader_set_documents); -1: none */
} loader_t;

int loader_init(loader_t *l, const shard_t *s, int64_t seq_len, int64_t seq_pad,
                int sp_rank, int sp_size, int dp_rank, int dp_size,
                int shuffle, uint64_t seed, char *err, size_t errlen);
void loader_free(loader_t *l);

/* Next sample of this DP rank (global batch order: the b-th sample of a step
 * goes to DP rank b % dp_size). Fills this SP rank's slice of seq_local
 * entries: tokens, targets (-1 where masked) and global positions. Returns
 * the number of valid targets in the WHOLE sample (identical on every SP
 * rank of the group). */
int64_t loader_next(loader_t *l, int32_t *tokens, int32_t *targets, int32_t *positions);

/* Packed documents: token `eos` ends a document. Every sample then starts a
 * document at position 0 and after every EOS input; positions count from 0
 * within each document, the EOS input's target (the next document's first
 * token) is masked, and padding (p >= S) is a document of its own. */
void loader_set_documents(loader_t *l, int64_t eos);

/* loader_next with the sample's documents: doc_start[p] (seq_pad entries,
 * the WHOLE sample, the same on every SP rank) is the first position of the
 * document of position p; NULL skips it. *len_sq (may be NULL) gets the sum
 * over the sample's documents within S of their squared lengths (the
 * attention work); S * S without documents. */
int64_t loader_next_docs(loader_t *l, int32_t *tokens, int32_t *targets, int32_t *positions, int32_t *doc_start,
                         double *len_sq);

#endif
