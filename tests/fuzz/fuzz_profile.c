/* A card profile from raw bytes: profile_load refuses it with a message, or
 * every rate it gives is finite and positive where the predictor divides by
 * it, and writing it out and reading it back gives the same profile. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "plan/profile.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("fuzz.profile", data, size);
    card_profile_t p, q;
    char err[2048];
    if (profile_load(&p, path, err, sizeof err) != 0) {
        if (!err[0]) __builtin_trap();
        return 0;
    }
    if (!(p.mem_bytes_per_s > 0 && p.h2d_bytes_per_s > 0 && p.d2h_bytes_per_s > 0 && p.host_adamw_per_s > 0))
        __builtin_trap();
    double x = 1;
    for (int i = 0; i < 16; i++, x *= 17) {
        double g = profile_gemm_flops_per_s(&p, x);
        double a = profile_attn_flops_per_s(&p, i & 1, i & 2, x, 32 * (1 + i % 4));
        if (!(g > 0 && isfinite(g) && a > 0 && isfinite(a))) __builtin_trap();
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) abort();
    profile_write(&p, f);
    fclose(f);
    if (profile_parse(&q, buf, len, "written", err, sizeof err) != 0) __builtin_trap();
    if (q.gemm.n != p.gemm.n || q.attn_fwd.n != p.attn_fwd.n || strcmp(q.card, p.card)) __builtin_trap();
    free(buf);
    return 0;
}
