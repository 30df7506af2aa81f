/* The CPU backend: the fp32 reference every CUDA kernel and every parallel path
 * is held against. Activations, weights and gradients are fp32 in host memory.
 *
 * Reference kernels (formulas as documented in backend.h):
 *   embed       out[t] = wte[tok[t]]; backward adds rows in token order.
 *   rmsnorm     rstd = 1/sqrt(mean(x^2)+eps), out = x rstd w;
 *               dx = rstd (w dy) - x rstd^3/d sum(w dy x), dw += sum_t dy x rstd.
 *   add_rmsnorm h = a + b, hn = rmsnorm(h) w (as add then rmsnorm, bitwise);
 *               backward g = dh + the rmsnorm dx of dhn, written to da and db.
 *   matmul      out = x W^T, dx (+)= dout W, dw += dout^T x; all three are one
 *               "axpy" kernel C = A B with B row-major, so the inner loop runs
 *               over contiguous columns and vectorises without reassociation.
 *               The blocked variant (x, dx packed) is the same kernel with A
 *               read block by block, B and C at a leading dimension: its
 *               results are bitwise those of the plain matmul.
 *   rope_split  rotate-half (Hugging Face Llama) on q and k, angles in fp64;
 *               backward is the transposed (inverse) rotation. Packed q/k/v
 *               (Ulysses layout) are written a block of heads at a time, so
 *               the values are exactly those of the plain layout.
 *   attention   causal GQA, one query row at a time with s floats of scratch per
 *               thread (never an s x s matrix); lse saved for the backward,
 *               which recomputes P = exp(scale q.k - lse). dq is parallel over
 *               (head, query row), dk/dv over (kv head, key row).
 *   swiglu      out = silu(gate) up, silu(g) = g sigmoid(g).
 *   xent        stable log-softmax per row; gradient written over the logits.
 *   heads_pack/unpack, grad_sumsq, adamw: exactly as in backend.h.
 *
 * Numerics and determinism: products that make up matmuls and attention
 * (q.k, P v, dout.v) accumulate in fp32 in a fixed index order; per-row
 * statistics (rmsnorm mean square and its backward sum, softmax sums, lse,
 * attention D_t, losses, sums of squares) accumulate in double. Every output
 * element is computed by exactly one thread, in the same order whatever the
 * thread count (OpenMP splits only independent outputs; sums over many blocks
 * are combined serially in block order), so results are bitwise independent
 * of OMP_NUM_THREADS. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu/host_optim.h"
#include "util.h"

#define CPU_ALIGN 64

static inline float *F(void *p) { return (float *)p; }
static inline const float *CF(const void *p) { return (const float *)p; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ------------------------------------------------------------ lifecycle, memory */

static int cpu_init(int device_index, char *err, size_t errlen) {
    (void)device_index; (void)err; (void)errlen;
    return 0;
}
static void cpu_shutdown(void) {}
static const char *cpu_device_name(void) { return "cpu"; }
static size_t cpu_device_memory(void) { return 0; }
static size_t cpu_memory_used(void) { return 0; }

static void *cpu_alloc(size_t bytes, const char *what) {
    void *p = NULL;
    /* 64-byte alignment keeps rows on cache lines for the vectorised loops. */
    size_t sz = asp_align_up(bytes ? bytes : 1, CPU_ALIGN);
    if (posix_memalign(&p, CPU_ALIGN, sz) != 0 || !p)
        asp_die(ASP_EXIT_FAILURE,
                "cpu backend: out of host memory allocating %zu bytes for %s; "
                "reduce the batch size or sequence length, or free host memory", bytes, what);
    return p;
}
static void cpu_free(void *p) { free(p); }
/* The offload tier: NULL when the memory is not there (the executor refuses the run). */
static void *cpu_host_alloc(size_t bytes, const char *what) {
    (void)what;
    void *p = NULL;
    size_t sz = asp_align_up(bytes ? bytes : 1, CPU_ALIGN);
    if (posix_memalign(&p, CPU_ALIGN, sz) != 0) return NULL;
    memset(p, 0, sz);
    return p;
}
/* Copies beside compute happen at once on the host: the same calls, no overlap. */
static double cpu_copied_bytes;
static void cpu_copy_async(void *dst, const void *src, size_t bytes, int to_host, int tag) {
    (void)to_host;
    (void)tag;
    if (bytes) memcpy(dst, src, bytes);
    cpu_copied_bytes += (double)bytes;
}
static void cpu_copy_wait(int tag) { (void)tag; }
static void cpu_copy_times(double *bytes, double *busy_s, double *exposed_s) {
    *bytes = cpu_copied_bytes;
    *busy_s = *exposed_s = 0;
    cpu_copied_bytes = 0;
}
static void cpu_zero(void *p, size_t bytes) { if (bytes) memset(p, 0, bytes); }
static void cpu_copy(void *dst, const void *src, size_t bytes) { if (bytes && dst != src) memmove(dst, src, bytes); }
static void cpu_synchronize(void) {}

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays a (quiet) NaN */
    u += 0x7fffu + ((u >> 16) & 1u);  /* round to nearest, ties to even; overflow goes to inf */
    return (uint16_t)(u >> 16);
}
static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void cpu_from_f32(void *dst, dtype_t t, const float *host, size_t n) {
    if (t == DT_F32) { cpu_copy(dst, host, n * 4); return; }
    if (t == DT_BF16) {
        uint16_t *d = dst;
        for (size_t i = 0; i < n; i++) d[i] = f32_to_bf16(host[i]);
        return;
    }
    asp_die(ASP_EXIT_FAILURE, "cpu backend: from_f32 cannot convert to %s; only fp32 and bf16 are supported",
            dtype_name(t));
}
static void cpu_to_f32(float *host, const void *src, dtype_t t, size_t n) {
    if (t == DT_F32) { cpu_copy(host, src, n * 4); return; }
    if (t == DT_BF16) {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) host[i] = bf16_to_f32(s[i]);
        return;
    }
    asp_die(ASP_EXIT_FAILURE, "cpu backend: to_f32 cannot convert from %s; only fp32 and bf16 are supported",
            dtype_name(t));
}

/* ------------------------------------------------------------ embedding */

static void cpu_embed_fwd(void *out, const int32_t *tokens, const void *wte, int64_t n, int64_t d) {
    #pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; t++)
        memcpy(F(out) + t * d, CF(wte) + (int64_t)tokens[t] * d, (size_t)d * 4);
}

static void cpu_embed_bwd(void *dwte, const int32_t *tokens, const void *dout, int64_t n, int64_t d,
                          int64_t vocab) {
    for (int64_t t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= vocab)
            asp_die(ASP_EXIT_FAILURE, "cpu backend: embed_bwd: token %d at position %lld is outside the "
                    "vocabulary [0, %lld); check the data against the model's vocab_size",
                    (int)tokens[t], (long long)t, (long long)vocab);
    /* Threads own column blocks; within a block tokens are added in order. */
    enum { CB = 64 };
    int64_t ncb = (d + CB - 1) / CB;
    #pragma omp parallel for schedule(static)
    for (int64_t cb = 0; cb < ncb; cb++) {
        int64_t c0 = cb * CB, nc = min64(CB, d - c0);
        for (int64_t t = 0; t < n; t++) {
            float *dst = F(dwte) + (int64_t)tokens[t] * d + c0;
            const float *src = CF(dout) + t * d + c0;
            for (int64_t c = 0; c < nc; c++) dst[c] += src[c];
        }
    }
}

/* ------------------------------------------------------------ rmsnorm */

static float row_rstd(const float *x, int64_t d, float eps) {
    double ss = 0;
    for (int64_t i = 0; i < d; i++) ss += (double)x[i] * x[i];
    return (float)(1.0 / sqrt(ss / (double)d + (double)eps));
}

static void cpu_rmsnorm_fwd(void *out, const void *x, const void *w, int64_t n, int64_t d, float eps) {
    #pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; t++) {
        const float *xr = CF(x) + t * d;
        float *o = F(out) + t * d;
        float rstd = row_rstd(xr, d, eps);
        for (int64_t i = 0; i < d; i++) o[i] = xr[i] * rstd * CF(w)[i];
    }
}

/* dw[c] += sum over rows t (in order, in double) of dy[t,c] x[t,c] rstd[t];
 * threads own column blocks. */
static void rmsnorm_dw(float *dw, const float *X, const float *DY, const float *rstd, int64_t n, int64_t d) {
    enum { CB = 64 };
    int64_t ncb = (d + CB - 1) / CB;
    #pragma omp parallel for schedule(static)
    for (int64_t cb = 0; cb < ncb; cb++) {
        int64_t c0 = cb * CB, nc = min64(CB, d - c0);
        double s[CB] = {0};
        for (int64_t t = 0; t < n; t++) {
            const float *xr = X + t * d + c0, *dy = DY + t * d + c0;
            for (int64_t c = 0; c < nc; c++) s[c] += (double)(dy[c] * xr[c] * rstd[t]);
        }
        for (int64_t c = 0; c < nc; c++) dw[c0 + c] += (float)s[c];
    }
}


/* Residual add + RMSNorm: the same arithmetic as add_fwd then rmsnorm_fwd
 * (bitwise equal results), one pass over each row. */
static void cpu_add_rmsnorm_fwd(void *h, void *hn, const void *a, const void *b, const void *w, int64_t n,
                                int64_t d, float eps) {
    #pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; t++) {
        const float *ar = CF(a) + t * d, *br = CF(b) + t * d;
        float *hr = F(h) + t * d, *o = F(hn) + t * d;
        for (int64_t i = 0; i < d; i++) hr[i] = ar[i] + br[i];
        float rstd = row_rstd(hr, d, eps);
        for (int64_t i = 0; i < d; i++) o[i] = hr[i] * rstd * CF(w)[i];
    }
}

/* g = dh + rmsnorm backward of dhn; da and db receive g. */
static void cpu_add_rmsnorm_bwd(void *da, int acc_a, void *db, int acc_b, void *dw, const void *dh,
                                const void *dhn, const void *h, const void *w, int64_t n, int64_t d, float eps) {
    const float *X = CF(h), *DY = CF(dhn), *W = CF(w), *DH = CF(dh);
    float *rstd = cpu_alloc((size_t)n * 4, "rmsnorm backward row statistics");
    #pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; t++) {
        const float *xr = X + t * d, *dy = DY + t * d;
        float r = row_rstd(xr, d, eps);
        rstd[t] = r;
        if (!da && !db) continue;
        double dot = 0;
        for (int64_t i = 0; i < d; i++) dot += (double)W[i] * dy[i] * xr[i];
        float coef = (float)((double)r * r * r / (double)d * dot);
        float *oa = da ? F(da) + t * d : NULL, *ob = db ? F(db) + t * d : NULL;
        for (int64_t i = 0; i < d; i++) {
            float g = r * (W[i] * dy[i]) - xr[i] * coef;
            if (DH) g += DH[t * d + i];
            if (oa) oa[i] = acc_a ? oa[i] + g : g;
            if (ob) ob[i] = acc_b ? ob[i] + g : g;
        }
    }
    if (dw) rmsnorm_dw(F(dw), X, DY, rstd, n, d);
    free(rstd);
}

/* RMSNorm's backward is the fused one's with no residual gradient and one addend. */
static void cpu_rmsnorm_bwd(void *dx, int acc, void *dw, const void *dout, const void *x, const void *w,
                            int64_t n, int64_t d, float eps) {
    cpu_add_rmsnorm_bwd(dx, acc, NULL, 0, dw, NULL, dout, x, w, n, d, eps);
}

/* ------------------------------------------------------------ matmul */

/* C[n,m] (+)= A B with B row-major [k, m] (row stride ldb) and C row stride
 * ldc. A(i,p) = A[(p / ablock) ablock_stride + i ars + (p % ablock) acs]:
 * A may be a transposed view (acs != 1), and its columns may come in blocks
 * of ablock that lie ablock_stride apart (the Ulysses packed layout; ablock
 * = k is one block). Each C element is summed by one thread from 0 over
 * p = 0..k-1 in order, then stored (acc = 0) or added (acc = 1). The tiling
 * only decides which elements are computed together (a 4 x 8 tile kept in
 * registers, so loads of B are shared by 4 rows), never the arithmetic, so
 * the result does not depend on the tiling, the blocking of A or the thread
 * count. */
enum { MR = 4, NR = 8, MB = 64, NB = 256 };

typedef struct {
    const float *A;
    int64_t ars, acs, ablock, ablock_stride;
    const float *B;
    int64_t ldb;
    float *C;
    int64_t ldc;
    int acc;
} gemm_t;

static inline void store_row(float *c, const float *s, int64_t nj, int acc) {
    if (acc)
        for (int64_t j = 0; j < nj; j++) c[j] += s[j];
    else
        for (int64_t j = 0; j < nj; j++) c[j] = s[j];
}

static void gemm_tile(const gemm_t *g, int64_t i0, int64_t j0, int64_t k) {
    float s[MR][NR] = {{0}};
    const int64_t ars = g->ars, acs = g->acs;
    for (int64_t p0 = 0; p0 < k; p0 += g->ablock) {
        const float *blk = g->A + (p0 / g->ablock) * g->ablock_stride;
        const float *a0 = blk + (i0 + 0) * ars, *a1 = blk + (i0 + 1) * ars;
        const float *a2 = blk + (i0 + 2) * ars, *a3 = blk + (i0 + 3) * ars;
        const float *b = g->B + p0 * g->ldb + j0;
        int64_t np = min64(g->ablock, k - p0);
        for (int64_t p = 0; p < np; p++, b += g->ldb) {
            float x0 = a0[p * acs], x1 = a1[p * acs], x2 = a2[p * acs], x3 = a3[p * acs];
            #pragma GCC unroll 8
            for (int j = 0; j < NR; j++) {
                s[0][j] += x0 * b[j];
                s[1][j] += x1 * b[j];
                s[2][j] += x2 * b[j];
                s[3][j] += x3 * b[j];
            }
        }
    }
    for (int r = 0; r < MR; r++) store_row(g->C + (i0 + r) * g->ldc + j0, s[r], NR, g->acc);
}

/* Partial tiles at the edges: the same sums, one element at a time. */
static void gemm_edge(const gemm_t *g, int64_t i0, int64_t ni, int64_t j0, int64_t nj, int64_t k) {
    for (int64_t i = i0; i < i0 + ni; i++)
        for (int64_t j = j0; j < j0 + nj; j++) {
            float s = 0.0f;
            for (int64_t p0 = 0; p0 < k; p0 += g->ablock) {
                const float *a = g->A + (p0 / g->ablock) * g->ablock_stride + i * g->ars;
                int64_t np = min64(g->ablock, k - p0);
                for (int64_t p = 0; p < np; p++) s += a[p * g->acs] * g->B[(p0 + p) * g->ldb + j];
            }
            float *c = g->C + i * g->ldc + j;
            *c = g->acc ? *c + s : s;
        }
}

static void gemm_run(const gemm_t *g, int64_t n, int64_t k, int64_t m) {
    int64_t nrb = (n + MB - 1) / MB, ncb = (m + NB - 1) / NB;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int64_t ib = 0; ib < nrb; ib++) {
        for (int64_t jb = 0; jb < ncb; jb++) {
            int64_t i1 = min64((ib + 1) * MB, n), j1 = min64((jb + 1) * NB, m);
            /* A k x NR panel of B stays in cache while the rows of the block pass over it. */
            for (int64_t j = jb * NB; j < j1; j += NR) {
                int64_t nj = min64(NR, j1 - j);
                for (int64_t i = ib * MB; i < i1; i += MR) {
                    int64_t ni = min64(MR, i1 - i);
                    if (ni == MR && nj == NR) gemm_tile(g, i, j, k);
                    else gemm_edge(g, i, ni, j, nj, k);
                }
            }
        }
    }
}

/* The common case: A(i,p) = A[i ars + p acs], B and C dense row-major. */
static void gemm_axpy(float *C, int acc, const float *A, int64_t ars, int64_t acs, const float *B,
                      int64_t n, int64_t k, int64_t m) {
    gemm_t g = {A, ars, acs, k, 0, B, m, C, m, acc};
    gemm_run(&g, n, k, m);
}

/* dst[c, r] = src[r, c] for src [rows, cols], in 32 x 32 blocks so both sides
 * are read and written a cache line at a time. */
static float *transpose_ld(const float *src, int64_t rows, int64_t cols, int64_t ld, const char *what) {
    enum { TB = 32 };
    float *dst = cpu_alloc((size_t)rows * (size_t)cols * 4, what);
    int64_t nrb = (rows + TB - 1) / TB, ncb = (cols + TB - 1) / TB;
    #pragma omp parallel for collapse(2) schedule(static)
    for (int64_t rb = 0; rb < nrb; rb++)
        for (int64_t cb = 0; cb < ncb; cb++) {
            int64_t r1 = min64((rb + 1) * TB, rows), c1 = min64((cb + 1) * TB, cols);
            for (int64_t c = cb * TB; c < c1; c++)
                for (int64_t r = rb * TB; r < r1; r++) dst[c * rows + r] = src[r * ld + c];
        }
    return dst;
}

static float *transpose(const float *src, int64_t rows, int64_t cols, const char *what) {
    return transpose_ld(src, rows, cols, cols, what);
}

static void cpu_matmul_fwd(void *out, const void *x, const void *w, int64_t n, int64_t k, int64_t m) {
    /* out = x W^T: with W^T [k,m] the kernel streams contiguous rows. */
    float *wt = transpose(CF(w), m, k, "matmul_fwd transposed weight");
    gemm_axpy(F(out), 0, CF(x), k, 1, wt, n, k, m);
    free(wt);
}

static void cpu_matmul_bwd(void *dx, int acc, void *dw, const void *dout, const void *x, const void *w,
                           int64_t n, int64_t k, int64_t m) {
    /* dw first: dx may overwrite x (backend.h) */
    if (dw) {
        /* dw[m,k] += dout^T[m,n] x[n,k]; reading dout by columns strides m floats
         * per token, so transpose it once. */
        float *dt = transpose(CF(dout), n, m, "matmul_bwd transposed output gradient");
        gemm_axpy(F(dw), 1, dt, n, 1, CF(x), m, n, k);
        free(dt);
    }
    if (dx) gemm_axpy(F(dx), acc, CF(dout), m, 1, CF(w), n, m, k);   /* dx[n,k] = dout[n,m] W[m,k] */
}

static int64_t block_width(const char *op, int64_t k, int blocks) {
    if (blocks < 1 || k % blocks != 0)
        asp_die(ASP_EXIT_FAILURE, "cpu backend: %s: %lld input features do not split into %d equal blocks; the "
                "packed layout needs the head count to be a multiple of the sequence-parallel degree",
                op, (long long)k, blocks);
    return k / blocks;
}

/* x in the packed layout: block j = x[j n kb ...] is [n, kb] and meets the
 * weight's columns j kb .. j kb + kb - 1. One sum over all k columns in order,
 * so the result is bitwise that of matmul_fwd on the unpacked x. */
static void cpu_matmul_blocked_fwd(void *out, const void *x, const void *w, int64_t n, int64_t k, int64_t m,
                                   int blocks) {
    int64_t kb = block_width("matmul_blocked_fwd", k, blocks);
    float *wt = transpose(CF(w), m, k, "matmul_blocked_fwd transposed weight");
    gemm_t g = {CF(x), kb, 1, kb, n * kb, wt, m, F(out), m, 0};
    gemm_run(&g, n, k, m);
    free(wt);
}

/* dx_j [n, kb] (+)= dout W[:, j kb ...] (row stride k) and dw[:, j kb ...]
 * (row stride k) += dout^T x_j: the gradient comes out packed, the weight
 * gradient in place, with matmul_bwd's sums. */
static void cpu_matmul_blocked_bwd(void *dx, int acc, void *dw, const void *dout, const void *x, const void *w,
                                   int64_t n, int64_t k, int64_t m, int blocks) {
    int64_t kb = block_width("matmul_blocked_bwd", k, blocks);
    for (int64_t j = 0; dx && j < blocks; j++) {
        gemm_t g = {CF(dout), m, 1, m, 0, CF(w) + j * kb, k, F(dx) + j * n * kb, kb, acc};
        gemm_run(&g, n, m, kb);
    }
    if (dw) {
        float *dt = transpose(CF(dout), n, m, "matmul_blocked_bwd transposed output gradient");
        for (int64_t j = 0; j < blocks; j++) {
            gemm_t g = {dt, n, 1, n, 0, CF(x) + j * n * kb, kb, F(dw) + j * kb, k, 1};
            gemm_run(&g, m, n, kb);
        }
        free(dt);
    }
}

/* The blocked matmul on windows: w [m, k] at row stride ldw, out / dout
 * [n, m] at row stride ldo (backend.h). The same kernel and sums as
 * matmul_blocked_*, so a window that is the whole matrix gives their results
 * bitwise. */
static void cpu_matmul_slice_fwd(void *out, int64_t ldo, int acc, const void *x, const void *w, int64_t ldw,
                                 int64_t n, int64_t k, int64_t m, int blocks) {
    int64_t kb = block_width("matmul_slice_fwd", k, blocks);
    float *wt = transpose_ld(CF(w), m, k, ldw, "matmul_slice_fwd transposed weight");
    gemm_t g = {CF(x), kb, 1, kb, n * kb, wt, m, F(out), ldo, acc};
    gemm_run(&g, n, k, m);
    free(wt);
}

static void cpu_matmul_slice_bwd(void *dx, int acc, void *dw, int64_t ldw, const void *dout, int64_t ldo,
                                 const void *x, const void *w, int64_t n, int64_t k, int64_t m, int blocks) {
    int64_t kb = block_width("matmul_slice_bwd", k, blocks);
    if (dw) {   /* dw first: dx may overwrite x */
        float *dt = transpose_ld(CF(dout), n, m, ldo, "matmul_slice_bwd transposed output gradient");
        for (int64_t j = 0; j < blocks; j++) {
            gemm_t g = {dt, n, 1, n, 0, CF(x) + j * n * kb, kb, F(dw) + j * kb, ldw, 1};
            gemm_run(&g, m, n, kb);
        }
        free(dt);
    }
    for (int64_t j = 0; dx && j < blocks; j++) {
        gemm_t g = {CF(dout), ldo, 1, m, 0, CF(w) + j * kb, ldw, F(dx) + j * n * kb, kb, acc};
        gemm_run(&g, n, m, kb);
    }
}

/* ------------------------------------------------------------ rope + split */

static void check_rope_dims(const char *op, int64_t hd) {
    if (hd <= 0 || hd % 2 != 0)
        asp_die(ASP_EXIT_FAILURE, "cpu backend: %s: head_dim %lld must be even and positive for "
                "rotate-half RoPE; fix the model's head_dim", op, (long long)hd);
}

/* Rotates (sign = +1) or un-rotates (sign = -1) `heads` heads of one token. */
static void rope_heads(float *dst, const float *src, int64_t heads, int64_t hd, int32_t pos,
                       const double *inv_freq, float sign) {
    int64_t half = hd / 2;
    for (int64_t i = 0; i < half; i++) {
        double ang = (double)pos * inv_freq[i];
        float c = (float)cos(ang), s = sign * (float)sin(ang);
        for (int64_t h = 0; h < heads; h++) {
            const float *a = src + h * hd;
            float *o = dst + h * hd;
            float x1 = a[i], x2 = a[i + half];
            o[i] = x1 * c - x2 * s;
            o[i + half] = x2 * c + x1 * s;
        }
    }
}

/* Heads per block of the packed layout for P ranks (P = 1: all heads, plain layout). */
static int64_t packed_hpr(const char *op, const char *what, int64_t heads, int P) {
    if (P < 1 || heads % P != 0)
        asp_die(ASP_EXIT_FAILURE, "cpu backend: %s: %s has %lld heads, which do not split into packed blocks "
                "for %d ranks; the head count must be a multiple of the sequence-parallel degree",
                op, what, (long long)heads, P);
    return heads / P;
}

/* Offset of token t's heads h0 .. h0 + hpr - 1 (one block) in a packed tensor of n tokens. */
static inline int64_t packed_at(int64_t j, int64_t t, int64_t n, int64_t hpr, int64_t hd) {
    return (j * n + t) * hpr * hd;
}

static void cpu_rope_split_fwd(void *q, void *k, void *v, const void *qkv, const int32_t *pos,
                               const double *inv_freq, int64_t n, int64_t hq, int64_t hkv, int64_t hd, int pq,
                               int pkv) {
    check_rope_dims("rope_split_fwd", hd);
    int64_t row = (hq + 2 * hkv) * hd;
    int64_t qb = packed_hpr("rope_split_fwd", "q", hq, pq), kb = packed_hpr("rope_split_fwd", "k, v", hkv, pkv);
    #pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; t++) {
        const float *r = CF(qkv) + t * row;
        for (int64_t j = 0; j < pq; j++)
            rope_heads(F(q) + packed_at(j, t, n, qb, hd), r + j * qb * hd, qb, hd, pos[t], inv_freq, 1.0f);
        for (int64_t j = 0; j < pkv; j++) {
            rope_heads(F(k) + packed_at(j, t, n, kb, hd), r + (hq + j * kb) * hd, kb, hd, pos[t], inv_freq, 1.0f);
            memcpy(F(v) + packed_at(j, t, n, kb, hd), r + (hq + hkv + j * kb) * hd, (size_t)(kb * hd) * 4);
        }
    }
}

static void cpu_rope_split_bwd(void *dqkv, const void *dq, const void *dk, const void *dv, const int32_t *pos,
                               const double *inv_freq, int64_t n, int64_t hq, int64_t hkv, int64_t hd, int pq,
                               int pkv) {
    check_rope_dims("rope_split_bwd", hd);
    int64_t row = (hq + 2 * hkv) * hd;
    int64_t qb = packed_hpr("rope_split_bwd", "dq", hq, pq), kb = packed_hpr("rope_split_bwd", "dk, dv", hkv, pkv);
    #pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; t++) {
        float *r = F(dqkv) + t * row;
        for (int64_t j = 0; j < pq; j++)
            rope_heads(r + j * qb * hd, CF(dq) + packed_at(j, t, n, qb, hd), qb, hd, pos[t], inv_freq, -1.0f);
        for (int64_t j = 0; j < pkv; j++) {
            rope_heads(r + (hq + j * kb) * hd, CF(dk) + packed_at(j, t, n, kb, hd), kb, hd, pos[t], inv_freq, -1.0f);
            memcpy(r + (hq + hkv + j * kb) * hd, CF(dv) + packed_at(j, t, n, kb, hd), (size_t)(kb * hd) * 4);
        }
    }
}

/* ------------------------------------------------------------ attention */

static void check_gqa(const char *op, int64_t hq, int64_t hkv) {
    if (hq <= 0 || hkv <= 0 || hq % hkv != 0)
        asp_die(ASP_EXIT_FAILURE, "cpu backend: %s: %lld query heads cannot be grouped over %lld kv heads; "
                "num_attention_heads must be a positive multiple of num_key_value_heads",
                op, (long long)hq, (long long)hkv);
}

static inline float dotf(const float *a, const float *b, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* First row of row t's document (0 without documents). */
static inline int64_t doc_first(const attn_docs_t *docs, int64_t t) { return docs ? docs->start[t] : 0; }

static void check_docs(const char *op, const attn_docs_t *docs, int64_t s) {
    if (!docs) return;
    for (int64_t t = 0; t < s; t++)
        if (docs->start[t] < 0 || docs->start[t] > t || (t > 0 && docs->start[t] < docs->start[t - 1]))
            asp_die(ASP_EXIT_FAILURE, "cpu backend: %s: document start %d of row %lld is not a row at or before it "
                    "that follows the previous row's; the document table is corrupt", op, (int)docs->start[t],
                    (long long)t);
}

static void cpu_attention_fwd(void *out, float *lse, const void *q, const void *k, const void *v,
                              int64_t s, int64_t hq, int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs) {
    check_gqa("attention_fwd", hq, hkv);
    check_docs("attention_fwd", docs, s);
    int64_t group = hq / hkv;
    #pragma omp parallel
    {
        float *sc = cpu_alloc((size_t)s * 4, "attention_fwd score row");
        float *acc = cpu_alloc((size_t)hd * 4, "attention_fwd output row");
        /* Rows cost O(t): dynamic scheduling balances them; each row is still
         * computed start to end by one thread. */
        #pragma omp for collapse(2) schedule(dynamic, 8)
        for (int64_t h = 0; h < hq; h++) {
            for (int64_t t = 0; t < s; t++) {
                int64_t g = h / group;
                const float *qr = CF(q) + (t * hq + h) * hd;
                const int64_t j0 = doc_first(docs, t);
                float mx = -INFINITY;
                for (int64_t j = j0; j <= t; j++) {
                    sc[j] = scale * dotf(qr, CF(k) + (j * hkv + g) * hd, hd);
                    if (sc[j] > mx) mx = sc[j];
                }
                double sum = 0;
                for (int64_t j = j0; j <= t; j++) {
                    sc[j] = expf(sc[j] - mx);
                    sum += sc[j];
                }
                for (int64_t i = 0; i < hd; i++) acc[i] = 0.0f;
                for (int64_t j = j0; j <= t; j++) {
                    const float *vr = CF(v) + (j * hkv + g) * hd;
                    float p = sc[j];
                    for (int64_t i = 0; i < hd; i++) acc[i] += p * vr[i];
                }
                float inv = (float)(1.0 / sum);
                float *o = F(out) + (t * hq + h) * hd;
                for (int64_t i = 0; i < hd; i++) o[i] = acc[i] * inv;
                lse[h * s + t] = (float)((double)mx + log(sum));
            }
        }
        free(sc);
        free(acc);
    }
}

static void cpu_attention_bwd(void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k,
                              const void *v, const void *out, const float *lse,
                              int64_t s, int64_t hq, int64_t hkv, int64_t hd, float scale, const attn_docs_t *docs) {
    check_gqa("attention_bwd", hq, hkv);
    check_docs("attention_bwd", docs, s);
    int64_t group = hq / hkv;
    const float *Q = CF(q), *K = CF(k), *V = CF(v), *DO = CF(dout), *O = CF(out);
    /* D[h,t] = dout_t . out_t, the softmax backward's row term. */
    float *D = cpu_alloc((size_t)hq * (size_t)s * 4, "attention_bwd row terms");
    #pragma omp parallel for collapse(2) schedule(static)
    for (int64_t h = 0; h < hq; h++)
        for (int64_t t = 0; t < s; t++) {
            const float *a = DO + (t * hq + h) * hd, *b = O + (t * hq + h) * hd;
            double acc = 0;
            for (int64_t i = 0; i < hd; i++) acc += (double)a[i] * b[i];
            D[h * s + t] = (float)acc;
        }

    /* dq_t = scale sum_{j<=t} P_tj (dout_t.v_j - D_t) k_j, one (head, query row) per task. */
    #pragma omp parallel
    {
        float *acc = cpu_alloc((size_t)hd * 4, "attention_bwd dq row");
        #pragma omp for collapse(2) schedule(dynamic, 8)
        for (int64_t h = 0; h < hq; h++) {
            for (int64_t t = 0; t < s; t++) {
                int64_t g = h / group;
                const float *qr = Q + (t * hq + h) * hd, *dor = DO + (t * hq + h) * hd;
                float l = lse[h * s + t], Dt = D[h * s + t];
                for (int64_t i = 0; i < hd; i++) acc[i] = 0.0f;
                for (int64_t j = doc_first(docs, t); j <= t; j++) {
                    const float *kr = K + (j * hkv + g) * hd, *vr = V + (j * hkv + g) * hd;
                    float p = expf(scale * dotf(qr, kr, hd) - l);
                    float ds = p * (dotf(dor, vr, hd) - Dt);
                    for (int64_t i = 0; i < hd; i++) acc[i] += ds * kr[i];
                }
                float *o = F(dq) + (t * hq + h) * hd;
                for (int64_t i = 0; i < hd; i++) o[i] = scale * acc[i];
            }
        }
        free(acc);
    }

    /* dk_j, dv_j: one (kv head, key row) per task, summing over the heads of its
     * group (in order) and the query rows t >= j (in order). */
    #pragma omp parallel
    {
        float *ak = cpu_alloc((size_t)hd * 4, "attention_bwd dk row");
        float *av = cpu_alloc((size_t)hd * 4, "attention_bwd dv row");
        #pragma omp for collapse(2) schedule(dynamic, 8)
        for (int64_t g = 0; g < hkv; g++) {
            for (int64_t j = 0; j < s; j++) {
                const float *kr = K + (j * hkv + g) * hd, *vr = V + (j * hkv + g) * hd;
                for (int64_t i = 0; i < hd; i++) ak[i] = av[i] = 0.0f;
                /* the query rows of j's document from j on (starts never decrease) */
                int64_t t_end = docs ? j + 1 : s;
                while (t_end < s && doc_first(docs, t_end) <= j) t_end++;
                for (int64_t h = g * group; h < (g + 1) * group; h++) {
                    for (int64_t t = j; t < t_end; t++) {
                        const float *qr = Q + (t * hq + h) * hd, *dor = DO + (t * hq + h) * hd;
                        float p = expf(scale * dotf(qr, kr, hd) - lse[h * s + t]);
                        float ds = p * (dotf(dor, vr, hd) - D[h * s + t]);
                        for (int64_t i = 0; i < hd; i++) {
                            av[i] += p * dor[i];
                            ak[i] += ds * qr[i];
                        }
                    }
                }
                float *okr = F(dk) + (j * hkv + g) * hd, *ovr = F(dv) + (j * hkv + g) * hd;
                for (int64_t i = 0; i < hd; i++) {
                    okr[i] = scale * ak[i];
                    ovr[i] = av[i];
                }
            }
        }
        free(ak);
        free(av);
    }
    free(D);
}

/* ------------------------------------------------------------ swiglu, residual */

static void cpu_swiglu_fwd(void *out, const void *gu, int64_t n, int64_t f) {
    #pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; t++) {
        const float *g = CF(gu) + t * 2 * f, *u = g + f;
        float *o = F(out) + t * f;
        for (int64_t i = 0; i < f; i++) {
            float silu = g[i] / (1.0f + expf(-g[i]));
            o[i] = silu * u[i];
        }
    }
}

static void cpu_swiglu_bwd(void *dgu, const void *dout, const void *gu, int64_t n, int64_t f) {
    #pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; t++) {
        const float *g = CF(gu) + t * 2 * f, *u = g + f, *dy = CF(dout) + t * f;
        float *dg = F(dgu) + t * 2 * f, *du = dg + f;
        for (int64_t i = 0; i < f; i++) {
            float sig = 1.0f / (1.0f + expf(-g[i]));
            float silu = g[i] * sig;
            float dsilu = sig * (1.0f + g[i] * (1.0f - sig));
            float gi = dy[i] * u[i] * dsilu, ui = dy[i] * silu;
            dg[i] = gi;
            du[i] = ui;
        }
    }
}

static void cpu_add_fwd(void *out, const void *a, const void *b, size_t count) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) F(out)[i] = CF(a)[i] + CF(b)[i];
}

static void cpu_accumulate(void *dst, const void *src, size_t count, int acc) {
    if (!acc) { cpu_copy(dst, src, count * 4); return; }
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) F(dst)[i] += CF(src)[i];
}

/* ------------------------------------------------------------ cross entropy */

static void cpu_xent_fwd_bwd(void *logits, float *loss_sum, const int32_t *targets, int64_t n, int64_t vocab,
                             float grad_scale) {
    for (int64_t t = 0; t < n; t++)
        if (targets[t] >= vocab)
            asp_die(ASP_EXIT_FAILURE, "cpu backend: xent: target %d at row %lld is outside the vocabulary "
                    "[0, %lld); check the data against the model's vocab_size",
                    (int)targets[t], (long long)t, (long long)vocab);
    double *row_loss = cpu_alloc((size_t)n * 8, "xent row losses");
    #pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; t++) {
        float *x = F(logits) + t * vocab;
        int32_t y = targets[t];
        if (y < 0) {
            memset(x, 0, (size_t)vocab * 4);
            row_loss[t] = 0;
            continue;
        }
        float mx = -INFINITY;
        for (int64_t i = 0; i < vocab; i++) if (x[i] > mx) mx = x[i];
        double sum = 0;
        for (int64_t i = 0; i < vocab; i++) sum += exp((double)x[i] - mx);
        double lse = (double)mx + log(sum);
        row_loss[t] = lse - (double)x[y];
        for (int64_t i = 0; i < vocab; i++) {
            double p = exp((double)x[i] - lse);
            x[i] = (float)((double)grad_scale * (p - (i == y ? 1.0 : 0.0)));
        }
    }
    double total = 0;  /* rows added in order: independent of the thread count */
    for (int64_t t = 0; t < n; t++) total += row_loss[t];
    *loss_sum = (float)((double)*loss_sum + total);
    free(row_loss);
}

/* ------------------------------------------------------------ Ulysses layouts */

static int64_t heads_per_rank(const char *op, int64_t heads, int P) {
    if (P < 1 || heads < 1 || (heads >= P && heads % P != 0))
        asp_die(ASP_EXIT_FAILURE, "cpu backend: %s: %lld heads cannot be spread over %d ranks; the head "
                "count must be a multiple of the sequence-parallel degree, or smaller than it (replication)",
                op, (long long)heads, P);
    return heads >= P ? heads / P : 1;
}
static inline int64_t head0(int64_t j, int64_t heads, int P, int64_t hpr) {
    return heads >= P ? j * hpr : (j * heads) / P;
}

static void cpu_heads_pack(void *dst, const void *src, int64_t n, int64_t heads, int64_t hd, int P) {
    int64_t hpr = heads_per_rank("heads_pack", heads, P);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int64_t j = 0; j < P; j++)
        for (int64_t t = 0; t < n; t++)
            memcpy(F(dst) + ((j * n + t) * hpr) * hd,
                   CF(src) + (t * heads + head0(j, heads, P, hpr)) * hd, (size_t)(hpr * hd) * 4);
}

static void cpu_heads_unpack(void *dst, const void *src, int64_t n, int64_t heads, int64_t hd, int P, int acc) {
    int64_t hpr = heads_per_rank("heads_unpack", heads, P);
    #pragma omp parallel
    {
        float *sum = cpu_alloc((size_t)hd * 4, "heads_unpack replica sum");
        #pragma omp for collapse(2) schedule(static)
        for (int64_t t = 0; t < n; t++) {
            for (int64_t h = 0; h < heads; h++) {
                for (int64_t i = 0; i < hd; i++) sum[i] = 0.0f;
                for (int64_t j = 0; j < P; j++) {
                    int64_t h0 = head0(j, heads, P, hpr);
                    if (h < h0 || h >= h0 + hpr) continue;
                    const float *s = CF(src) + ((j * n + t) * hpr + (h - h0)) * hd;
                    for (int64_t i = 0; i < hd; i++) sum[i] += s[i];
                }
                float *o = F(dst) + (t * heads + h) * hd;
                if (acc)
                    for (int64_t i = 0; i < hd; i++) o[i] += sum[i];
                else
                    for (int64_t i = 0; i < hd; i++) o[i] = sum[i];
            }
        }
        free(sum);
    }
}

/* ------------------------------------------------------------ optimizer */

static void cpu_grad_sumsq(float *sumsq, const void *grad, size_t n) { host_grad_sumsq(sumsq, grad, DT_F32, n); }

static void cpu_adamw(float *master, void *param, float *m, float *v, const void *grad, size_t n,
                      float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step,
                      const float *grad_sumsq, float max_norm) {
    host_adamw(master, param, DT_F32, m, v, grad, DT_F32, n, lr, beta1, beta2, eps, weight_decay, step,
               grad_sumsq ? *grad_sumsq : 0.0f, max_norm);
}

const backend_t backend_cpu = {
    .name = "cpu",
    .act_dtype = DT_F32,
    .param_dtype = DT_F32,
    .grad_dtype = DT_F32,
    .init = cpu_init,
    .shutdown = cpu_shutdown,
    .device_name = cpu_device_name,
    .device_memory = cpu_device_memory,
    .memory_used = cpu_memory_used,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_free,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .to_device = cpu_copy,
    .to_host = cpu_copy,
    .from_f32 = cpu_from_f32,
    .to_f32 = cpu_to_f32,
    .synchronize = cpu_synchronize,
    .stream = NULL, /* host memory: no stream */
    .copy_async = cpu_copy_async,
    .copy_wait = cpu_copy_wait,
    .copy_times = cpu_copy_times,
    .embed_fwd = cpu_embed_fwd,
    .embed_bwd = cpu_embed_bwd,
    .rmsnorm_fwd = cpu_rmsnorm_fwd,
    .rmsnorm_bwd = cpu_rmsnorm_bwd,
    .add_rmsnorm_fwd = cpu_add_rmsnorm_fwd,
    .add_rmsnorm_bwd = cpu_add_rmsnorm_bwd,
    .matmul_fwd = cpu_matmul_fwd,
    .matmul_bwd = cpu_matmul_bwd,
    .matmul_blocked_fwd = cpu_matmul_blocked_fwd,
    .matmul_blocked_bwd = cpu_matmul_blocked_bwd,
    .matmul_slice_fwd = cpu_matmul_slice_fwd,
    .matmul_slice_bwd = cpu_matmul_slice_bwd,
    .rope_split_fwd = cpu_rope_split_fwd,
    .rope_split_bwd = cpu_rope_split_bwd,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .swiglu_fwd = cpu_swiglu_fwd,
    .swiglu_bwd = cpu_swiglu_bwd,
    .add_fwd = cpu_add_fwd,
    .accumulate = cpu_accumulate,
    .xent_fwd_bwd = cpu_xent_fwd_bwd,
    .heads_pack = cpu_heads_pack,
    .heads_unpack = cpu_heads_unpack,
    .grad_accumulate = cpu_accumulate,
    .grad_sumsq = cpu_grad_sumsq,
    .adamw = cpu_adamw,
};
