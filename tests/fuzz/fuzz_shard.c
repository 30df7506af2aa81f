/* A token shard from raw bytes, plain or with a target mask: shard_open
 * refuses it, or every token it maps is below the recorded vocabulary, its
 * mask counts what it says, and a loader walks two epochs (with documents
 * where the header records an EOS id) whose valid counts are the targets it
 * hands out. */
#include <stdint.h>
#include <stdlib.h>

#include "io/data.h"
#include "fuzz_common.h"

static void walk(const shard_t *s) {
    loader_t l;
    char err[2048];
    int64_t seq = s->n_tokens - 1 < 8 ? s->n_tokens - 1 : 8;
    if (s->vocab_size > (uint32_t)INT32_MAX || loader_init(&l, s, seq, 0, 0, 1, 0, 1, 1, 7, err, sizeof err) != 0)
        return;
    loader_set_documents(&l, s->eos_token_id);
    int32_t tok[8], tgt[8], pos[8];
    for (int64_t k = 0; k < 2 * l.n_samples && k < 64; k++) {
        int64_t valid = loader_next(&l, tok, tgt, pos), seen = 0;
        for (int64_t i = 0; i < seq; i++) seen += tgt[i] >= 0;
        if (valid != seen || valid > seq) __builtin_trap();
    }
    loader_free(&l);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("fuzz.tok", data, size);
    shard_t s;
    char err[2048];
    if (shard_open(&s, path, 0, err, sizeof err) != 0) return 0;
    int64_t targets = 0;
    for (int64_t i = 0; i < s.n_tokens; i++) {
        if (s.tokens[i] >= s.vocab_size) __builtin_trap();
        targets += shard_is_target(&s, i);
    }
    if (targets != s.n_targets || targets < 1) __builtin_trap();
    walk(&s);
    shard_close(&s);
    return 0;
}
