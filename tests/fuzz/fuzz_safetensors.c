/* A safetensors file from raw bytes: st_open validates it; an accepted file
 * has every tensor read (in bounds, by construction of the checks). */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_common.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("model.safetensors", data, size);
    st_file_t f;
    char err[2048];
    if (st_open(&f, path, err, sizeof err) == 0) {
        for (int i = 0; i < f.ntensors; i++) {
            const st_tensor_t *t = &f.tensors[i];
            if (t->numel > ((size_t)1 << 24)) continue;
            float *out = malloc((t->numel ? t->numel : 1) * sizeof(float));
            if (!out) abort();
            st_read_f32(&f, t, out);
            free(out);
            if (st_find(&f, t->name) != t) __builtin_trap();
        }
        st_close(&f);
    }
    return 0;
}
