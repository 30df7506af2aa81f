/* Times the CUDA backend's causal GQA attention, forward and backward, for one
 * shape: the first call of each (plan build, and tuning with
 * ASP_CUDNN_GRAPH=tuned) on its own, then the median of several runs after
 * warm-up, measured with CUDA events on the backend's stream.
 *
 *   tests/bench_attention S HQ HKV HD [current|tuned] [RUNS]
 *
 * The variant argument sets ASP_CUDNN_GRAPH (default: as the environment
 * says); ASP_ATTENTION=simple times the simple kernels instead. Inputs are
 * random bf16. Exits 77 without a CUDA device. */
#include "autosp_config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "util.h"
#include "tests/testutil.h"

#ifdef HAVE_CUDA

/* Private to the CUDA backend (cuda/cuda_common.h). */
void *cuda_event_record(void);
float cuda_event_elapsed_ms(void *start, void *stop);
int cuda_attention_cudnn_describe(int bwd, int64_t s, int64_t hq, int64_t hkv, int64_t hd, char *buf, size_t len);

static const backend_t *G = &backend_cuda;

static void usage(const char *why) {
    fprintf(stderr, "bench_attention: %s\nusage: bench_attention S HQ HKV HD [current|tuned] [RUNS]\n"
            "  e.g. bench_attention 65536 32 8 64 current 10\n", why);
    exit(2);
}

static int64_t arg_int(const char *a, const char *name, int64_t lo) {
    char *end = NULL;
    long long v = strtoll(a, &end, 10);
    if (!end || *end || v < lo) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s = '%s' is not an integer >= %lld", name, a, (long long)lo);
        usage(msg);
    }
    return (int64_t)v;
}

/* n random bf16 values (normal, scale 1) written in chunks, so the host needs
 * only one chunk however long the sequence is. */
static void *rand_bf16(size_t n, trng_t *rng, const char *what) {
    void *d = G->alloc(n * 2, what);
    size_t chunk = (size_t)1 << 22;
    float *h = malloc(chunk * sizeof(float));
    if (!h) asp_die(ASP_EXIT_FAILURE, "bench_attention: out of host memory for a %zu-element chunk", chunk);
    for (size_t at = 0; at < n; at += chunk) {
        size_t m = n - at < chunk ? n - at : chunk;
        trng_fill(rng, h, m, 1.0);
        G->from_f32((char *)d + at * 2, DT_BF16, h, m);
    }
    free(h);
    return d;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 5 || argc > 7) usage("wrong number of arguments");
    int64_t s = arg_int(argv[1], "S", 1), hq = arg_int(argv[2], "HQ", 1), hkv = arg_int(argv[3], "HKV", 1),
            hd = arg_int(argv[4], "HD", 1);
    if (argc >= 6) setenv("ASP_CUDNN_GRAPH", argv[5], 1);
    int runs = argc >= 7 ? (int)arg_int(argv[6], "RUNS", 1) : 10;
    const int warmup = 3;
    if (runs > 1000) usage("RUNS above 1000");
    if (cuda_device_count() == 0) {
        printf("bench_attention: no CUDA device, skipping\n");
        return TEST_SKIP;
    }
    char err[512];
    if (G->init(0, err, sizeof err) != 0) {
        fprintf(stderr, "bench_attention: %s\n", err);
        return 1;
    }
    const char *att = getenv("ASP_ATTENTION"), *var = getenv("ASP_CUDNN_GRAPH");
    printf("device %s; attention %s, ASP_CUDNN_GRAPH=%s; s=%lld hq=%lld hkv=%lld hd=%lld, bf16, causal\n",
           G->device_name(), att && *att ? att : "cudnn", var && *var ? var : "current", (long long)s, (long long)hq,
           (long long)hkv, (long long)hd);

    trng_t rng = {2024};
    size_t nq = (size_t)s * (size_t)hq * (size_t)hd, nk = (size_t)s * (size_t)hkv * (size_t)hd;
    void *q = rand_bf16(nq, &rng, "q"), *k = rand_bf16(nk, &rng, "k"), *v = rand_bf16(nk, &rng, "v");
    void *dout = rand_bf16(nq, &rng, "dout");
    void *out = G->alloc(nq * 2, "out"), *dq = G->alloc(nq * 2, "dq");
    void *dk = G->alloc(nk * 2, "dk"), *dv = G->alloc(nk * 2, "dv");
    float *lse = G->alloc((size_t)hq * (size_t)s * sizeof(float), "lse");
    float scale = 1.0f / sqrtf((float)hd);

    /* Causal attention counted as half of full: the forward's two matmuls are
     * 2 * 2 s^2 hq hd FLOPs in full, the backward's five 2.5 times that. */
    double sq = (double)s * (double)s * (double)hq * (double)hd;
    double flops[2] = {2.0 * sq, 5.0 * sq};
    printf("FLOPs (causal = half of full): fwd 4*s^2*hq*hd/2 = %.4e, bwd 2.5 * fwd = 10*s^2*hq*hd/2 = %.4e\n",
           flops[0], flops[1]);

    float *ms = malloc((size_t)runs * sizeof(float));
    if (!ms) asp_die(ASP_EXIT_FAILURE, "bench_attention: out of host memory");
    for (int bwd = 0; bwd < 2; bwd++) {
        /* the first call builds (and maybe tunes) the plan: timed on the host */
        G->synchronize();
        double t0 = asp_now();
        if (bwd) G->attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, s, hq, hkv, hd, scale, NULL);
        else G->attention_fwd(out, lse, q, k, v, s, hq, hkv, hd, scale, NULL);
        G->synchronize();
        double first = asp_now() - t0;
        for (int i = 0; i < warmup + runs; i++) {
            void *a = cuda_event_record();
            if (bwd) G->attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, s, hq, hkv, hd, scale, NULL);
            else G->attention_fwd(out, lse, q, k, v, s, hq, hkv, hd, scale, NULL);
            float t = cuda_event_elapsed_ms(a, cuda_event_record());
            if (i >= warmup) ms[i - warmup] = t;
        }
        qsort(ms, (size_t)runs, sizeof *ms, cmp_float);
        double med = runs % 2 ? ms[runs / 2] : 0.5 * (ms[runs / 2 - 1] + ms[runs / 2]);
        printf("%s: first call %.3f s (plan build%s); median of %d runs after %d warm-up: %.3f ms "
               "(min %.3f, max %.3f) = %.1f TFLOP/s\n",
               bwd ? "bwd" : "fwd", first, var && strcmp(var, "tuned") == 0 ? " and tuning" : "", runs, warmup, med,
               (double)ms[0], (double)ms[runs - 1], flops[bwd] / (med * 1e-3) / 1e12);
        char desc[4096];
        if (!(att && strcmp(att, "simple") == 0) &&
            cuda_attention_cudnn_describe(bwd, s, hq, hkv, hd, desc, sizeof desc) == 0)
            printf("  %s\n", desc);
        fflush(stdout);
    }
    free(ms);
    G->free(q); G->free(k); G->free(v); G->free(dout); G->free(out);
    G->free(dq); G->free(dk); G->free(dv); G->free(lse);
    G->shutdown();
    return 0;
}

#else
int main(void) {
    printf("bench_attention: built without CUDA, skipping\n");
    return TEST_SKIP;
}
#endif
