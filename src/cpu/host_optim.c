/* Host optimizer math: see host_optim.h. */
#include "cpu/host_optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "util.h"

static inline float bf16_load(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static inline uint16_t bf16_store(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                             /* nearest even */
    return (uint16_t)(u >> 16);
}

static void need_float(const char *what, dtype_t t) {
    if (t != DT_F32 && t != DT_BF16)
        asp_die(ASP_EXIT_FAILURE, "internal: host optimizer %s in %s (fp32 or bf16 expected)", what, dtype_name(t));
}

void host_grad_sumsq(float *sumsq, const void *grad, dtype_t t, size_t n) {
    if (n == 0) return;
    *sumsq = (float)((double)*sumsq + host_grad_sumsq_total(grad, t, n));
}

double host_grad_sumsq_total(const void *grad, dtype_t t, size_t n) {
    enum { BLK = 1 << 16 };
    need_float("gradient", t);
    size_t nb = (n + BLK - 1) / BLK;
    if (nb == 0) return 0;
    double *part = asp_malloc(nb * sizeof(double), "gradient norm partial sums");
    const float *g32 = grad;
    const uint16_t *g16 = grad;
    #pragma omp parallel for schedule(static)
    for (size_t b = 0; b < nb; b++) {
        size_t i0 = b * BLK, i1 = i0 + BLK < n ? i0 + BLK : n;
        double s = 0;
        if (t == DT_F32)
            for (size_t i = i0; i < i1; i++) s += (double)g32[i] * g32[i];
        else
            for (size_t i = i0; i < i1; i++) {
                float x = bf16_load(g16[i]);
                s += (double)x * x;
            }
        part[b] = s;
    }
    double total = 0;
    for (size_t b = 0; b < nb; b++) total += part[b];
    free(part);
    return total;
}

void host_adamw(float *master, void *param, dtype_t pt, float *m, float *v, const void *grad, dtype_t gt, size_t n,
                float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step, float sumsq,
                float max_norm) {
    if (step < 1)
        asp_die(ASP_EXIT_FAILURE, "adamw: step %lld must be >= 1 (bias correction divides by 1 - beta^step)",
                (long long)step);
    need_float("gradient", gt);
    need_float("weights", pt);
    double norm = sqrt((double)sumsq);
    float clip = (max_norm > 0 && norm > (double)max_norm) ? (float)((double)max_norm / norm) : 1.0f;
    float bc1 = (float)(1.0 - pow((double)beta1, (double)step));
    float bc2 = (float)(1.0 - pow((double)beta2, (double)step));
    const float *G32 = grad;
    const uint16_t *G16 = grad;
    float *P32 = param;
    uint16_t *P16 = param;
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = (gt == DT_F32 ? G32[i] : bf16_load(G16[i])) * clip;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float upd = (mi / bc1) / (sqrtf(vi / bc2) + eps) + weight_decay * master[i];
        master[i] -= lr * upd;
        if (pt == DT_F32) P32[i] = master[i];
        else P16[i] = bf16_store(master[i]);
    }
}

void host_copy(void *dst, const void *src, size_t bytes) {
    const size_t chunk = (size_t)16 << 20;
    if (bytes < 4 * chunk) {
        memcpy(dst, src, bytes);
        return;
    }
    const size_t parts = (bytes + chunk - 1) / chunk;
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < parts; i++) {
        size_t lo = i * chunk, len = bytes - lo < chunk ? bytes - lo : chunk;
        memcpy((char *)dst + lo, (const char *)src + lo, len);
    }
}

void host_accumulate(void *dst, dtype_t t, const float *src, size_t n, int acc) {
    need_float("gradient shard", t);
    if (t == DT_F32) {
        float *d = dst;
        if (!acc) {
            if (d != src) host_copy(d, src, n * sizeof(float));
            return;
        }
        #pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) d[i] += src[i];
        return;
    }
    uint16_t *d = dst;
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) d[i] = bf16_store(acc ? bf16_load(d[i]) + src[i] : src[i]);
}

void host_to_f32(float *out, const void *src, dtype_t t, size_t n) {
    need_float("weight shard", t);
    if (t == DT_F32) {
        if ((const void *)out != src) memcpy(out, src, n * sizeof(float));
        return;
    }
    const uint16_t *s = src;
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = bf16_load(s[i]);
}

void host_optim_threads(int ranks_on_node) {
#ifdef _OPENMP
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (ranks_on_node < 1 || cores < 1) return;
    int n = (int)(cores / ranks_on_node);
    omp_set_num_threads(n > 0 ? n : 1);
#else
    (void)ranks_on_node;
#endif
}
