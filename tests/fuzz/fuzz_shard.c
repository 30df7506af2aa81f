/* A token shard from raw bytes: shard_open refuses it, or every token it
 * maps is below the recorded vocabulary and a loader walks two epochs. */
#include <stdint.h>
#include <stdlib.h>

#include "io/data.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("fuzz.tok", data, size);
    shard_t s;
    char err[2048];
    if (shard_open(&s, path, 0, err, sizeof err) != 0) return 0;
    for (int64_t i = 0; i < s.n_tokens; i++)
        if (s.tokens[i] >= s.vocab_size) __builtin_trap();
    loader_t l;
    int64_t seq = s.n_tokens - 1 < 8 ? s.n_tokens - 1 : 8;
    if (s.vocab_size <= (uint32_t)INT32_MAX &&
        loader_init(&l, &s, seq, 0, 0, 1, 0, 1, 1, 7, err, sizeof err) == 0) {
        int32_t tok[8], tgt[8], pos[8];
        for (int64_t k = 0; k < 2 * l.n_samples && k < 64; k++) loader_next(&l, tok, tgt, pos);
        loader_free(&l);
    }
    shard_close(&s);
    return 0;
}
