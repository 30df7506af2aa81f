/* Every CUDA op held against the CPU reference on the same (bf16-rounded)
 * random inputs, with outputs poisoned (NaN) before each call so unwritten
 * elements show. Prints one line per case with its relative error. Skips
 * (exit 77) without a CUDA device. */
#include "autosp_config.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "tests/testutil.h"

#ifdef HAVE_CUDA

static const backend_t *G = &backend_cuda;
static const backend_t *C = &backend_cpu;
static trng_t rng = {12345};

static float bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

/* One tensor on both backends: h is the host copy of the inputs both got. */
typedef struct {
    size_t n;
    dtype_t gt;     /* dtype on the GPU */
    float *h;
    void *g;
    float *c;
} buf_t;

static buf_t mk(size_t n, dtype_t gt, double scale, int positive) {
    buf_t b = {n, gt, NULL, NULL, NULL};
    b.h = malloc((n ? n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(b.h);
    trng_fill(&rng, b.h, n, scale);
    for (size_t i = 0; i < n; i++) {
        if (positive) b.h[i] = fabsf(b.h[i]) + 1e-3f;
        if (gt == DT_BF16) b.h[i] = bf16_round(b.h[i]);
    }
    b.g = G->alloc(n * dtype_size(gt), "test tensor");
    G->from_f32(b.g, gt, b.h, n);
    b.c = C->alloc((n ? n : 1) * sizeof(float), "test tensor");
    memcpy(b.c, b.h, n * sizeof(float));
    return b;
}

/* An output: NaN on both sides, so whatever the op does not write shows. */
static buf_t mk_out(size_t n, dtype_t gt) {
    buf_t b = mk(n, gt, 1.0, 0);
    for (size_t i = 0; i < n; i++) b.h[i] = NAN;
    G->from_f32(b.g, gt, b.h, n);
    memcpy(b.c, b.h, n * sizeof(float));
    return b;
}

/* Where the exact result is zero (dq with a single key: the softmax over one
 * key has zero gradient) a relative error means nothing: both sides must be
 * zero up to rounding, measured against the scale of the inputs (~1). */
static void cmp_zero(const char *what, buf_t *b, double tol) {
    float *got = malloc((b->n ? b->n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(got);
    G->to_f32(got, b->g, b->gt, b->n);
    double gmax = 0, cmax = 0;
    for (size_t i = 0; i < b->n; i++) {
        ck_assert_msg(isfinite(got[i]), "%s: non-finite value at %zu", what, i);
        gmax = fmax(gmax, fabs(got[i]));
        cmax = fmax(cmax, fabs(b->c[i]));
    }
    printf("  %-58s n=%-8zu exact 0: max|gpu| %.1e, max|cpu| %.1e\n", what, b->n, gmax, cmax);
    fflush(stdout);
    free(got);
    ck_assert_msg(gmax <= tol && cmax <= tol, "%s: should be zero, max |gpu| %.3e, max |cpu| %.3e", what, gmax, cmax);
}

static double cmp(const char *what, buf_t *b, double tol) {
    float *got = malloc((b->n ? b->n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(got);
    G->to_f32(got, b->g, b->gt, b->n);
    size_t bad = 0;
    for (size_t i = 0; i < b->n; i++)
        if (!isfinite(got[i]) || !isfinite(b->c[i])) bad++;
    double e = rel_err(got, b->c, b->n);
    printf("  %-58s n=%-8zu rel_err=%.3e%s\n", what, b->n, e, bad ? " NON-FINITE" : "");
    fflush(stdout);
    free(got);
    ck_assert_msg(bad == 0, "%s: %zu non-finite values (unwritten or overflow)", what, bad);
    ck_assert_msg(e <= tol, "%s: rel_err %.3e > %.1e", what, e, tol);
    return e;
}

/* A second device copy of b's initial values (b->h). */
static void *gpu_copy(const buf_t *b) {
    void *g = G->alloc(b->n * dtype_size(b->gt), "test tensor copy");
    G->from_f32(g, b->gt, b->h, b->n);
    return g;
}

/* The in-place result `got` must equal the out-of-place one `want`, bitwise. */
static void same_device_bits(const char *what, const void *got, const void *want, const buf_t *like) {
    size_t bytes = like->n * dtype_size(like->gt);
    unsigned char *a = malloc(bytes ? bytes : 1), *b = malloc(bytes ? bytes : 1);
    ck_assert(a && b);
    G->to_host(a, got, bytes);
    G->to_host(b, want, bytes);
    printf("  %-58s n=%-8zu %s\n", what, like->n, memcmp(a, b, bytes) ? "DIFFERS" : "bitwise equal");
    ck_assert_msg(memcmp(a, b, bytes) == 0, "%s: the in-place result differs from the out-of-place one", what);
    free(a);
    free(b);
}

static void drop(buf_t *b) {
    G->free(b->g);
    C->free(b->c);
    free(b->h);
}

static int32_t *ints_g(const int32_t *h, size_t n) {
    int32_t *g = G->alloc(n * sizeof(int32_t), "test ints");
    G->to_device(g, h, n * sizeof(int32_t));
    return g;
}

static void setup(void) {
    char err[512];
    ck_assert_msg(C->init(0, err, sizeof err) == 0, "cpu init: %s", err);
    ck_assert_msg(G->init(0, err, sizeof err) == 0, "cuda init: %s", err);
    ck_assert_int_eq(C->act_dtype, DT_F32);
    ck_assert_int_eq(G->act_dtype, DT_BF16);
    ck_assert_int_eq(G->grad_dtype, DT_F32);
}

static void teardown(void) {
    G->shutdown();
    C->shutdown();
}

static const int64_t NS[] = {1, 7, 33, 257};

START_TEST(t_embed) {
    const int64_t ds[] = {64, 33};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 2; b++) {
            int64_t n = NS[a], d = ds[b], vocab = 11;   /* small vocab: repeated tokens */
            int32_t *tok = malloc((size_t)n * 4);
            for (int64_t i = 0; i < n; i++) tok[i] = (int32_t)(trng_next(&rng) % (uint64_t)vocab);
            int32_t *tg = ints_g(tok, (size_t)n);
            buf_t wte = mk((size_t)(vocab * d), DT_BF16, 1.0, 0), out = mk_out((size_t)(n * d), DT_BF16);
            G->embed_fwd(out.g, tg, wte.g, n, d);
            C->embed_fwd(out.c, tok, wte.c, n, d);
            char name[128];
            snprintf(name, sizeof name, "embed_fwd d=%lld", (long long)d);
            cmp(name, &out, 1e-2);
            buf_t dout = mk((size_t)(n * d), DT_BF16, 1.0, 0), dwte = mk((size_t)(vocab * d), DT_F32, 1.0, 0);
            G->embed_bwd(dwte.g, tg, dout.g, n, d, vocab);
            C->embed_bwd(dwte.c, tok, dout.c, n, d, vocab);
            snprintf(name, sizeof name, "embed_bwd d=%lld vocab=%lld", (long long)d, (long long)vocab);
            cmp(name, &dwte, 1e-5);
            drop(&wte); drop(&out); drop(&dout); drop(&dwte);
            G->free(tg);
            free(tok);
        }
}
END_TEST

START_TEST(t_rmsnorm) {
    const int64_t ds[] = {64, 100};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 2; b++)
            for (int acc = 0; acc < 2; acc++) {
                int64_t n = NS[a], d = ds[b];
                char name[128];
                buf_t x = mk((size_t)(n * d), DT_BF16, 1.0, 0), w = mk((size_t)d, DT_BF16, 1.0, 0);
                buf_t out = mk_out((size_t)(n * d), DT_BF16);
                G->rmsnorm_fwd(out.g, x.g, w.g, n, d, 1e-5f);
                C->rmsnorm_fwd(out.c, x.c, w.c, n, d, 1e-5f);
                snprintf(name, sizeof name, "rmsnorm_fwd d=%lld", (long long)d);
                if (!acc) cmp(name, &out, 1e-2);
                buf_t dout = mk((size_t)(n * d), DT_BF16, 1.0, 0), dw = mk((size_t)d, DT_F32, 1.0, 0);
                buf_t dx = acc ? mk((size_t)(n * d), DT_BF16, 1.0, 0) : mk_out((size_t)(n * d), DT_BF16);
                G->rmsnorm_bwd(dx.g, acc, dw.g, dout.g, x.g, w.g, n, d, 1e-5f);
                C->rmsnorm_bwd(dx.c, acc, dw.c, dout.c, x.c, w.c, n, d, 1e-5f);
                snprintf(name, sizeof name, "rmsnorm_bwd dx d=%lld acc=%d", (long long)d, acc);
                cmp(name, &dx, 1e-2);
                snprintf(name, sizeof name, "rmsnorm_bwd dw d=%lld acc=%d", (long long)d, acc);
                cmp(name, &dw, 1e-2);
                drop(&x); drop(&w); drop(&out); drop(&dout); drop(&dw); drop(&dx);
            }
}
END_TEST

/* Raw device bytes of a buffer (to compare two GPU results bit for bit). */
static void *raw(const buf_t *b) {
    size_t bytes = b->n * dtype_size(b->gt);
    void *h = malloc(bytes ? bytes : 1);
    ck_assert_ptr_nonnull(h);
    G->to_host(h, b->g, bytes);
    return h;
}

static void same_as_unfused(const char *what, const buf_t *fused, const buf_t *pair) {
    void *x = raw(fused), *y = raw(pair);
    int eq = memcmp(x, y, fused->n * dtype_size(fused->gt)) == 0;
    printf("  %-58s bitwise %s\n", what, eq ? "equal" : "DIFFERENT");
    fflush(stdout);
    free(x);
    free(y);
    ck_assert_msg(eq, "%s: the fused op differs from add_fwd + rmsnorm_fwd", what);
}

/* add_rmsnorm against the CPU reference: d a multiple of 8 (16-byte vectors)
 * or not (scalar path), one row wider than the kernels keep in registers
 * (17000), and a misaligned first addend (scalar path at d % 8 == 0). The
 * forward must also equal the CUDA add_fwd + rmsnorm_fwd bit for bit. */
START_TEST(t_add_rmsnorm) {
    const int64_t ds[] = {2048, 1000, 72, 33, 17000};
    const int64_t ns[] = {1, 7, 257};
    for (int a = 0; a < 5; a++)
        for (int c = 0; c < 3; c++)
            for (int mis = 0; mis < 2; mis++) {
                int64_t n = ns[c], d = ds[a];
                size_t nd = (size_t)(n * d);
                if (mis && d != 1000) continue;
                if (d == 17000 && n == 257) continue;   /* the CPU reference's time */
                char name[160], tag[64];
                snprintf(tag, sizeof tag, "n=%lld d=%lld%s", (long long)n, (long long)d, mis ? " misaligned" : "");
                /* forward; a is offset by one element when misaligned */
                buf_t xa = mk(nd + 1, DT_BF16, 1.0, 0), xb = mk(nd, DT_BF16, 1.0, 0);
                buf_t w = mk((size_t)d, DT_BF16, 1.0, 0);
                void *ag = (uint16_t *)xa.g + mis;
                float *ac = xa.c + mis;
                buf_t h = mk_out(nd, DT_BF16), hn = mk_out(nd, DT_BF16);
                G->add_rmsnorm_fwd(h.g, hn.g, ag, xb.g, w.g, n, d, 1e-5f);
                C->add_rmsnorm_fwd(h.c, hn.c, ac, xb.c, w.c, n, d, 1e-5f);
                snprintf(name, sizeof name, "add_rmsnorm_fwd h %s", tag);
                cmp(name, &h, 1e-2);
                snprintf(name, sizeof name, "add_rmsnorm_fwd hn %s", tag);
                cmp(name, &hn, 1e-2);
                buf_t h2 = mk_out(nd, DT_BF16), hn2 = mk_out(nd, DT_BF16);
                G->add_fwd(h2.g, ag, xb.g, nd);
                G->rmsnorm_fwd(hn2.g, h2.g, w.g, n, d, 1e-5f);
                snprintf(name, sizeof name, "add_rmsnorm_fwd h = add_fwd %s", tag);
                same_as_unfused(name, &h, &h2);
                snprintf(name, sizeof name, "add_rmsnorm_fwd hn = rmsnorm_fwd(add_fwd) %s", tag);
                same_as_unfused(name, &hn, &hn2);
                drop(&h2); drop(&hn2);

                /* backward on fresh inputs: dh present or NULL, each output overwritten or accumulated */
                for (int with_dh = 0; with_dh < 2; with_dh++)
                    for (int acc = 0; acc < 2; acc++) {
                        buf_t hx = mk(nd, DT_BF16, 1.0, 0), dhn = mk(nd, DT_BF16, 1.0, 0);
                        buf_t dh = mk(with_dh ? nd : 0, DT_BF16, 1.0, 0);
                        buf_t dw = mk((size_t)d, DT_F32, 1.0, 0);
                        buf_t da = acc ? mk(nd, DT_BF16, 1.0, 0) : mk_out(nd, DT_BF16);
                        buf_t db = acc ? mk_out(nd, DT_BF16) : mk(nd, DT_BF16, 1.0, 0);
                        G->add_rmsnorm_bwd(da.g, acc, db.g, !acc, dw.g, with_dh ? dh.g : NULL, dhn.g, hx.g, w.g, n, d,
                                           1e-5f);
                        C->add_rmsnorm_bwd(da.c, acc, db.c, !acc, dw.c, with_dh ? dh.c : NULL, dhn.c, hx.c, w.c, n, d,
                                           1e-5f);
                        const char *dhs = with_dh ? "dh" : "dh=NULL";
                        snprintf(name, sizeof name, "add_rmsnorm_bwd da acc=%d %s %s", acc, dhs, tag);
                        cmp(name, &da, 1e-2);
                        snprintf(name, sizeof name, "add_rmsnorm_bwd db acc=%d %s %s", !acc, dhs, tag);
                        cmp(name, &db, 1e-2);
                        snprintf(name, sizeof name, "add_rmsnorm_bwd dw %s %s", dhs, tag);
                        cmp(name, &dw, 1e-2);
                        drop(&hx); drop(&dhn); drop(&dh); drop(&dw); drop(&da); drop(&db);
                    }
                drop(&xa); drop(&xb); drop(&w); drop(&h); drop(&hn);
            }
}
END_TEST

START_TEST(t_matmul) {
    const int64_t sh[][3] = {{1, 64, 32}, {7, 33, 17}, {33, 128, 256}, {257, 64, 96}, {100, 256, 1000}};
    for (int a = 0; a < 5; a++)
        for (int acc = 0; acc < 2; acc++) {
            int64_t n = sh[a][0], k = sh[a][1], m = sh[a][2];
            char name[128];
            buf_t x = mk((size_t)(n * k), DT_BF16, 1.0, 0), w = mk((size_t)(m * k), DT_BF16, 0.1, 0);
            buf_t out = mk_out((size_t)(n * m), DT_BF16);
            G->matmul_fwd(out.g, x.g, w.g, n, k, m);
            C->matmul_fwd(out.c, x.c, w.c, n, k, m);
            snprintf(name, sizeof name, "matmul_fwd n=%lld k=%lld m=%lld", (long long)n, (long long)k, (long long)m);
            if (!acc) cmp(name, &out, 1e-2);
            buf_t dout = mk((size_t)(n * m), DT_BF16, 1.0, 0), dw = mk((size_t)(m * k), DT_F32, 1.0, 0);
            buf_t dx = acc ? mk((size_t)(n * k), DT_BF16, 1.0, 0) : mk_out((size_t)(n * k), DT_BF16);
            G->matmul_bwd(dx.g, acc, dw.g, dout.g, x.g, w.g, n, k, m);
            C->matmul_bwd(dx.c, acc, dw.c, dout.c, x.c, w.c, n, k, m);
            snprintf(name, sizeof name, "matmul_bwd dx n=%lld k=%lld m=%lld acc=%d", (long long)n, (long long)k,
                     (long long)m, acc);
            cmp(name, &dx, 1e-2);
            snprintf(name, sizeof name, "matmul_bwd dw n=%lld k=%lld m=%lld", (long long)n, (long long)k, (long long)m);
            cmp(name, &dw, 1e-4);   /* fp32 output of bf16 inputs: only summation order differs */
            if (!acc) {   /* in place: dx written over x, as the plan does for a rebuilt input */
                void *xi = gpu_copy(&x), *dwi = gpu_copy(&dw);
                G->matmul_bwd(xi, 0, dwi, dout.g, xi, w.g, n, k, m);
                snprintf(name, sizeof name, "matmul_bwd in place dx n=%lld k=%lld m=%lld", (long long)n, (long long)k,
                         (long long)m);
                same_device_bits(name, xi, dx.g, &dx);
                snprintf(name, sizeof name, "matmul_bwd in place dw n=%lld k=%lld m=%lld", (long long)n, (long long)k,
                         (long long)m);
                same_device_bits(name, dwi, dw.g, &dw);
                G->free(xi);
                G->free(dwi);
            }
            drop(&x); drop(&w); drop(&out); drop(&dout); drop(&dw); drop(&dx);
        }
}
END_TEST

/* o_proj on the packed attention output: x and dx in `blocks` column blocks
 * [n][k/blocks], the weight read (and dw written) at leading dimension k. */
START_TEST(t_matmul_blocked) {
    /* n, k, m, blocks: block widths 64, 12 (blocks only 8-byte aligned), 64, 64, one block of 96, and 8
     * blocks of 8 */
    const int64_t sh[][4] = {{33, 512, 256, 8}, {7, 48, 17, 4}, {257, 256, 96, 4}, {100, 128, 1000, 2},
                             {64, 96, 64, 1}, {3, 64, 40, 8}};
    for (int a = 0; a < 6; a++)
        for (int acc = 0; acc < 2; acc++) {
            int64_t n = sh[a][0], k = sh[a][1], m = sh[a][2];
            int blocks = (int)sh[a][3];
            char name[128];
            buf_t x = mk((size_t)(n * k), DT_BF16, 1.0, 0), w = mk((size_t)(m * k), DT_BF16, 0.1, 0);
            buf_t out = mk_out((size_t)(n * m), DT_BF16);
            G->matmul_blocked_fwd(out.g, x.g, w.g, n, k, m, blocks);
            C->matmul_blocked_fwd(out.c, x.c, w.c, n, k, m, blocks);
            snprintf(name, sizeof name, "matmul_blocked_fwd n=%lld k=%lld m=%lld blocks=%d", (long long)n,
                     (long long)k, (long long)m, blocks);
            if (!acc) cmp(name, &out, 1e-2);
            buf_t dout = mk((size_t)(n * m), DT_BF16, 1.0, 0), dw = mk((size_t)(m * k), DT_F32, 1.0, 0);
            buf_t dx = acc ? mk((size_t)(n * k), DT_BF16, 1.0, 0) : mk_out((size_t)(n * k), DT_BF16);
            G->matmul_blocked_bwd(dx.g, acc, dw.g, dout.g, x.g, w.g, n, k, m, blocks);
            C->matmul_blocked_bwd(dx.c, acc, dw.c, dout.c, x.c, w.c, n, k, m, blocks);
            snprintf(name, sizeof name, "matmul_blocked_bwd dx n=%lld k=%lld m=%lld blocks=%d acc=%d", (long long)n,
                     (long long)k, (long long)m, blocks, acc);
            cmp(name, &dx, 1e-2);
            snprintf(name, sizeof name, "matmul_blocked_bwd dw n=%lld k=%lld m=%lld blocks=%d", (long long)n,
                     (long long)k, (long long)m, blocks);
            cmp(name, &dw, 1e-4);   /* fp32 output of bf16 inputs: only summation order differs */
            drop(&x); drop(&w); drop(&out); drop(&dout); drop(&dw); drop(&dx);
        }
}
END_TEST

/* Attention in pieces: the matmul on windows. W [M, K] with the piece's
 * [m, k] window at (r0, c0) (rows of W_qkv, columns of W_o), out / dout
 * [n, ldo] with the window at column o0, x dense or packed; forward with and
 * without accumulation, backward into the window of dW. Everything outside
 * the windows must stay as it was, on both sides. */
static void *at_elems(void *base, dtype_t dt, int64_t i) { return (char *)base + (size_t)i * dtype_size(dt); }
START_TEST(t_matmul_slice) {
    /* n, k, m, blocks, M, K, r0, c0, ldo, o0: an o_proj piece (columns, packed), qkv parts (rows) */
    const int64_t sh[][10] = {{33, 256, 512, 4, 512, 1024, 0, 256, 512, 0},
                              {257, 128, 64, 1, 384, 128, 128, 0, 192, 64},
                              {100, 512, 256, 8, 256, 2048, 0, 1024, 256, 0},
                              {7, 64, 96, 2, 192, 128, 96, 64, 160, 64}};
    for (int a = 0; a < 4; a++)
        for (int acc = 0; acc < 2; acc++) {
            const int64_t *c = sh[a];
            int64_t n = c[0], k = c[1], m = c[2], M = c[4], K = c[5], r0 = c[6], c0 = c[7], ldo = c[8], o0 = c[9];
            int blocks = (int)c[3];
            char name[160];
            buf_t x = mk((size_t)(n * k), DT_BF16, 1.0, 0), W = mk((size_t)(M * K), DT_BF16, 0.1, 0);
            buf_t out = mk((size_t)(n * ldo), DT_BF16, 1.0, 0);
            int64_t wo = r0 * K + c0;
            G->matmul_slice_fwd(at_elems(out.g, DT_BF16, o0), ldo, acc, x.g, at_elems(W.g, DT_BF16, wo), K, n, k, m,
                                blocks);
            C->matmul_slice_fwd(out.c + o0, ldo, acc, x.c, W.c + wo, K, n, k, m, blocks);
            snprintf(name, sizeof name, "matmul_slice_fwd n=%lld k=%lld m=%lld blocks=%d acc=%d", (long long)n,
                     (long long)k, (long long)m, blocks, acc);
            cmp(name, &out, 1e-2);
            buf_t dout = mk((size_t)(n * ldo), DT_BF16, 1.0, 0), dW = mk((size_t)(M * K), DT_F32, 1.0, 0);
            buf_t dx = acc ? mk((size_t)(n * k), DT_BF16, 1.0, 0) : mk_out((size_t)(n * k), DT_BF16);
            G->matmul_slice_bwd(dx.g, acc, at_elems(dW.g, DT_F32, wo), K, at_elems(dout.g, DT_BF16, o0), ldo, x.g,
                                at_elems(W.g, DT_BF16, wo), n, k, m, blocks);
            C->matmul_slice_bwd(dx.c, acc, dW.c + wo, K, dout.c + o0, ldo, x.c, W.c + wo, n, k, m, blocks);
            snprintf(name, sizeof name, "matmul_slice_bwd dx n=%lld k=%lld m=%lld blocks=%d acc=%d", (long long)n,
                     (long long)k, (long long)m, blocks, acc);
            cmp(name, &dx, 1e-2);
            snprintf(name, sizeof name, "matmul_slice_bwd dw n=%lld k=%lld m=%lld blocks=%d", (long long)n,
                     (long long)k, (long long)m, blocks);
            cmp(name, &dW, 1e-4);
            drop(&x); drop(&W); drop(&out); drop(&dout); drop(&dW); drop(&dx);
        }
}
END_TEST

/* Plain (P = 1) and packed q/k/v (the Ulysses layout for P ranks; k and v
 * stay plain where P exceeds their heads, as with KV replication). */
START_TEST(t_rope) {
    const int64_t hh[][2] = {{4, 1}, {8, 8}, {8, 2}};
    const int64_t hds[] = {16, 64, 128};
    const int Ps[] = {1, 2, 4};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 1; c < 4; c++)
                for (int pi = 0; pi < 3; pi++) {
                    int64_t n = NS[c], hq = hh[a][0], hkv = hh[a][1], hd = hds[b], w = (hq + 2 * hkv) * hd;
                    int P = Ps[pi], pq = P, pkv = hkv % P == 0 ? P : 1;
                    if (P > 1 && b != 1) continue;   /* packed layouts at one head dim */
                    int32_t *pos = malloc((size_t)n * 4);
                    for (int64_t i = 0; i < n; i++) pos[i] = (int32_t)(trng_next(&rng) % 2000000u);
                    double *invf = malloc((size_t)(hd / 2) * sizeof(double));
                    for (int64_t i = 0; i < hd / 2; i++) invf[i] = pow(500000.0, -2.0 * (double)i / (double)hd);
                    int32_t *pg = ints_g(pos, (size_t)n);
                    double *ig = G->alloc((size_t)(hd / 2) * sizeof(double), "inv_freq");
                    G->to_device(ig, invf, (size_t)(hd / 2) * sizeof(double));
                    buf_t qkv = mk((size_t)(n * w), DT_BF16, 1.0, 0);
                    buf_t q = mk_out((size_t)(n * hq * hd), DT_BF16), k = mk_out((size_t)(n * hkv * hd), DT_BF16),
                          v = mk_out((size_t)(n * hkv * hd), DT_BF16);
                    G->rope_split_fwd(q.g, k.g, v.g, qkv.g, pg, ig, n, hq, hkv, hd, pq, pkv);
                    C->rope_split_fwd(q.c, k.c, v.c, qkv.c, pos, invf, n, hq, hkv, hd, pq, pkv);
                    char name[128];
                    snprintf(name, sizeof name, "rope_split_fwd q hq=%lld hkv=%lld hd=%lld P=%d/%d", (long long)hq,
                             (long long)hkv, (long long)hd, pq, pkv);
                    cmp(name, &q, 1e-2);
                    snprintf(name, sizeof name, "rope_split_fwd k hq=%lld hkv=%lld hd=%lld P=%d/%d", (long long)hq,
                             (long long)hkv, (long long)hd, pq, pkv);
                    cmp(name, &k, 1e-2);
                    snprintf(name, sizeof name, "rope_split_fwd v P=%d", pkv);
                    cmp(name, &v, 1e-6);
                    buf_t dq = mk((size_t)(n * hq * hd), DT_BF16, 1.0, 0);
                    buf_t dk = mk((size_t)(n * hkv * hd), DT_BF16, 1.0, 0), dv = mk((size_t)(n * hkv * hd), DT_BF16, 1.0, 0);
                    buf_t dqkv = mk_out((size_t)(n * w), DT_BF16);
                    G->rope_split_bwd(dqkv.g, dq.g, dk.g, dv.g, pg, ig, n, hq, hkv, hd, pq, pkv);
                    C->rope_split_bwd(dqkv.c, dq.c, dk.c, dv.c, pos, invf, n, hq, hkv, hd, pq, pkv);
                    snprintf(name, sizeof name, "rope_split_bwd hq=%lld hkv=%lld hd=%lld P=%d/%d", (long long)hq,
                             (long long)hkv, (long long)hd, pq, pkv);
                    cmp(name, &dqkv, 1e-2);
                    drop(&qkv); drop(&q); drop(&k); drop(&v); drop(&dq); drop(&dk); drop(&dv); drop(&dqkv);
                    G->free(pg); G->free(ig);
                    free(pos); free(invf);
                }
}
END_TEST

/* Private to the CUDA backend (cuda/attention_cudnn.cu): whether cuDNN builds
 * the fused graphs for a shape, so the test can skip the ones it cannot take. */
int cuda_attention_cudnn_supported(int64_t s, int64_t hq, int64_t hkv, int64_t hd, char *why, size_t whylen);

int cuda_attention_cudnn_describe(int bwd, int64_t s, int64_t hq, int64_t hkv, int64_t hd, char *buf, size_t len);

/* the implementation and cuDNN's graph variant are chosen at init */
static void select_attention_variant(const char *impl, const char *graph) {
    char err[512];
    setenv("ASP_ATTENTION", impl, 1);
    setenv("ASP_CUDNN_GRAPH", graph, 1);
    G->shutdown();
    ck_assert_msg(G->init(0, err, sizeof err) == 0, "cuda init: %s", err);
}

static void select_attention(const char *impl) { select_attention_variant(impl, "current"); }

/* The cached cuDNN plans of a shape say which variant built them and that
 * a plan was chosen (for `tuned`: after timing its candidates). */
static void check_plans(const char *graph, int64_t s, int64_t hq, int64_t hkv, int64_t hd) {
    for (int bwd = 0; bwd < 2; bwd++) {
        char desc[4096];
        ck_assert_msg(cuda_attention_cudnn_describe(bwd, s, hq, hkv, hd, desc, sizeof desc) == 0, "%s", desc);
        ck_assert_msg(strstr(desc, graph) && strstr(desc, "runs engine"), "plan not chosen as %s: %s", graph, desc);
        if (s == 4096) printf("  %s\n", desc);
    }
}

static void attention_cases_variant(const char *impl, const char *graph) {
    select_attention_variant(impl, graph);
    int cudnn = strcmp(impl, "cudnn") == 0;
    char label[64];   /* "cudnn/tuned" names the variant in every line */
    snprintf(label, sizeof label, "%s%s%s", impl, cudnn ? "/" : "", cudnn ? graph : "");
    const int64_t hh[][2] = {{4, 4}, {8, 2}, {8, 1}};
    const int64_t hds[] = {16, 64, 128};
    const int64_t ss[] = {1, 7, 100};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 5; c++) {
                int64_t hq = hh[a][0], hkv = hh[a][1], hd = hds[b];
                int64_t s = c < 3 ? ss[c] : c == 3 ? 1000 : 4096;
                /* long cases: few, to keep the CPU reference's time small */
                if (c == 3 && !(a == 2 && hd == 64)) continue;
                if (c == 4 && !(cudnn && a == 1 && hd == 64)) continue;
                if (cudnn) {
                    char why[1400];
                    if (!cuda_attention_cudnn_supported(s, hq, hkv, hd, why, sizeof why)) {
                        printf("  attention[%s] s=%lld hq=%lld hkv=%lld hd=%lld skipped: %s\n", label, (long long)s,
                               (long long)hq, (long long)hkv, (long long)hd, why);
                        fflush(stdout);
                        continue;
                    }
                }
                float scale = 1.0f / sqrtf((float)hd);
                buf_t q = mk((size_t)(s * hq * hd), DT_BF16, 1.0, 0), k = mk((size_t)(s * hkv * hd), DT_BF16, 1.0, 0),
                      v = mk((size_t)(s * hkv * hd), DT_BF16, 1.0, 0);
                buf_t out = mk_out((size_t)(s * hq * hd), DT_BF16), lse = mk_out((size_t)(hq * s), DT_F32);
                G->attention_fwd(out.g, lse.g, q.g, k.g, v.g, s, hq, hkv, hd, scale, NULL);
                C->attention_fwd(out.c, lse.c, q.c, k.c, v.c, s, hq, hkv, hd, scale, NULL);
                char name[160];
                snprintf(name, sizeof name, "attention_fwd[%s] out s=%lld hq=%lld hkv=%lld hd=%lld", label,
                         (long long)s, (long long)hq, (long long)hkv, (long long)hd);
                cmp(name, &out, 1e-2);
                snprintf(name, sizeof name, "attention_fwd[%s] lse s=%lld hq=%lld hkv=%lld hd=%lld", label,
                         (long long)s, (long long)hq, (long long)hkv, (long long)hd);
                cmp(name, &lse, 1e-3);
                /* both backwards get the same out and lse: the reference's, out rounded to bf16 */
                for (size_t i = 0; i < out.n; i++) out.c[i] = bf16_round(out.c[i]);
                G->from_f32(out.g, DT_BF16, out.c, out.n);
                G->from_f32(lse.g, DT_F32, lse.c, lse.n);
                buf_t dout = mk((size_t)(s * hq * hd), DT_BF16, 1.0, 0);
                buf_t dq = mk_out(q.n, DT_BF16), dk = mk_out(k.n, DT_BF16), dv = mk_out(v.n, DT_BF16);
                G->attention_bwd(dq.g, dk.g, dv.g, dout.g, q.g, k.g, v.g, out.g, lse.g, s, hq, hkv, hd, scale, NULL);
                C->attention_bwd(dq.c, dk.c, dv.c, dout.c, q.c, k.c, v.c, out.c, lse.c, s, hq, hkv, hd, scale, NULL);
                const char *nm[3] = {"dq", "dk", "dv"};
                buf_t *gb[3] = {&dq, &dk, &dv};
                if (cudnn) check_plans(graph, s, hq, hkv, hd);
                for (int i = 0; i < 3; i++) {
                    snprintf(name, sizeof name, "attention_bwd[%s] %s s=%lld hq=%lld hkv=%lld hd=%lld", label, nm[i],
                             (long long)s, (long long)hq, (long long)hkv, (long long)hd);
                    /* one key: the softmax has zero gradient, so dq and dk are exactly 0 */
                    if (s == 1 && i < 2) cmp_zero(name, gb[i], 1e-3);
                    else cmp(name, gb[i], 2e-2);
                }
                drop(&q); drop(&k); drop(&v); drop(&out); drop(&lse); drop(&dout); drop(&dq); drop(&dk); drop(&dv);
            }
}

START_TEST(t_attention_simple) { attention_cases_variant("simple", "current"); }
END_TEST

START_TEST(t_attention_cudnn) { attention_cases_variant("cudnn", "current"); }
END_TEST

/* the same cases with every engine configuration timed and the fastest kept */
START_TEST(t_attention_cudnn_tuned) {
    attention_cases_variant("cudnn", "tuned");
    select_attention("cudnn");
}
END_TEST

/* Packed documents: the CUDA attention (simple kernels, cuDNN's ragged
 * graphs) against the CPU reference with the same documents. With g_att_scr
 * set, attention runs in that scratch alone, as the executor hands over the
 * plan's attention scratch, and the other ops in g_op_scr. */
static void *g_att_scr, *g_op_scr;
static size_t g_att_bytes, g_op_bytes;
static void att_enter(void) {
    if (g_att_scr) G->use_scratch(g_att_scr, g_att_bytes);
}
static void att_leave(void) {
    if (g_att_scr) G->use_scratch(g_op_scr, g_op_bytes);
}

static void attention_docs_case(const char *impl, const int64_t *lens, int n, int64_t hq, int64_t hkv, int64_t hd) {
    int64_t s = 0;
    int32_t *cu = malloc((size_t)(n + 1) * sizeof(int32_t));
    cu[0] = 0;
    for (int i = 0; i < n; i++) cu[i + 1] = (int32_t)(s += lens[i]);
    int32_t *start = malloc((size_t)s * sizeof(int32_t));
    int64_t max_len = 0;
    for (int i = 0; i < n; i++) {
        for (int32_t t = cu[i]; t < cu[i + 1]; t++) start[t] = cu[i];
        if (cu[i + 1] - cu[i] > max_len) max_len = cu[i + 1] - cu[i];
    }
    size_t cub = (size_t)(n + 1) * sizeof(int32_t);
    int32_t *cu_g = G->alloc(cub, "test document starts"), *start_g = G->alloc((size_t)s * 4, "test starts");
    G->to_device(cu_g, cu, cub);
    G->to_device(start_g, start, (size_t)s * 4);
    attn_docs_t dc = {n, max_len, cu, cu, start}, dg = {n, max_len, cu, cu_g, start_g};
    float scale = 1.0f / sqrtf((float)hd);
    buf_t q = mk((size_t)(s * hq * hd), DT_BF16, 1.0, 0), k = mk((size_t)(s * hkv * hd), DT_BF16, 1.0, 0),
          v = mk((size_t)(s * hkv * hd), DT_BF16, 1.0, 0);
    buf_t out = mk_out((size_t)(s * hq * hd), DT_BF16), lse = mk_out((size_t)(hq * s), DT_F32);
    att_enter();
    G->attention_fwd(out.g, lse.g, q.g, k.g, v.g, s, hq, hkv, hd, scale, &dg);
    att_leave();
    C->attention_fwd(out.c, lse.c, q.c, k.c, v.c, s, hq, hkv, hd, scale, &dc);
    char name[160];
    snprintf(name, sizeof name, "attention_fwd[%s, %d documents] out s=%lld hq=%lld hkv=%lld hd=%lld", impl, n,
             (long long)s, (long long)hq, (long long)hkv, (long long)hd);
    cmp(name, &out, 1e-2);
    snprintf(name, sizeof name, "attention_fwd[%s, %d documents] lse s=%lld", impl, n, (long long)s);
    cmp(name, &lse, 1e-3);
    for (size_t i = 0; i < out.n; i++) out.c[i] = bf16_round(out.c[i]);
    G->from_f32(out.g, DT_BF16, out.c, out.n);
    G->from_f32(lse.g, DT_F32, lse.c, lse.n);
    buf_t dout = mk((size_t)(s * hq * hd), DT_BF16, 1.0, 0);
    buf_t dq = mk_out(q.n, DT_BF16), dk = mk_out(k.n, DT_BF16), dv = mk_out(v.n, DT_BF16);
    att_enter();
    G->attention_bwd(dq.g, dk.g, dv.g, dout.g, q.g, k.g, v.g, out.g, lse.g, s, hq, hkv, hd, scale, &dg);
    att_leave();
    C->attention_bwd(dq.c, dk.c, dv.c, dout.c, q.c, k.c, v.c, out.c, lse.c, s, hq, hkv, hd, scale, &dc);
    const char *nm[3] = {"dq", "dk", "dv"};
    buf_t *gb[3] = {&dq, &dk, &dv};
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "attention_bwd[%s, %d documents] %s s=%lld hq=%lld hkv=%lld hd=%lld", impl, n,
                 nm[i], (long long)s, (long long)hq, (long long)hkv, (long long)hd);
        cmp(name, gb[i], 2e-2);
    }
    drop(&q); drop(&k); drop(&v); drop(&out); drop(&lse); drop(&dout); drop(&dq); drop(&dk); drop(&dv);
    G->free(cu_g);
    G->free(start_g);
    free(start);
    free(cu);
}

/* Lengths that are not multiples of any tile, one-row documents, a document
 * count that is not a power of two; at 8192 rows documents of 500 to 2500
 * rows; and 41 documents where cuDNN's ragged graphs take them in several
 * groups (short ones, then a long one, then short ones again). */
static int many_docs(int64_t *lens) {
    int n = 0;
    for (int i = 0; i < 20; i++) lens[n++] = 9 + (i * 7) % 23;
    lens[n++] = 300;
    for (int i = 0; i < 20; i++) lens[n++] = 1 + (i * 11) % 31;
    return n;
}

static void attention_docs_cases(const char *impl) {
    select_attention(impl);
    const int64_t lens_a[] = {1, 7, 100, 33, 250, 1};
    const int64_t lens_b[] = {517, 2500, 1203, 64, 1999, 811, 998};   /* 8192 rows */
    int64_t lens_c[64];
    int nc = many_docs(lens_c);
    const int64_t hh[][3] = {{8, 2, 64}, {4, 4, 128}, {8, 1, 64}};
    for (int a = 0; a < 3; a++) attention_docs_case(impl, lens_a, 6, hh[a][0], hh[a][1], hh[a][2]);
    attention_docs_case(impl, lens_b, 7, 8, 2, 64);   /* the CPU reference's time: one head shape */
    attention_docs_case(impl, lens_c, nc, 8, 2, 64);
}

/* With the scratch fixed at what the plan reserves for packed documents (as
 * the executor hands it over), the ragged graphs run every sample: one
 * document just short of the whole sequence (the largest group), many short
 * ones (groups of many), and a mix. */
START_TEST(t_attention_docs_planned_scratch) {
    select_attention("cudnn");
    const int64_t hq = 8, hkv = 2, hd = 64, T = 1500;
    op_shapes_t sh;
    memset(&sh, 0, sizeof sh);
    sh.rows = sh.attn_rows = T;
    sh.hq = hq;
    sh.hkv = hkv;
    sh.hd = hd;
    sh.documents = 1;
    g_att_bytes = G->attention_scratch_bytes(&sh);
    g_att_scr = G->alloc(g_att_bytes, "test planned attention scratch");
    g_op_bytes = (size_t)64 << 20;
    g_op_scr = G->alloc(g_op_bytes, "test op scratch");
    G->set_scratch(g_op_scr, g_op_bytes);
    const int64_t one[] = {T - 3, 3}, mix[] = {700, 5, 5, 90, 600, 100};
    int64_t many[T];
    int nm = 0;
    for (int64_t t = 0; t < T; t += 10) many[nm++] = 10;
    attention_docs_case("cudnn", one, 2, hq, hkv, hd);
    attention_docs_case("cudnn", mix, 6, hq, hkv, hd);
    attention_docs_case("cudnn", many, nm, hq, hkv, hd);
    att_leave();
    G->free(g_att_scr);
    g_att_scr = NULL;
}
END_TEST

START_TEST(t_attention_docs_simple) { attention_docs_cases("simple"); }
END_TEST

START_TEST(t_attention_docs_cudnn) { attention_docs_cases("cudnn"); }
END_TEST

/* Host copy of n elements of a device tensor, as fp32. */
static float *fetch(const void *g, dtype_t dt, size_t n) {
    float *h = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(h);
    G->to_f32(h, g, dt, n);
    return h;
}

static void same_within(const char *what, const float *got, const float *want, size_t n, double tol) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(got[i]) || !isfinite(want[i])) bad++;
    double e = rel_err(got, want, n);
    printf("  %-58s n=%-8zu rel_err=%.3e%s\n", what, n, e, bad ? " NON-FINITE" : "");
    fflush(stdout);
    ck_assert_msg(bad == 0, "%s: %zu non-finite values", what, bad);
    ck_assert_msg(e <= tol, "%s: rel_err %.3e > %.1e", what, e, tol);
}

/* cuDNN against the simple kernels at a length the CPU reference is too slow
 * for: same inputs, both given the simple forward's out and lse for the backward. */
START_TEST(t_attention_cudnn_vs_simple) {
    const int64_t s = 8192, hq = 32, hkv = 8, hd = 128;
    const size_t nq = (size_t)(s * hq * hd), nk = (size_t)(s * hkv * hd), nl = (size_t)(hq * s);
    float scale = 1.0f / sqrtf((float)hd);
    select_attention("cudnn");
    char why[1400];
    if (!cuda_attention_cudnn_supported(s, hq, hkv, hd, why, sizeof why)) {
        printf("  attention[cudnn vs simple] s=%lld skipped: %s\n", (long long)s, why);
        return;
    }
    float *ref[5], *got[5];
    const char *nm[5] = {"out", "lse", "dq", "dk", "dv"};
    const size_t ns[5] = {nq, nl, nq, nk, nk};
    for (int pass = 0; pass < 2; pass++) {
        float **res = pass ? got : ref;
        select_attention(pass ? "cudnn" : "simple");
        trng_t saved = rng;   /* the same inputs in both passes */
        buf_t q = mk(nq, DT_BF16, 1.0, 0), k = mk(nk, DT_BF16, 1.0, 0), v = mk(nk, DT_BF16, 1.0, 0);
        buf_t dout = mk(nq, DT_BF16, 1.0, 0);
        rng = saved;
        void *out = G->alloc(nq * 2, "out"), *lse = G->alloc(nl * 4, "lse");
        void *dq = G->alloc(nq * 2, "dq"), *dk = G->alloc(nk * 2, "dk"), *dv = G->alloc(nk * 2, "dv");
        G->attention_fwd(out, lse, q.g, k.g, v.g, s, hq, hkv, hd, scale, NULL);
        res[0] = fetch(out, DT_BF16, nq);
        res[1] = fetch(lse, DT_F32, nl);
        /* the backward of both passes sees the simple forward's out and lse */
        G->from_f32(out, DT_BF16, ref[0], nq);
        G->from_f32(lse, DT_F32, ref[1], nl);
        G->attention_bwd(dq, dk, dv, dout.g, q.g, k.g, v.g, out, lse, s, hq, hkv, hd, scale, NULL);
        res[2] = fetch(dq, DT_BF16, nq);
        res[3] = fetch(dk, DT_BF16, nk);
        res[4] = fetch(dv, DT_BF16, nk);
        G->free(out); G->free(lse); G->free(dq); G->free(dk); G->free(dv);
        drop(&q); drop(&k); drop(&v); drop(&dout);
    }
    char name[160];
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof name, "attention cudnn vs simple %s s=%lld hq=%lld hkv=%lld hd=%lld", nm[i],
                 (long long)s, (long long)hq, (long long)hkv, (long long)hd);
        same_within(name, got[i], ref[i], ns[i], i == 1 ? 1e-3 : i < 1 ? 1e-2 : 2e-2);
        free(got[i]);
        free(ref[i]);
    }
}
END_TEST


START_TEST(t_swiglu) {
    const int64_t fs[] = {8, 33, 64};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 3; b++) {
            int64_t n = NS[a], f = fs[b];
            buf_t gu = mk((size_t)(n * 2 * f), DT_BF16, 2.0, 0), out = mk_out((size_t)(n * f), DT_BF16);
            G->swiglu_fwd(out.g, gu.g, n, f);
            C->swiglu_fwd(out.c, gu.c, n, f);
            char name[128];
            snprintf(name, sizeof name, "swiglu_fwd f=%lld", (long long)f);
            cmp(name, &out, 1e-2);
            buf_t dout = mk((size_t)(n * f), DT_BF16, 1.0, 0), dgu = mk_out(gu.n, DT_BF16);
            G->swiglu_bwd(dgu.g, dout.g, gu.g, n, f);
            C->swiglu_bwd(dgu.c, dout.c, gu.c, n, f);
            snprintf(name, sizeof name, "swiglu_bwd f=%lld", (long long)f);
            cmp(name, &dgu, 1e-2);
            void *gi = gpu_copy(&gu);
            G->swiglu_bwd(gi, dout.g, gi, n, f);
            snprintf(name, sizeof name, "swiglu_bwd in place f=%lld", (long long)f);
            same_device_bits(name, gi, dgu.g, &dgu);
            G->free(gi);
            drop(&gu); drop(&out); drop(&dout); drop(&dgu);
        }
}
END_TEST

START_TEST(t_add_accumulate) {
    const size_t cs[] = {1, 7, 33, 257, 1000, 4099};
    for (int a = 0; a < 6; a++)
        for (int acc = 0; acc < 2; acc++) {
            size_t n = cs[a];
            buf_t x = mk(n, DT_BF16, 1.0, 0), y = mk(n, DT_BF16, 1.0, 0), out = mk_out(n, DT_BF16);
            G->add_fwd(out.g, x.g, y.g, n);
            C->add_fwd(out.c, x.c, y.c, n);
            if (!acc) cmp("add_fwd", &out, 1e-2);
            buf_t dst = acc ? mk(n, DT_BF16, 1.0, 0) : mk_out(n, DT_BF16);
            G->accumulate(dst.g, x.g, n, acc);
            C->accumulate(dst.c, x.c, n, acc);
            cmp(acc ? "accumulate acc=1" : "accumulate acc=0", &dst, 1e-2);
            drop(&x); drop(&y); drop(&out); drop(&dst);
        }
}
END_TEST

static void xent_case(int64_t n, int64_t vocab, buf_t *logits, buf_t *loss, int32_t **tok_out, int32_t **tg_out) {
    int32_t *tgt = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) tgt[i] = (i % 5 == 3) ? -1 : (int32_t)(trng_next(&rng) % (uint64_t)vocab);
    *tok_out = tgt;
    *tg_out = ints_g(tgt, (size_t)n);
    *logits = mk((size_t)(n * vocab), DT_BF16, 3.0, 0);
    *loss = mk(1, DT_F32, 1.0, 0);
}

START_TEST(t_xent) {
    const int64_t vs[] = {10, 1000, 32003};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 3; b++) {
            int64_t n = NS[a], vocab = vs[b];
            if (n == 257 && vocab == 32003) continue;
            buf_t logits, loss;
            int32_t *tgt, *tg;
            xent_case(n, vocab, &logits, &loss, &tgt, &tg);
            float gs = 1.0f / (float)n;
            G->xent_fwd_bwd(logits.g, loss.g, tg, n, vocab, gs);
            C->xent_fwd_bwd(logits.c, loss.c, tgt, n, vocab, gs);
            char name[128];
            snprintf(name, sizeof name, "xent grad vocab=%lld", (long long)vocab);
            cmp(name, &logits, 1e-2);
            snprintf(name, sizeof name, "xent loss_sum n=%lld vocab=%lld", (long long)n, (long long)vocab);
            cmp(name, &loss, 1e-4);
            drop(&logits); drop(&loss);
            G->free(tg);
            free(tgt);
        }
}
END_TEST

START_TEST(t_heads) {
    const int hp[][2] = {{8, 2}, {8, 8}, {2, 8}, {1, 4}, {4, 4}, {32, 4}};
    const int64_t hds[] = {16, 64};
    for (int a = 0; a < 6; a++)
        for (int b = 0; b < 2; b++)
            for (int acc = 0; acc < 2; acc++) {
                int64_t heads = hp[a][0], hd = hds[b], n = 7;
                int P = hp[a][1];
                int64_t hpr = heads >= P ? heads / P : 1;
                buf_t src = mk((size_t)(n * heads * hd), DT_BF16, 1.0, 0);
                buf_t packed = mk_out((size_t)P * (size_t)(n * hpr * hd), DT_BF16);
                G->heads_pack(packed.g, src.g, n, heads, hd, P);
                C->heads_pack(packed.c, src.c, n, heads, hd, P);
                char name[128];
                snprintf(name, sizeof name, "heads_pack heads=%lld P=%d hd=%lld", (long long)heads, P, (long long)hd);
                if (!acc) cmp(name, &packed, 1e-6);
                buf_t grad = mk(packed.n, DT_BF16, 1.0, 0);
                buf_t dst = acc ? mk(src.n, DT_BF16, 1.0, 0) : mk_out(src.n, DT_BF16);
                G->heads_unpack(dst.g, grad.g, n, heads, hd, P, acc);
                C->heads_unpack(dst.c, grad.c, n, heads, hd, P, acc);
                snprintf(name, sizeof name, "heads_unpack heads=%lld P=%d hd=%lld acc=%d", (long long)heads, P,
                         (long long)hd, acc);
                cmp(name, &dst, 1e-2);
                drop(&src); drop(&packed); drop(&grad); drop(&dst);
            }
}
END_TEST

START_TEST(t_optimizer) {
    const size_t ns[] = {1, 7, 33, 1000, 100003};
    for (int a = 0; a < 5; a++)
        for (int clip = 0; clip < 2; clip++) {
            size_t n = ns[a];
            buf_t g = mk(n, DT_F32, 1.0, 0), ss = mk(1, DT_F32, 1.0, 1);
            G->grad_sumsq(ss.g, g.g, n);
            C->grad_sumsq(ss.c, g.c, n);
            cmp("grad_sumsq", &ss, 1e-5);
            buf_t master = mk(n, DT_F32, 1.0, 0), m = mk(n, DT_F32, 0.1, 0), v = mk(n, DT_F32, 0.01, 1);
            buf_t param = mk_out(n, DT_BF16);
            /* both steps read the reference's norm so only the update is compared */
            G->from_f32(ss.g, DT_F32, ss.c, 1);
            float max_norm = clip ? 0.5f : 0.0f;
            G->adamw(master.g, param.g, m.g, v.g, g.g, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3, ss.g, max_norm);
            C->adamw(master.c, param.c, m.c, v.c, g.c, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 3, ss.c, max_norm);
            cmp(clip ? "adamw master (clipped)" : "adamw master", &master, 1e-6);
            cmp("adamw m", &m, 1e-6);
            cmp("adamw v", &v, 1e-6);
            cmp("adamw param", &param, 1e-2);
            drop(&g); drop(&ss); drop(&master); drop(&m); drop(&v); drop(&param);
        }
}
END_TEST

/* Two runs of the same op on the same inputs: bitwise-equal results. */
static void same_bits(const char *what, const void *a, const void *b, size_t bytes) {
    int eq = memcmp(a, b, bytes) == 0;
    printf("  %-58s bitwise %s\n", what, eq ? "equal" : "DIFFERENT");
    ck_assert_msg(eq, "%s: two runs differ", what);
}

START_TEST(t_determinism) {
    int64_t n = 4099, d = 256, vocab = 50;
    int32_t *tok = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) tok[i] = (int32_t)(trng_next(&rng) % (uint64_t)vocab);
    int32_t *tg = ints_g(tok, (size_t)n);
    buf_t dout = mk((size_t)(n * d), DT_BF16, 1.0, 0), x = mk((size_t)(n * d), DT_BF16, 1.0, 0),
          w = mk((size_t)d, DT_BF16, 1.0, 0);
    size_t wb = (size_t)(vocab * d) * 4;
    float *r1 = malloc(wb), *r2 = malloc(wb);
    void *dw = G->alloc(wb, "dwte");
    for (int run = 0; run < 2; run++) {
        G->zero(dw, wb);
        G->embed_bwd(dw, tg, dout.g, n, d, vocab);
        G->to_host(run ? r2 : r1, dw, wb);
    }
    same_bits("embed_bwd dwte", r1, r2, wb);
    for (int run = 0; run < 2; run++) {
        G->zero(dw, (size_t)d * 4);
        G->rmsnorm_bwd(NULL, 0, dw, dout.g, x.g, w.g, n, d, 1e-5f);
        G->to_host(run ? r2 : r1, dw, (size_t)d * 4);
    }
    same_bits("rmsnorm_bwd dw", r1, r2, (size_t)d * 4);
    buf_t dh = mk((size_t)(n * d), DT_BF16, 1.0, 0);
    for (int run = 0; run < 2; run++) {
        G->zero(dw, (size_t)d * 4);
        G->add_rmsnorm_bwd(NULL, 0, NULL, 0, dw, dh.g, dout.g, x.g, w.g, n, d, 1e-5f);
        G->to_host(run ? r2 : r1, dw, (size_t)d * 4);
    }
    same_bits("add_rmsnorm_bwd dw", r1, r2, (size_t)d * 4);
    drop(&dh);
    int64_t xv = 1000, xn = 257;
    trng_t logits_rng = {777};
    for (int run = 0; run < 2; run++) {
        buf_t logits = mk_out((size_t)(xn * xv), DT_BF16);
        trng_t r = logits_rng;   /* the same logits in both runs */
        trng_fill(&r, logits.h, logits.n, 3.0);
        G->from_f32(logits.g, DT_BF16, logits.h, logits.n);
        G->zero(dw, 4);
        G->xent_fwd_bwd(logits.g, dw, tg, xn, xv, 1.0f);
        G->to_host(run ? r2 : r1, dw, 4);
        drop(&logits);
    }
    same_bits("xent loss_sum", r1, r2, 4);
    G->free(dw);
    G->free(tg);
    drop(&dout); drop(&x); drop(&w);
    free(r1); free(r2); free(tok);
}
END_TEST

/* Copies beside compute: host -> device on the copy stream, an op that
 * reads the result after copy_wait, device -> host after that op, the
 * source overwritten only after waiting for it; the bytes come back whole,
 * and copy_times counts them. */
START_TEST(t_copy_stream) {
    const size_t n = (size_t)64 << 20;
    uint8_t *h1 = G->host_alloc(n, "copy test source"), *h2 = G->host_alloc(n, "copy test result");
    ck_assert_ptr_nonnull(h1);
    ck_assert_ptr_nonnull(h2);
    for (size_t i = 0; i < n; i++) h1[i] = (uint8_t)(i * 2654435761u >> 13);
    memset(h2, 0, n);
    void *d1 = G->alloc(n, "copy test d1"), *d2 = G->alloc(n, "copy test d2");
    double bytes, busy, exposed;
    G->synchronize();
    G->copy_times(&bytes, &busy, &exposed);   /* forget earlier copies */
    G->copy_async(d1, h1, n, 0, 3);
    G->copy_wait(3);
    G->copy(d2, d1, n);                        /* reads d1 once it has arrived */
    G->copy_async(h2, d2, n, 1, 4);            /* after the op above */
    G->copy_wait(4);
    G->zero(d2, n);                            /* only once d2 has left */
    G->zero(d1, n);
    G->synchronize();
    ck_assert_msg(memcmp(h1, h2, n) == 0, "the bytes that went to the device and back differ");
    G->copy_times(&bytes, &busy, &exposed);
    ck_assert_msg(bytes == 2.0 * (double)n, "copy_times counted %.0f bytes, expected %.0f", bytes, 2.0 * (double)n);
    ck_assert_msg(busy > 0 && exposed >= 0 && exposed <= busy * 1.5 + 1e-3, "busy %.6f s, exposed %.6f s", busy, exposed);
    printf("copy stream: 2 x 64 MiB, busy %.3f ms (%.1f GB/s), exposed %.3f ms\n", busy * 1e3, 2.0 * (double)n / busy / 1e9,
           exposed * 1e3);
    G->free(d1);
    G->free(d2);
    G->host_free(h1);
    G->host_free(h2);
}
END_TEST

int main(void) {
    if (cuda_device_count() == 0) {
        return test_skip("test_cuda_ops", "no CUDA device (the GPU ops run on a machine with one)");
    }
    Suite *s = suite_create("cuda_ops");
    TCase *tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, t_embed);
    tcase_add_test(tc, t_rmsnorm);
    tcase_add_test(tc, t_add_rmsnorm);
    tcase_add_test(tc, t_matmul);
    tcase_add_test(tc, t_matmul_blocked);
    tcase_add_test(tc, t_matmul_slice);
    tcase_add_test(tc, t_rope);
    tcase_add_test(tc, t_swiglu);
    tcase_add_test(tc, t_add_accumulate);
    tcase_add_test(tc, t_xent);
    tcase_add_test(tc, t_heads);
    tcase_add_test(tc, t_optimizer);
    tcase_add_test(tc, t_determinism);
    tcase_add_test(tc, t_copy_stream);
    tcase_add_test(tc, t_attention_simple);
    tcase_add_test(tc, t_attention_cudnn);
    tcase_add_test(tc, t_attention_cudnn_tuned);
    tcase_add_test(tc, t_attention_cudnn_vs_simple);
    tcase_add_test(tc, t_attention_docs_simple);
    tcase_add_test(tc, t_attention_docs_cudnn);
    tcase_add_test(tc, t_attention_docs_planned_scratch);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    /* one process: the CUDA context is not fork-safe */
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_VERBOSE);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

#else
int main(void) { return test_skip("test_cuda_ops", "built without CUDA (configure --with-cuda)"); }
#endif
