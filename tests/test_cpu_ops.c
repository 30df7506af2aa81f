/* Tests of the CPU reference backend: finite-difference checks of every
 * backward, forward checks against formulas evaluated here in double,
 * acc = 0 / acc = 1 semantics, and bitwise determinism over thread counts.
 *
 * Finite differences: for an op f with a random cotangent R, L(x) = <R, f(x)>
 * (in double, around the fp32 op). For random directions u the analytic
 * directional derivative <grad, u> must match (L(x + h u) - L(x - h u)) / 2h
 * within FD_TOL relative to max(|<grad, u>|, ||grad||) (||grad|| is the
 * typical size of <grad, u> for u ~ N(0, 1), so a direction that happens to be
 * nearly orthogonal to the gradient does not make the check meaningless). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "backend.h"
#include "testutil.h"

#define FD_TOL 1e-3   /* relative error bound of the finite-difference checks */
#define FD_H 1e-2     /* step for inputs of scale 1: truncation O(h^2) and fp32 noise O(eps/h) both < 1e-4 */
#define FWD_TOL 2e-6  /* fp32 op vs double reference */

static const backend_t *be = &backend_cpu;

/* ------------------------------------------------------------ helpers */

static float *fzeros(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    ck_assert_ptr_nonnull(p);
    return p;
}
static float *frand(trng_t *r, size_t n, double scale) {
    float *p = fzeros(n);
    trng_fill(r, p, n, scale);
    return p;
}
static float *fcopy(const float *a, size_t n) {
    float *p = fzeros(n);
    memcpy(p, a, n * sizeof(float));
    return p;
}
static void poison(float *x, size_t n) { for (size_t i = 0; i < n; i++) x[i] = NAN; }
static double dotd(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}
static double norm2(const float *a, size_t n) { return sqrt(dotd(a, a, n)); }
static void assert_finite(const char *what, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(isfinite(x[i]), "%s[%zu] = %g: element not written or not finite", what, i, (double)x[i]);
}
static double rel_err_d(const float *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    return den == 0 ? sqrt(num) : sqrt(num / den);
}

typedef double (*loss_fn)(void *ctx);

/* Compares <g, u> with the central difference of L along u, perturbing x in place. */
static void fd_check(const char *what, loss_fn L, void *ctx, float *x, const float *g, size_t n, double h,
                     trng_t *r) {
    float *x0 = fcopy(x, n), *u = fzeros(n);
    double gn = norm2(g, n);
    ck_assert_msg(isfinite(gn) && gn > 0, "%s: gradient norm %g is not a positive finite number", what, gn);
    for (int dir = 0; dir < 3; dir++) {
        trng_fill(r, u, n, 1.0);
        double an = dotd(g, u, n);
        for (size_t i = 0; i < n; i++) x[i] = (float)(x0[i] + h * u[i]);
        double lp = L(ctx);
        for (size_t i = 0; i < n; i++) x[i] = (float)(x0[i] - h * u[i]);
        double lm = L(ctx);
        memcpy(x, x0, n * sizeof(float));
        double num = (lp - lm) / (2 * h);
        double err = fabs(an - num) / fmax(fabs(an), gn);
        ck_assert_msg(err < FD_TOL, "%s (direction %d): analytic %.9g vs central difference %.9g, "
                      "relative error %.3e exceeds %.0e", what, dir, an, num, err, FD_TOL);
    }
    free(x0);
    free(u);
}

/* ------------------------------------------------------------ memory, conversion */

START_TEST(test_memory_and_bf16) {
    char err[128];
    ck_assert_int_eq(be->init(0, err, sizeof err), 0);
    ck_assert_str_eq(be->device_name(), "cpu");
    ck_assert_str_eq(be->name, "cpu");
    ck_assert_int_eq(be->act_dtype, DT_F32);
    ck_assert_int_eq(be->param_dtype, DT_F32);
    ck_assert_int_eq(be->grad_dtype, DT_F32);
    ck_assert_uint_eq(be->device_memory(), 0);
    ck_assert_uint_eq(be->memory_used(), 0);

    trng_t r = {11};
    float *h = frand(&r, 100, 1.0), *back = fzeros(100);
    float *d = be->alloc(400, "test buffer"), *d2 = be->alloc(400, "test buffer 2");
    be->to_device(d, h, 400);
    be->copy(d2, d, 400);
    be->to_host(back, d2, 400);
    ck_assert_mem_eq(back, h, 400);
    be->zero(d2, 400);
    be->to_host(back, d2, 400);
    for (int i = 0; i < 100; i++) ck_assert(back[i] == 0.0f);
    be->from_f32(d, DT_F32, h, 100);
    be->to_f32(back, d, DT_F32, 100);
    ck_assert_mem_eq(back, h, 400);
    be->synchronize();

    /* bf16 keeps 8 significant bits: 1 + 2^-8 ties between 1 and 1 + 2^-7 and goes
     * to the even one (1); 1 + 3 * 2^-8 ties between 1 + 2^-7 and 1 + 2^-6 -> 1 + 2^-6. */
    float in[7] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f, -2.5f, INFINITY, NAN, 3.4e38f};
    float want[5] = {1.0f, 1.0f + 0x1p-6f, 1.0f + 0x1p-7f, -2.5f, INFINITY};
    be->from_f32(d, DT_BF16, in, 7);
    float out[7];
    be->to_f32(out, d, DT_BF16, 7);
    for (int i = 0; i < 5; i++) ck_assert_msg(out[i] == want[i], "bf16(%a) = %a, expected %a", in[i], out[i], want[i]);
    ck_assert(isnan(out[5]));
    ck_assert(isinf(out[6]) && out[6] > 0);   /* above bf16's largest finite value: rounds to +inf */
    be->free(d);
    be->free(d2);
    void *hp = be->host_alloc(64, "pinned test");
    be->host_free(hp);
    be->shutdown();
    free(h);
    free(back);
}
END_TEST

/* ------------------------------------------------------------ rmsnorm */

typedef struct { float *x, *w, *R, *out; int64_t n, d; float eps; } rms_ctx;
static double rms_loss(void *c) {
    rms_ctx *k = c;
    be->rmsnorm_fwd(k->out, k->x, k->w, k->n, k->d, k->eps);
    return dotd(k->R, k->out, (size_t)(k->n * k->d));
}

START_TEST(test_rmsnorm_fd) {
    trng_t r = {101};
    int64_t n = 7, d = 33;
    size_t nd = (size_t)(n * d);
    rms_ctx c = {frand(&r, nd, 1.0), frand(&r, (size_t)d, 1.0), frand(&r, nd, 1.0), fzeros(nd), n, d, 1e-5f};
    float *dx = fzeros(nd), *dw0 = frand(&r, (size_t)d, 1.0), *dw = fcopy(dw0, (size_t)d);
    poison(dx, nd);
    be->rmsnorm_bwd(dx, 0, dw, c.R, c.x, c.w, n, d, c.eps);
    assert_finite("rmsnorm dx", dx, nd);
    for (int64_t i = 0; i < d; i++) dw[i] -= dw0[i];   /* dw accumulates: its increment is the gradient */
    fd_check("rmsnorm dx", rms_loss, &c, c.x, dx, nd, FD_H, &r);
    fd_check("rmsnorm dw", rms_loss, &c, c.w, dw, (size_t)d, FD_H, &r);

    /* acc = 1 adds to dx; dx = NULL leaves only dw */
    float *base = frand(&r, nd, 1.0), *dx2 = fcopy(base, nd);
    float *dwb = fzeros((size_t)d);
    be->rmsnorm_bwd(dx2, 1, dwb, c.R, c.x, c.w, n, d, c.eps);
    for (size_t i = 0; i < nd; i++) ck_assert_float_eq_tol(dx2[i], base[i] + dx[i], 1e-5);
    ck_assert_double_lt(rel_err(dwb, dw, (size_t)d), 1e-5);
    be->rmsnorm_bwd(NULL, 0, dwb, c.R, c.x, c.w, n, d, c.eps);
    for (int64_t i = 0; i < d; i++) ck_assert_float_eq_tol(dwb[i], 2 * dw[i], 1e-4);
    free(c.x); free(c.w); free(c.R); free(c.out); free(dx); free(dw0); free(dw); free(base); free(dx2); free(dwb);
}
END_TEST

START_TEST(test_rmsnorm_fwd) {
    trng_t r = {102};
    int64_t n = 5, d = 64;
    float eps = 1e-6f;
    float *x = frand(&r, (size_t)(n * d), 2.0), *w = frand(&r, (size_t)d, 1.0), *out = fzeros((size_t)(n * d));
    double *ref = calloc((size_t)(n * d), sizeof(double));
    for (int64_t t = 0; t < n; t++) {
        double ms = 0;
        for (int64_t i = 0; i < d; i++) ms += (double)x[t * d + i] * x[t * d + i] / (double)d;
        for (int64_t i = 0; i < d; i++) ref[t * d + i] = x[t * d + i] / sqrt(ms + eps) * w[i];
    }
    poison(out, (size_t)(n * d));
    be->rmsnorm_fwd(out, x, w, n, d, eps);
    ck_assert_double_lt(rel_err_d(out, ref, (size_t)(n * d)), FWD_TOL);
    free(x); free(w); free(out); free(ref);
}
END_TEST

/* ------------------------------------------------------------ residual add + rmsnorm */

/* L = <Rh, h> + <Rn, hn> (Rh = NULL: h has no other consumer, L = <Rn, hn>) */
typedef struct { float *a, *b, *w, *Rh, *Rn, *h, *hn; int64_t n, d; float eps; } arn_ctx;
static double arn_loss(void *c) {
    arn_ctx *k = c;
    size_t nd = (size_t)(k->n * k->d);
    be->add_rmsnorm_fwd(k->h, k->hn, k->a, k->b, k->w, k->n, k->d, k->eps);
    return (k->Rh ? dotd(k->Rh, k->h, nd) : 0.0) + dotd(k->Rn, k->hn, nd);
}

START_TEST(test_add_rmsnorm_fd) {
    trng_t r = {111};
    int64_t n = 7, d = 33;
    size_t nd = (size_t)(n * d);
    for (int with_dh = 0; with_dh < 2; with_dh++) {
        arn_ctx c = {frand(&r, nd, 1.0), frand(&r, nd, 1.0), frand(&r, (size_t)d, 1.0),
                     with_dh ? frand(&r, nd, 1.0) : NULL, frand(&r, nd, 1.0), fzeros(nd), fzeros(nd), n, d, 1e-5f};
        float *da = fzeros(nd), *db = fzeros(nd), *dw0 = frand(&r, (size_t)d, 1.0), *dw = fcopy(dw0, (size_t)d);
        poison(da, nd);
        poison(db, nd);
        arn_loss(&c);   /* the backward reads h */
        be->add_rmsnorm_bwd(da, 0, db, 0, dw, c.Rh, c.Rn, c.h, c.w, n, d, c.eps);
        assert_finite("add_rmsnorm da", da, nd);
        assert_finite("add_rmsnorm db", db, nd);
        ck_assert_mem_eq(da, db, nd * 4);   /* a residual add passes the same gradient to both */
        for (int64_t i = 0; i < d; i++) dw[i] -= dw0[i];
        fd_check(with_dh ? "add_rmsnorm da" : "add_rmsnorm da (dh = NULL)", arn_loss, &c, c.a, da, nd, FD_H, &r);
        fd_check(with_dh ? "add_rmsnorm db" : "add_rmsnorm db (dh = NULL)", arn_loss, &c, c.b, db, nd, FD_H, &r);
        fd_check(with_dh ? "add_rmsnorm dw" : "add_rmsnorm dw (dh = NULL)", arn_loss, &c, c.w, dw, (size_t)d, FD_H,
                 &r);

        /* the unfused pair: dh (+)= rmsnorm_bwd(dhn), then the add's backward */
        float *g = with_dh ? fcopy(c.Rh, nd) : fzeros(nd), *dwr = fzeros((size_t)d);
        be->add_rmsnorm_fwd(c.h, c.hn, c.a, c.b, c.w, n, d, c.eps);
        be->rmsnorm_bwd(g, with_dh, dwr, c.Rn, c.h, c.w, n, d, c.eps);
        ck_assert_mem_eq(da, g, nd * 4);

        /* acc = 1 adds to da and db independently; NULL da, db or dw is skipped */
        float *base_a = frand(&r, nd, 1.0), *base_b = frand(&r, nd, 1.0);
        float *da2 = fcopy(base_a, nd), *db2 = fcopy(base_b, nd), *dwb = fzeros((size_t)d);
        be->add_rmsnorm_bwd(da2, 1, db2, 0, dwb, c.Rh, c.Rn, c.h, c.w, n, d, c.eps);
        for (size_t i = 0; i < nd; i++) ck_assert(da2[i] == base_a[i] + g[i]);
        ck_assert_mem_eq(db2, g, nd * 4);
        ck_assert_mem_eq(dwb, dwr, (size_t)d * 4);   /* from zero: the unfused dw exactly */
        memcpy(da2, base_a, nd * 4);
        memcpy(db2, base_b, nd * 4);
        be->add_rmsnorm_bwd(da2, 0, db2, 1, NULL, c.Rh, c.Rn, c.h, c.w, n, d, c.eps);
        ck_assert_mem_eq(da2, g, nd * 4);
        for (size_t i = 0; i < nd; i++) ck_assert(db2[i] == base_b[i] + g[i]);
        be->add_rmsnorm_bwd(NULL, 0, NULL, 0, dwb, c.Rh, c.Rn, c.h, c.w, n, d, c.eps);
        for (int64_t i = 0; i < d; i++) ck_assert(dwb[i] == dwr[i] + dwr[i]);
        free(c.a); free(c.b); free(c.w); free(c.Rh); free(c.Rn); free(c.h); free(c.hn);
        free(da); free(db); free(dw0); free(dw); free(g); free(dwr);
        free(base_a); free(base_b); free(da2); free(db2); free(dwb);
    }
}
END_TEST

/* The fused forward is add_fwd then rmsnorm_fwd, bitwise, and matches a
 * double reference of the same formula. */
START_TEST(test_add_rmsnorm_fwd) {
    trng_t r = {112};
    const int64_t shapes[][2] = {{5, 64}, {3, 1000}, {9, 72}, {1, 1}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int64_t n = shapes[k][0], d = shapes[k][1];
        size_t nd = (size_t)(n * d);
        float eps = 1e-6f;
        float *a = frand(&r, nd, 2.0), *b = frand(&r, nd, 1.0), *w = frand(&r, (size_t)d, 1.0);
        float *h = fzeros(nd), *hn = fzeros(nd), *h2 = fzeros(nd), *hn2 = fzeros(nd);
        poison(h, nd);
        poison(hn, nd);
        be->add_rmsnorm_fwd(h, hn, a, b, w, n, d, eps);
        be->add_fwd(h2, a, b, nd);
        be->rmsnorm_fwd(hn2, h2, w, n, d, eps);
        ck_assert_mem_eq(h, h2, nd * 4);
        ck_assert_mem_eq(hn, hn2, nd * 4);
        double *ref = calloc(nd, sizeof(double));
        for (int64_t t = 0; t < n; t++) {
            double ms = 0;
            for (int64_t i = 0; i < d; i++) ms += (double)h2[t * d + i] * h2[t * d + i] / (double)d;
            for (int64_t i = 0; i < d; i++) ref[t * d + i] = h2[t * d + i] / sqrt(ms + eps) * w[i];
        }
        ck_assert_double_lt(rel_err_d(hn, ref, nd), FWD_TOL);
        free(a); free(b); free(w); free(h); free(hn); free(h2); free(hn2); free(ref);
    }
}
END_TEST

/* ------------------------------------------------------------ matmul */

typedef struct { float *x, *w, *R, *out; int64_t n, k, m; } mm_ctx;
static double mm_loss(void *c) {
    mm_ctx *a = c;
    be->matmul_fwd(a->out, a->x, a->w, a->n, a->k, a->m);
    return dotd(a->R, a->out, (size_t)(a->n * a->m));
}

START_TEST(test_matmul_fd) {
    trng_t r = {201};
    /* m > 256 and n not a multiple of 4 exercise the kernel's block edges. */
    int64_t shapes[2][3] = {{7, 13, 9}, {10, 5, 261}};
    for (int s = 0; s < 2; s++) {
        int64_t n = shapes[s][0], k = shapes[s][1], m = shapes[s][2];
        mm_ctx c = {frand(&r, (size_t)(n * k), 1.0), frand(&r, (size_t)(m * k), 1.0),
                    frand(&r, (size_t)(n * m), 1.0), fzeros((size_t)(n * m)), n, k, m};
        float *dx = fzeros((size_t)(n * k)), *dw0 = frand(&r, (size_t)(m * k), 1.0), *dw = fcopy(dw0, (size_t)(m * k));
        poison(dx, (size_t)(n * k));
        be->matmul_bwd(dx, 0, dw, c.R, c.x, c.w, n, k, m);
        assert_finite("matmul dx", dx, (size_t)(n * k));
        for (int64_t i = 0; i < m * k; i++) dw[i] -= dw0[i];
        fd_check("matmul dx", mm_loss, &c, c.x, dx, (size_t)(n * k), FD_H, &r);
        fd_check("matmul dw", mm_loss, &c, c.w, dw, (size_t)(m * k), FD_H, &r);

        /* forward against a double reference */
        double *ref = calloc((size_t)(n * m), sizeof(double));
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < m; j++)
                for (int64_t p = 0; p < k; p++) ref[i * m + j] += (double)c.x[i * k + p] * c.w[j * k + p];
        poison(c.out, (size_t)(n * m));
        be->matmul_fwd(c.out, c.x, c.w, n, k, m);
        ck_assert_double_lt(rel_err_d(c.out, ref, (size_t)(n * m)), FWD_TOL);

        /* acc = 1 adds to dx; NULL dx or dw is skipped */
        float *base = frand(&r, (size_t)(n * k), 1.0), *dx2 = fcopy(base, (size_t)(n * k));
        be->matmul_bwd(dx2, 1, NULL, c.R, c.x, c.w, n, k, m);
        for (int64_t i = 0; i < n * k; i++) ck_assert_float_eq_tol(dx2[i], base[i] + dx[i], 1e-4);
        float *dw2 = fzeros((size_t)(m * k));
        be->matmul_bwd(NULL, 0, dw2, c.R, c.x, c.w, n, k, m);
        ck_assert_double_lt(rel_err(dw2, dw, (size_t)(m * k)), 1e-5);
        /* in place (dx is x, overwritten): the same dx and dw (the weight gradient is formed first) */
        float *xi = fcopy(c.x, (size_t)(n * k)), *dw3 = fcopy(dw0, (size_t)(m * k));
        be->matmul_bwd(xi, 0, dw3, c.R, xi, c.w, n, k, m);
        for (int64_t i = 0; i < m * k; i++) dw3[i] -= dw0[i];
        ck_assert_double_lt(rel_err(xi, dx, (size_t)(n * k)), 1e-6);
        ck_assert_double_lt(rel_err(dw3, dw, (size_t)(m * k)), 1e-6);
        free(xi); free(dw3);
        free(c.x); free(c.w); free(c.R); free(c.out); free(dx); free(dw0); free(dw); free(ref);
        free(base); free(dx2); free(dw2);
    }
}
END_TEST

/* The packed layout of x[n, k] in `blocks` column blocks of kb = k / blocks:
 * block j is x[:, j kb .. j kb + kb - 1], stored [n][kb] at j n kb. */
static void pack_cols(float *dst, const float *src, int64_t n, int64_t k, int blocks) {
    int64_t kb = k / blocks;
    for (int64_t j = 0; j < blocks; j++)
        for (int64_t t = 0; t < n; t++)
            for (int64_t c = 0; c < kb; c++) dst[(j * n + t) * kb + c] = src[t * k + j * kb + c];
}
static void unpack_cols(float *dst, const float *src, int64_t n, int64_t k, int blocks) {
    int64_t kb = k / blocks;
    for (int64_t j = 0; j < blocks; j++)
        for (int64_t t = 0; t < n; t++)
            for (int64_t c = 0; c < kb; c++) dst[t * k + j * kb + c] = src[(j * n + t) * kb + c];
}
static void assert_same(const char *what, const float *got, const float *want, size_t n);

typedef struct { float *x, *w, *R, *out; int64_t n, k, m; int blocks; } mmb_ctx;
static double mmb_loss(void *c) {
    mmb_ctx *a = c;
    be->matmul_blocked_fwd(a->out, a->x, a->w, a->n, a->k, a->m, a->blocks);
    return dotd(a->R, a->out, (size_t)(a->n * a->m));
}

/* The blocked matmul on packed x is the plain matmul on unpacked x, bit for
 * bit (the same sums in the same order); its dx comes out packed. */
START_TEST(test_matmul_blocked) {
    trng_t r = {202};
    /* n, k, m, blocks: block widths 4, 6, 5, 16 and one block; m > 256 crosses the kernel's column blocks */
    const int64_t shapes[][4] = {{7, 12, 9, 3}, {10, 24, 261, 4}, {9, 40, 13, 8}, {5, 16, 8, 1}, {13, 64, 33, 4}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t n = shapes[s][0], k = shapes[s][1], m = shapes[s][2];
        int blocks = (int)shapes[s][3];
        size_t nk = (size_t)(n * k), mk = (size_t)(m * k), nm = (size_t)(n * m);
        float *x = frand(&r, nk, 1.0), *w = frand(&r, mk, 1.0), *R = frand(&r, nm, 1.0);
        float *xp = fzeros(nk), *out = fzeros(nm), *want = fzeros(nm);
        pack_cols(xp, x, n, k, blocks);
        be->matmul_fwd(want, x, w, n, k, m);
        poison(out, nm);
        be->matmul_blocked_fwd(out, xp, w, n, k, m, blocks);
        assert_same("matmul_blocked_fwd", out, want, nm);

        /* backward: dx packed, dw accumulated, against matmul_bwd */
        float *dw0 = frand(&r, mk, 1.0), *dw = fcopy(dw0, mk), *dw_want = fcopy(dw0, mk);
        float *dxp = fzeros(nk), *dx = fzeros(nk), *dx_want = fzeros(nk);
        be->matmul_bwd(dx_want, 0, dw_want, R, x, w, n, k, m);
        poison(dxp, nk);
        be->matmul_blocked_bwd(dxp, 0, dw, R, xp, w, n, k, m, blocks);
        unpack_cols(dx, dxp, n, k, blocks);
        assert_same("matmul_blocked_bwd dx", dx, dx_want, nk);
        assert_same("matmul_blocked_bwd dw", dw, dw_want, mk);

        /* acc = 1 adds to the packed dx; NULL dx or dw is skipped */
        float *base = frand(&r, nk, 1.0), *basep = fzeros(nk);
        pack_cols(basep, base, n, k, blocks);
        be->matmul_bwd(base, 1, NULL, R, x, w, n, k, m);
        be->matmul_blocked_bwd(basep, 1, NULL, R, xp, w, n, k, m, blocks);
        unpack_cols(dx, basep, n, k, blocks);
        assert_same("matmul_blocked_bwd dx acc=1", dx, base, nk);
        float *dw2 = fzeros(mk), *dw2_want = fzeros(mk);
        be->matmul_blocked_bwd(NULL, 0, dw2, R, xp, w, n, k, m, blocks);
        be->matmul_bwd(NULL, 0, dw2_want, R, x, w, n, k, m);
        assert_same("matmul_blocked_bwd dw only", dw2, dw2_want, mk);

        /* finite differences through the blocked forward: packed dx and dw */
        for (size_t i = 0; i < mk; i++) dw[i] -= dw0[i];
        mmb_ctx c = {xp, w, R, fzeros(nm), n, k, m, blocks};
        fd_check("matmul_blocked dx", mmb_loss, &c, xp, dxp, nk, FD_H, &r);
        fd_check("matmul_blocked dw", mmb_loss, &c, w, dw, mk, FD_H, &r);
        free(x); free(w); free(R); free(xp); free(out); free(want); free(dw0); free(dw); free(dw_want);
        free(dxp); free(dx); free(dx_want); free(base); free(basep); free(dw2); free(dw2_want); free(c.out);
    }
}
END_TEST

/* The matmul on windows: w an [m, k] window at (r0, c0) of a [M, K] matrix,
 * out / dout an [n, m] window at column o0 of rows ldo wide, x dense or
 * packed. Against double sums; everything outside the windows untouched;
 * with the whole matrices as windows, bitwise the blocked matmul. */
START_TEST(test_matmul_slice) {
    trng_t r = {203};
    /* n, k, m, blocks, M, K, r0, c0, ldo, o0 */
    const int64_t cases[][10] = {{7, 12, 9, 3, 20, 30, 5, 7, 15, 4}, {10, 24, 261, 4, 300, 24, 30, 0, 270, 9},
                                 {6, 16, 8, 1, 8, 48, 0, 16, 8, 0}, {5, 8, 12, 2, 40, 8, 24, 0, 36, 12}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t *c = cases[ci];
        int64_t n = c[0], k = c[1], m = c[2], M = c[4], K = c[5], r0 = c[6], c0 = c[7], ldo = c[8], o0 = c[9];
        int blocks = (int)c[3];
        int64_t kb = k / blocks;
        size_t nk = (size_t)(n * k), WK = (size_t)(M * K), NO = (size_t)(n * ldo);
        float *x = frand(&r, nk, 1.0), *W = frand(&r, WK, 1.0), *R = frand(&r, NO, 1.0);
        float *xp = fzeros(nk), *out = frand(&r, NO, 1.0), *out0 = fcopy(out, NO);
        pack_cols(xp, x, n, k, blocks);
        const float *w = W + r0 * K + c0;
        double *ref = calloc(NO, sizeof(double));
        for (int64_t t = 0; t < n; t++)
            for (int64_t j = 0; j < m; j++)
                for (int64_t p = 0; p < k; p++) ref[t * m + j] += (double)x[t * k + p] * w[j * K + p];
        for (int acc = 0; acc <= 1; acc++) {
            memcpy(out, out0, NO * 4);
            be->matmul_slice_fwd(out + o0, ldo, acc, xp, w, K, n, k, m, blocks);
            for (int64_t t = 0; t < n; t++)
                for (int64_t j = 0; j < ldo; j++) {
                    float got = out[t * ldo + j], was = out0[t * ldo + j];
                    if (j < o0 || j >= o0 + m) ck_assert_msg(got == was, "case %zu: fwd wrote outside its window", ci);
                    else ck_assert_float_eq_tol(got, (acc ? was : 0.0) + ref[t * m + j - o0], 1e-4);
                }
        }
        /* backward: dw (a window of dW) += dout^T x, dx = dout w, against double sums */
        float *dW = frand(&r, WK, 1.0), *dW0 = fcopy(dW, WK), *dxp = fzeros(nk), *dx = fzeros(nk);
        poison(dxp, nk);
        be->matmul_slice_bwd(dxp, 0, dW + r0 * K + c0, K, R + o0, ldo, xp, w, n, k, m, blocks);
        unpack_cols(dx, dxp, n, k, blocks);
        for (int64_t t = 0; t < n; t++)
            for (int64_t p = 0; p < k; p++) {
                double s = 0;
                for (int64_t j = 0; j < m; j++) s += (double)R[t * ldo + o0 + j] * w[j * K + p];
                ck_assert_float_eq_tol(dx[t * k + p], s, 1e-4);
            }
        for (int64_t i = 0; i < M; i++)
            for (int64_t p = 0; p < K; p++) {
                int in = i >= r0 && i < r0 + m && p >= c0 && p < c0 + k;
                double s = dW0[i * K + p];
                for (int64_t t = 0; in && t < n; t++) s += (double)R[t * ldo + o0 + i - r0] * x[t * k + p - c0];
                if (in) ck_assert_float_eq_tol(dW[i * K + p], s, 1e-4);
                else ck_assert_msg(dW[i * K + p] == dW0[i * K + p], "case %zu: bwd wrote dw outside its window", ci);
            }
        /* acc = 1 adds to dx */
        float *base = frand(&r, nk, 1.0), *acc_x = fcopy(base, nk);
        be->matmul_slice_bwd(acc_x, 1, NULL, K, R + o0, ldo, xp, w, n, k, m, blocks);
        for (size_t i = 0; i < nk; i++) ck_assert_float_eq_tol(acc_x[i], base[i] + dxp[i], 1e-4);
        (void)kb;
        /* whole matrices as windows: bitwise matmul_blocked */
        float *wd = frand(&r, (size_t)(m * k), 1.0), *o1 = fzeros((size_t)(n * m)), *o2 = fzeros((size_t)(n * m));
        be->matmul_blocked_fwd(o1, xp, wd, n, k, m, blocks);
        be->matmul_slice_fwd(o2, m, 0, xp, wd, k, n, k, m, blocks);
        assert_same("matmul_slice_fwd whole", o2, o1, (size_t)(n * m));
        float *g1 = fzeros((size_t)(m * k)), *g2 = fzeros((size_t)(m * k)), *d1 = fzeros(nk), *d2 = fzeros(nk);
        be->matmul_blocked_bwd(d1, 0, g1, R, xp, wd, n, k, m, blocks);
        be->matmul_slice_bwd(d2, 0, g2, k, R, m, xp, wd, n, k, m, blocks);
        assert_same("matmul_slice_bwd whole dx", d2, d1, nk);
        assert_same("matmul_slice_bwd whole dw", g2, g1, (size_t)(m * k));
        free(x); free(W); free(R); free(xp); free(out); free(out0); free(ref); free(dW); free(dW0); free(dxp);
        free(dx); free(base); free(acc_x); free(wd); free(o1); free(o2); free(g1); free(g2); free(d1); free(d2);
    }
}
END_TEST

/* ------------------------------------------------------------ rope + split */

typedef struct {
    float *qkv, *Rq, *Rk, *Rv, *q, *k, *v;
    int32_t *pos; double *inv_freq; int64_t n, hq, hkv, hd; int pq, pkv;
} rope_ctx;
static double rope_loss(void *c) {
    rope_ctx *a = c;
    be->rope_split_fwd(a->q, a->k, a->v, a->qkv, a->pos, a->inv_freq, a->n, a->hq, a->hkv, a->hd, a->pq, a->pkv);
    return dotd(a->Rq, a->q, (size_t)(a->n * a->hq * a->hd)) + dotd(a->Rk, a->k, (size_t)(a->n * a->hkv * a->hd)) +
           dotd(a->Rv, a->v, (size_t)(a->n * a->hkv * a->hd));
}
static double *llama_inv_freq(int64_t hd, double theta) {
    double *f = calloc((size_t)(hd / 2), sizeof(double));
    for (int64_t i = 0; i < hd / 2; i++) f[i] = pow(theta, -2.0 * (double)i / (double)hd);
    return f;
}

START_TEST(test_rope_fd) {
    trng_t r = {301};
    int64_t n = 5, hq = 4, hkv = 2, hd = 8;
    size_t nq = (size_t)(n * hq * hd), nk = (size_t)(n * hkv * hd), nall = nq + 2 * nk;
    int32_t pos[5] = {0, 3, 17, 250, 4096};
    rope_ctx c = {frand(&r, nall, 1.0), frand(&r, nq, 1.0), frand(&r, nk, 1.0), frand(&r, nk, 1.0),
                  fzeros(nq), fzeros(nk), fzeros(nk), pos, llama_inv_freq(hd, 10000.0), n, hq, hkv, hd, 1, 1};
    float *dqkv = fzeros(nall);
    poison(dqkv, nall);
    be->rope_split_bwd(dqkv, c.Rq, c.Rk, c.Rv, pos, c.inv_freq, n, hq, hkv, hd, 1, 1);
    assert_finite("rope dqkv", dqkv, nall);
    fd_check("rope_split dqkv", rope_loss, &c, c.qkv, dqkv, nall, FD_H, &r);
    free(c.qkv); free(c.Rq); free(c.Rk); free(c.Rv); free(c.q); free(c.k); free(c.v); free(c.inv_freq); free(dqkv);
}
END_TEST

START_TEST(test_rope_fwd) {
    trng_t r = {302};
    int64_t n = 3, hq = 2, hkv = 1, hd = 16, half = hd / 2;
    size_t row = (size_t)((hq + 2 * hkv) * hd);
    int32_t pos[3] = {0, 7, 100000};
    double theta = 500000.0;
    double *inv = llama_inv_freq(hd, theta);
    float *qkv = frand(&r, (size_t)n * row, 1.0);
    float *q = fzeros((size_t)(n * hq * hd)), *k = fzeros((size_t)(n * hkv * hd)), *v = fzeros((size_t)(n * hkv * hd));
    poison(q, (size_t)(n * hq * hd)); poison(k, (size_t)(n * hkv * hd)); poison(v, (size_t)(n * hkv * hd));
    be->rope_split_fwd(q, k, v, qkv, pos, inv, n, hq, hkv, hd, 1, 1);
    for (int64_t t = 0; t < n; t++) {
        for (int64_t h = 0; h < hq + hkv; h++) {
            const float *src = qkv + (size_t)t * row + (size_t)(h * hd);
            const float *dst = h < hq ? q + (t * hq + h) * hd : k + (t * hkv + (h - hq)) * hd;
            double n_in = 0, n_out = 0;
            for (int64_t i = 0; i < half; i++) {
                /* explicit angle pos * theta^(-2i/hd) and the 2x2 rotation of (x_i, x_{i+hd/2}) */
                double ang = (double)pos[t] * pow(theta, -2.0 * (double)i / (double)hd);
                double c = cos(ang), s = sin(ang), x1 = src[i], x2 = src[i + half];
                double y1 = x1 * c - x2 * s, y2 = x2 * c + x1 * s;
                ck_assert_msg(fabs(dst[i] - y1) < 1e-5 && fabs(dst[i + half] - y2) < 1e-5,
                              "rope t=%lld head %lld pair %lld: got (%g, %g), expected (%g, %g)", (long long)t,
                              (long long)h, (long long)i, (double)dst[i], (double)dst[i + half], y1, y2);
                n_in += x1 * x1 + x2 * x2;
                n_out += (double)dst[i] * dst[i] + (double)dst[i + half] * dst[i + half];
            }
            ck_assert_msg(fabs(sqrt(n_out) - sqrt(n_in)) < 1e-5 * sqrt(n_in), "rope changed a head's norm: %g -> %g",
                          sqrt(n_in), sqrt(n_out));
            if (pos[t] == 0) ck_assert_mem_eq(dst, src, (size_t)hd * 4);   /* position 0 is the identity */
        }
        ck_assert_mem_eq(v + t * hkv * hd, qkv + (size_t)t * row + (size_t)((hq + hkv) * hd), (size_t)(hkv * hd) * 4);
    }
    free(inv); free(qkv); free(q); free(k); free(v);
}
END_TEST

/* Elementwise equality (so +0 and -0 agree) of two fully written tensors. */
static void assert_same(const char *what, const float *got, const float *want, size_t n) {
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "%s[%zu] = %.9g, expected %.9g", what, i, (double)got[i], (double)want[i]);
}

/* Packed q/k/v (the Ulysses layout for pq / pkv ranks) are the plain op's
 * results passed through heads_pack; the backward reading packed dq/dk/dv is
 * the plain backward of their heads_unpack. */
START_TEST(test_rope_packed) {
    trng_t r = {303};
    const int cases[][4] = {   /* hq, hkv, pq, pkv: pkv = 1 is KV replication (k and v stay plain) */
        {8, 4, 2, 2}, {8, 4, 4, 4}, {8, 2, 4, 1}, {4, 2, 2, 2}, {6, 3, 3, 3}, {8, 8, 8, 8}, {4, 1, 4, 1}, {4, 2, 1, 1},
    };
    int64_t n = 5, hd = 8;
    int32_t pos[5] = {0, 3, 17, 250, 4096};
    double *inv = llama_inv_freq(hd, 10000.0);
    for (size_t cs = 0; cs < sizeof cases / sizeof cases[0]; cs++) {
        int64_t hq = cases[cs][0], hkv = cases[cs][1];
        int pq = cases[cs][2], pkv = cases[cs][3];
        size_t nq = (size_t)(n * hq * hd), nk = (size_t)(n * hkv * hd), nall = nq + 2 * nk;
        float *qkv = frand(&r, nall, 1.0);
        float *q = fzeros(nq), *k = fzeros(nk), *v = fzeros(nk);
        float *qp = fzeros(nq), *kp = fzeros(nk), *vp = fzeros(nk);
        float *wq = fzeros(nq), *wk = fzeros(nk), *wv = fzeros(nk);
        be->rope_split_fwd(q, k, v, qkv, pos, inv, n, hq, hkv, hd, 1, 1);
        be->heads_pack(wq, q, n, hq, hd, pq);
        be->heads_pack(wk, k, n, hkv, hd, pkv);
        be->heads_pack(wv, v, n, hkv, hd, pkv);
        poison(qp, nq); poison(kp, nk); poison(vp, nk);
        be->rope_split_fwd(qp, kp, vp, qkv, pos, inv, n, hq, hkv, hd, pq, pkv);
        assert_same("packed rope q", qp, wq, nq);
        assert_same("packed rope k", kp, wk, nk);
        assert_same("packed rope v", vp, wv, nk);

        float *dqp = frand(&r, nq, 1.0), *dkp = frand(&r, nk, 1.0), *dvp = frand(&r, nk, 1.0);
        float *dqkv = fzeros(nall), *want = fzeros(nall);
        be->heads_unpack(q, dqp, n, hq, hd, pq, 0);
        be->heads_unpack(k, dkp, n, hkv, hd, pkv, 0);
        be->heads_unpack(v, dvp, n, hkv, hd, pkv, 0);
        be->rope_split_bwd(want, q, k, v, pos, inv, n, hq, hkv, hd, 1, 1);
        poison(dqkv, nall);
        be->rope_split_bwd(dqkv, dqp, dkp, dvp, pos, inv, n, hq, hkv, hd, pq, pkv);
        assert_same("packed rope dqkv", dqkv, want, nall);
        free(qkv); free(q); free(k); free(v); free(qp); free(kp); free(vp); free(wq); free(wk); free(wv);
        free(dqp); free(dkp); free(dvp); free(dqkv); free(want);
    }
    free(inv);

    /* finite differences through the packed forward with packed cotangents */
    int64_t hq = 8, hkv = 4;
    size_t nq = (size_t)(n * hq * hd), nk = (size_t)(n * hkv * hd), nall = nq + 2 * nk;
    rope_ctx c = {frand(&r, nall, 1.0), frand(&r, nq, 1.0), frand(&r, nk, 1.0), frand(&r, nk, 1.0),
                  fzeros(nq), fzeros(nk), fzeros(nk), pos, llama_inv_freq(hd, 10000.0), n, hq, hkv, hd, 4, 2};
    float *dqkv = fzeros(nall);
    poison(dqkv, nall);
    be->rope_split_bwd(dqkv, c.Rq, c.Rk, c.Rv, pos, c.inv_freq, n, hq, hkv, hd, c.pq, c.pkv);
    assert_finite("packed rope dqkv", dqkv, nall);
    fd_check("packed rope_split dqkv", rope_loss, &c, c.qkv, dqkv, nall, FD_H, &r);
    free(c.qkv); free(c.Rq); free(c.Rk); free(c.Rv); free(c.q); free(c.k); free(c.v); free(c.inv_freq); free(dqkv);
}
END_TEST

/* ------------------------------------------------------------ attention */

typedef struct { float *q, *k, *v, *R, *out, *lse; int64_t s, hq, hkv, hd; float scale; } attn_ctx;
static double attn_loss(void *c) {
    attn_ctx *a = c;
    be->attention_fwd(a->out, a->lse, a->q, a->k, a->v, a->s, a->hq, a->hkv, a->hd, a->scale, NULL);
    return dotd(a->R, a->out, (size_t)(a->s * a->hq * a->hd));
}

static const int64_t attn_shapes[][4] = {   /* s, hq, hkv, hd: GQA ratios 1, 2 and 4 */
    {7, 3, 3, 8}, {33, 4, 2, 6}, {33, 8, 2, 4}, {7, 4, 1, 10},
};

START_TEST(test_attention_fd) {
    trng_t r = {401 + (uint64_t)_i};
    int64_t s = attn_shapes[_i][0], hq = attn_shapes[_i][1], hkv = attn_shapes[_i][2], hd = attn_shapes[_i][3];
    size_t nq = (size_t)(s * hq * hd), nk = (size_t)(s * hkv * hd);
    attn_ctx c = {frand(&r, nq, 1.0), frand(&r, nk, 1.0), frand(&r, nk, 1.0), frand(&r, nq, 1.0), fzeros(nq),
                  fzeros((size_t)(hq * s)), s, hq, hkv, hd, (float)(1.0 / sqrt((double)hd))};
    attn_loss(&c);
    float *dq = fzeros(nq), *dk = fzeros(nk), *dv = fzeros(nk);
    poison(dq, nq); poison(dk, nk); poison(dv, nk);
    be->attention_bwd(dq, dk, dv, c.R, c.q, c.k, c.v, c.out, c.lse, s, hq, hkv, hd, c.scale, NULL);
    assert_finite("attention dq", dq, nq);
    assert_finite("attention dk", dk, nk);
    assert_finite("attention dv", dv, nk);
    char what[96];
    snprintf(what, sizeof what, "attention dq (s=%lld hq=%lld hkv=%lld)", (long long)s, (long long)hq, (long long)hkv);
    fd_check(what, attn_loss, &c, c.q, dq, nq, FD_H, &r);
    snprintf(what, sizeof what, "attention dk (s=%lld hq=%lld hkv=%lld)", (long long)s, (long long)hq, (long long)hkv);
    fd_check(what, attn_loss, &c, c.k, dk, nk, FD_H, &r);
    snprintf(what, sizeof what, "attention dv (s=%lld hq=%lld hkv=%lld)", (long long)s, (long long)hq, (long long)hkv);
    fd_check(what, attn_loss, &c, c.v, dv, nk, FD_H, &r);
    free(c.q); free(c.k); free(c.v); free(c.R); free(c.out); free(c.lse); free(dq); free(dk); free(dv);
}
END_TEST

/* Attention over packed documents equals attention over each document
 * alone (its rows copied out), forward and backward: lengths 5, 1, 13, 1, 17
 * with GQA. Nothing of one document reaches another. */
START_TEST(test_attention_documents) {
    trng_t r = {481};
    const int64_t s = 37, hq = 4, hkv = 2, hd = 8;
    const int32_t cu[6] = {0, 5, 6, 19, 20, 37};
    int32_t start[37];
    for (int d = 0; d < 5; d++)
        for (int32_t t = cu[d]; t < cu[d + 1]; t++) start[t] = cu[d];
    attn_docs_t docs = {5, 17, cu, cu, start};
    size_t nq = (size_t)(s * hq * hd), nk = (size_t)(s * hkv * hd);
    float scale = 0.35f;
    float *q = frand(&r, nq, 1.5), *k = frand(&r, nk, 1.5), *v = frand(&r, nk, 1.0), *dout = frand(&r, nq, 1.0);
    float *out = fzeros(nq), *lse = fzeros((size_t)(hq * s)), *dq = fzeros(nq), *dk = fzeros(nk), *dv = fzeros(nk);
    poison(out, nq); poison(lse, (size_t)(hq * s)); poison(dq, nq); poison(dk, nk); poison(dv, nk);
    be->attention_fwd(out, lse, q, k, v, s, hq, hkv, hd, scale, &docs);
    be->attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, s, hq, hkv, hd, scale, &docs);
    for (int d = 0; d < 5; d++) {
        int64_t a = cu[d], n = cu[d + 1] - cu[d];
        size_t mq = (size_t)(n * hq * hd), mk = (size_t)(n * hkv * hd);
        float *o1 = fzeros(mq), *l1 = fzeros((size_t)(hq * n)), *q1 = fzeros(mq), *k1 = fzeros(mk), *v1 = fzeros(mk);
        poison(o1, mq); poison(l1, (size_t)(hq * n)); poison(q1, mq); poison(k1, mk); poison(v1, mk);
        be->attention_fwd(o1, l1, q + a * hq * hd, k + a * hkv * hd, v + a * hkv * hd, n, hq, hkv, hd, scale, NULL);
        be->attention_bwd(q1, k1, v1, dout + a * hq * hd, q + a * hq * hd, k + a * hkv * hd, v + a * hkv * hd, o1, l1,
                          n, hq, hkv, hd, scale, NULL);
        for (size_t i = 0; i < mq; i++) {
            ck_assert_float_eq_tol(out[a * hq * hd + (int64_t)i], o1[i], 1e-6);
            ck_assert_float_eq_tol(dq[a * hq * hd + (int64_t)i], q1[i], 1e-6);
        }
        for (size_t i = 0; i < mk; i++) {
            ck_assert_float_eq_tol(dk[a * hkv * hd + (int64_t)i], k1[i], 1e-6);
            ck_assert_float_eq_tol(dv[a * hkv * hd + (int64_t)i], v1[i], 1e-6);
        }
        for (int64_t h = 0; h < hq; h++)
            for (int64_t t = 0; t < n; t++) ck_assert_float_eq_tol(lse[h * s + a + t], l1[h * n + t], 1e-6);
        free(o1); free(l1); free(q1); free(k1); free(v1);
    }
    /* a one-row document attends to itself only: its output is its value row */
    for (int64_t h = 0; h < hq; h++)
        for (int64_t i = 0; i < hd; i++)
            ck_assert_float_eq_tol(out[(5 * hq + h) * hd + i], v[(5 * hkv + h * hkv / hq) * hd + i], 1e-6);
    free(q); free(k); free(v); free(dout); free(out); free(lse); free(dq); free(dk); free(dv);
}
END_TEST

START_TEST(test_attention_fwd) {
    trng_t r = {451 + (uint64_t)_i};
    int64_t s = attn_shapes[_i][0], hq = attn_shapes[_i][1], hkv = attn_shapes[_i][2], hd = attn_shapes[_i][3];
    size_t nq = (size_t)(s * hq * hd), nk = (size_t)(s * hkv * hd);
    double scale = 1.0 / sqrt((double)hd);
    float *q = frand(&r, nq, 1.5), *k = frand(&r, nk, 1.5), *v = frand(&r, nk, 1.0);
    float *out = fzeros(nq), *lse = fzeros((size_t)(hq * s));
    double *S = calloc((size_t)(s * s), sizeof(double)), *ref = calloc(nq, sizeof(double));
    double *lref = calloc((size_t)(hq * s), sizeof(double));
    for (int64_t h = 0; h < hq; h++) {
        int64_t g = h * hkv / hq;   /* kv head of query head h: h / (hq / hkv) */
        /* the full masked score matrix and its softmax, in double */
        for (int64_t t = 0; t < s; t++) {
            for (int64_t j = 0; j < s; j++) {
                double acc = 0;
                for (int64_t i = 0; i < hd; i++) acc += (double)q[(t * hq + h) * hd + i] * k[(j * hkv + g) * hd + i];
                S[t * s + j] = j <= t ? scale * acc : -INFINITY;
            }
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j < s; j++) mx = fmax(mx, S[t * s + j]);
            for (int64_t j = 0; j < s; j++) sum += exp(S[t * s + j] - mx);
            lref[h * s + t] = mx + log(sum);
            for (int64_t j = 0; j < s; j++) {
                double p = exp(S[t * s + j] - lref[h * s + t]);
                for (int64_t i = 0; i < hd; i++) ref[(t * hq + h) * hd + i] += p * v[(j * hkv + g) * hd + i];
            }
        }
    }
    poison(out, nq);
    poison(lse, (size_t)(hq * s));
    be->attention_fwd(out, lse, q, k, v, s, hq, hkv, hd, (float)scale, NULL);
    ck_assert_double_lt(rel_err_d(out, ref, nq), 1e-5);
    ck_assert_double_lt(rel_err_d(lse, lref, (size_t)(hq * s)), 1e-6);
    /* the first query sees only the first key */
    for (int64_t h = 0; h < hq; h++)
        for (int64_t i = 0; i < hd; i++)
            ck_assert_float_eq_tol(out[h * hd + i], v[(h * hkv / hq) * hd + i], 1e-6);
    free(q); free(k); free(v); free(out); free(lse); free(S); free(ref); free(lref);
}
END_TEST

/* ------------------------------------------------------------ swiglu */

typedef struct { float *gu, *R, *out; int64_t n, f; } sw_ctx;
static double sw_loss(void *c) {
    sw_ctx *a = c;
    be->swiglu_fwd(a->out, a->gu, a->n, a->f);
    return dotd(a->R, a->out, (size_t)(a->n * a->f));
}

START_TEST(test_swiglu) {
    trng_t r = {501};
    int64_t n = 6, f = 11;
    size_t nf = (size_t)(n * f);
    sw_ctx c = {frand(&r, 2 * nf, 2.0), frand(&r, nf, 1.0), fzeros(nf), n, f};
    float *dgu = fzeros(2 * nf);
    poison(dgu, 2 * nf);
    be->swiglu_bwd(dgu, c.R, c.gu, n, f);
    assert_finite("swiglu dgu", dgu, 2 * nf);
    fd_check("swiglu dgu", sw_loss, &c, c.gu, dgu, 2 * nf, FD_H, &r);
    /* in place (dgu is gu): bitwise the same */
    float *inplace = fcopy(c.gu, 2 * nf);
    be->swiglu_bwd(inplace, c.R, inplace, n, f);
    ck_assert_mem_eq(inplace, dgu, 2 * nf * sizeof(float));
    free(inplace);

    double *ref = calloc(nf, sizeof(double));
    for (int64_t t = 0; t < n; t++)
        for (int64_t i = 0; i < f; i++) {
            double g = c.gu[t * 2 * f + i], u = c.gu[t * 2 * f + f + i];
            ref[t * f + i] = g / (1.0 + exp(-g)) * u;
        }
    poison(c.out, nf);
    be->swiglu_fwd(c.out, c.gu, n, f);
    ck_assert_double_lt(rel_err_d(c.out, ref, nf), FWD_TOL);
    free(c.gu); free(c.R); free(c.out); free(dgu); free(ref);
}
END_TEST

/* ------------------------------------------------------------ embedding, residual */

typedef struct { float *wte, *R, *out; int32_t *tok; int64_t n, d; } emb_ctx;
static double emb_loss(void *c) {
    emb_ctx *a = c;
    be->embed_fwd(a->out, a->tok, a->wte, a->n, a->d);
    return dotd(a->R, a->out, (size_t)(a->n * a->d));
}

START_TEST(test_embedding) {
    trng_t r = {601};
    int64_t n = 9, d = 70, vocab = 5;
    int32_t tok[9] = {3, 0, 3, 4, 1, 3, 0, 2, 3};
    emb_ctx c = {frand(&r, (size_t)(vocab * d), 1.0), frand(&r, (size_t)(n * d), 1.0), fzeros((size_t)(n * d)), tok, n, d};
    poison(c.out, (size_t)(n * d));
    be->embed_fwd(c.out, tok, c.wte, n, d);
    for (int64_t t = 0; t < n; t++) ck_assert_mem_eq(c.out + t * d, c.wte + tok[t] * d, (size_t)d * 4);

    float *dw0 = frand(&r, (size_t)(vocab * d), 1.0), *dw = fcopy(dw0, (size_t)(vocab * d));
    be->embed_bwd(dw, tok, c.R, n, d, vocab);
    /* exact: rows added to the accumulator in token order */
    for (int64_t v = 0; v < vocab; v++)
        for (int64_t i = 0; i < d; i++) {
            float want = dw0[v * d + i];
            for (int64_t t = 0; t < n; t++) if (tok[t] == v) want += c.R[t * d + i];
            ck_assert(dw[v * d + i] == want);
        }
    for (int64_t i = 0; i < vocab * d; i++) dw[i] -= dw0[i];
    fd_check("embedding dwte", emb_loss, &c, c.wte, dw, (size_t)(vocab * d), FD_H, &r);
    free(c.wte); free(c.R); free(c.out); free(dw0); free(dw);
}
END_TEST

START_TEST(test_add_accumulate) {
    trng_t r = {602};
    size_t n = 1001;
    float *a = frand(&r, n, 1.0), *b = frand(&r, n, 1.0), *o = fzeros(n);
    poison(o, n);
    be->add_fwd(o, a, b, n);
    for (size_t i = 0; i < n; i++) ck_assert(o[i] == a[i] + b[i]);
    poison(o, n);
    be->accumulate(o, a, n, 0);
    ck_assert_mem_eq(o, a, n * 4);
    be->accumulate(o, b, n, 1);
    for (size_t i = 0; i < n; i++) ck_assert(o[i] == a[i] + b[i]);
    free(a); free(b); free(o);
}
END_TEST

/* ------------------------------------------------------------ cross entropy */

typedef struct { float *logits, *work; int32_t *tgt; int64_t n, vocab; } xent_ctx;
static double xent_loss(void *c) {
    xent_ctx *a = c;
    memcpy(a->work, a->logits, (size_t)(a->n * a->vocab) * 4);
    float loss = 0;
    be->xent_fwd_bwd(a->work, &loss, a->tgt, a->n, a->vocab, 1.0f);
    return loss;
}

START_TEST(test_xent) {
    trng_t r = {701};
    int64_t n = 6, vocab = 37;
    size_t nv = (size_t)(n * vocab);
    int32_t tgt[6] = {5, -1, 0, 36, -100, 12};
    xent_ctx c = {frand(&r, nv, 2.0), fzeros(nv), tgt, n, vocab};
    /* reference loss and gradient in double */
    double ref_loss = 0, *ref_grad = calloc(nv, sizeof(double));
    float grad_scale = 0.25f;
    for (int64_t t = 0; t < n; t++) {
        if (tgt[t] < 0) continue;
        const float *x = c.logits + t * vocab;
        double mx = -INFINITY, sum = 0;
        for (int64_t i = 0; i < vocab; i++) mx = fmax(mx, x[i]);
        for (int64_t i = 0; i < vocab; i++) sum += exp(x[i] - mx);
        double lse = mx + log(sum);
        ref_loss += lse - x[tgt[t]];
        for (int64_t i = 0; i < vocab; i++) ref_grad[t * vocab + i] = grad_scale * (exp(x[i] - lse) - (i == tgt[t]));
    }
    float *g = fcopy(c.logits, nv);
    float loss = 1.5f;   /* the op adds to the running sum */
    be->xent_fwd_bwd(g, &loss, tgt, n, vocab, grad_scale);
    ck_assert_double_lt(fabs(loss - (1.5 + ref_loss)) / (1.5 + ref_loss), 1e-6);
    ck_assert_double_lt(rel_err_d(g, ref_grad, nv), FWD_TOL);
    for (int64_t i = 0; i < vocab; i++) {
        ck_assert(g[1 * vocab + i] == 0.0f);   /* ignored rows: zero gradient */
        ck_assert(g[4 * vocab + i] == 0.0f);
    }
    /* with grad_scale 1 the written gradient is d loss_sum / d logits */
    memcpy(g, c.logits, nv * 4);
    float l1 = 0;
    be->xent_fwd_bwd(g, &l1, tgt, n, vocab, 1.0f);
    fd_check("xent dlogits", xent_loss, &c, c.logits, g, nv, FD_H, &r);
    /* all rows ignored: no loss, zero gradient */
    int32_t none[6] = {-1, -1, -1, -1, -1, -1};
    memcpy(g, c.logits, nv * 4);
    float l0 = 0;
    be->xent_fwd_bwd(g, &l0, none, n, vocab, 1.0f);
    ck_assert(l0 == 0.0f);
    for (size_t i = 0; i < nv; i++) ck_assert(g[i] == 0.0f);
    free(c.logits); free(c.work); free(ref_grad); free(g);
}
END_TEST

/* ------------------------------------------------------------ Ulysses layouts */

static int64_t ref_hpr(int64_t heads, int P) { return heads >= P ? heads / P : 1; }
static int64_t ref_h0(int64_t j, int64_t heads, int P) { return heads >= P ? j * (heads / P) : (j * heads) / P; }

START_TEST(test_heads_pack_unpack) {
    trng_t r = {801};
    const int64_t cases[][2] = {{8, 4}, {2, 4}, {6, 2}, {1, 4}, {3, 8}};   /* heads, P */
    for (size_t cs = 0; cs < sizeof cases / sizeof cases[0]; cs++) {
        int64_t heads = cases[cs][0], n = 5, hd = 3;
        int P = (int)cases[cs][1];
        int64_t hpr = ref_hpr(heads, P);
        size_t nsrc = (size_t)(n * heads * hd), npk = (size_t)(P * n * hpr * hd);
        float *x = frand(&r, nsrc, 1.0), *pk = fzeros(npk);
        poison(pk, npk);
        be->heads_pack(pk, x, n, heads, hd, P);
        for (int64_t j = 0; j < P; j++)
            for (int64_t t = 0; t < n; t++)
                for (int64_t i = 0; i < hpr; i++)
                    ck_assert_mem_eq(pk + ((j * n + t) * hpr + i) * hd, x + (t * heads + ref_h0(j, heads, P) + i) * hd,
                                     (size_t)hd * 4);

        /* unpack: explicit sum over the ranks holding each head, in order j = 0..P-1 */
        float *y = frand(&r, npk, 1.0), *u = fzeros(nsrc), *want = fzeros(nsrc);
        for (int64_t t = 0; t < n; t++)
            for (int64_t h = 0; h < heads; h++)
                for (int64_t e = 0; e < hd; e++) {
                    float sum = 0;
                    for (int64_t j = 0; j < P; j++) {
                        int64_t h0 = ref_h0(j, heads, P);
                        if (h0 <= h && h < h0 + hpr) sum += y[((j * n + t) * hpr + h - h0) * hd + e];
                    }
                    want[(t * heads + h) * hd + e] = sum;
                }
        poison(u, nsrc);
        be->heads_unpack(u, y, n, heads, hd, P, 0);
        ck_assert_mem_eq(u, want, nsrc * 4);
        be->heads_unpack(u, y, n, heads, hd, P, 1);   /* acc = 1 adds the same sum again */
        for (size_t i = 0; i < nsrc; i++) ck_assert(u[i] == want[i] + want[i]);

        /* adjointness: <pack(x), y> = <x, unpack(y)> (unpack is pack's transpose) */
        be->heads_unpack(u, y, n, heads, hd, P, 0);
        double lhs = dotd(pk, y, npk), rhs = dotd(x, u, nsrc);
        ck_assert_msg(fabs(lhs - rhs) <= 1e-5 * fmax(1.0, fabs(lhs)),
                      "heads=%lld P=%d: <pack x, y> = %.9g but <x, unpack y> = %.9g", (long long)heads, P, lhs, rhs);

        /* unpack(pack(x)) = x times the number of replicas of each head */
        be->heads_unpack(u, pk, n, heads, hd, P, 0);
        int64_t total_copies = 0;
        for (int64_t t = 0; t < n; t++)
            for (int64_t h = 0; h < heads; h++) {
                int copies = 0;
                for (int64_t j = 0; j < P; j++) {
                    int64_t h0 = ref_h0(j, heads, P);
                    copies += h0 <= h && h < h0 + hpr;
                }
                total_copies += copies;
                if (heads >= P) ck_assert_int_eq(copies, 1);
                else ck_assert_int_ge(copies, P / (int)heads);   /* every head is replicated at least P/heads times */
                for (int64_t e = 0; e < hd; e++)
                    ck_assert_float_eq_tol(u[(t * heads + h) * hd + e], copies * x[(t * heads + h) * hd + e], 1e-5);
            }
        ck_assert_int_eq(total_copies, n * P * hpr);   /* every packed slot is one copy of one head */
        free(x); free(pk); free(y); free(u); free(want);
    }
}
END_TEST

/* ------------------------------------------------------------ optimizer */

START_TEST(test_grad_sumsq) {
    trng_t r = {901};
    size_t n = 200003;   /* several fixed-size blocks plus a partial one */
    float *g = frand(&r, n, 0.1);
    double ref = 0.75;
    for (size_t i = 0; i < n; i++) ref += (double)g[i] * g[i];
    float s = 0.75f;
    be->grad_sumsq(&s, g, n);
    ck_assert_double_lt(fabs(s - ref) / ref, 1e-6);
    free(g);
}
END_TEST

/* AdamW against a scalar recurrence in double over 3 steps. */
static void adamw_case(int clip, float wd) {
    trng_t r = {1001 + (uint64_t)clip};
    size_t n = 37;
    float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, max_norm = clip ? 0.5f : 0.0f;
    float *master = frand(&r, n, 1.0), *param = fzeros(n), *m = fzeros(n), *v = fzeros(n);
    double *M = calloc(n, 8), *Mm = calloc(n, 8), *Vv = calloc(n, 8);
    for (size_t i = 0; i < n; i++) M[i] = master[i];
    for (int64_t step = 1; step <= 3; step++) {
        float *g = frand(&r, n, 1.0);
        float sumsq = 0;
        be->grad_sumsq(&sumsq, g, n);
        double norm = sqrt((double)sumsq);
        double c = (max_norm > 0 && norm > max_norm) ? max_norm / norm : 1.0;
        if (clip) ck_assert_double_lt(c, 1.0);   /* the clipping branch is really taken */
        for (size_t i = 0; i < n; i++) {
            double gi = g[i] * c;
            Mm[i] = b1 * Mm[i] + (1 - b1) * gi;
            Vv[i] = b2 * Vv[i] + (1 - b2) * gi * gi;
            double mh = Mm[i] / (1 - pow(b1, (double)step)), vh = Vv[i] / (1 - pow(b2, (double)step));
            M[i] -= lr * (mh / (sqrt(vh) + eps) + wd * M[i]);
        }
        poison(param, n);
        be->adamw(master, param, m, v, g, n, lr, b1, b2, eps, wd, step, &sumsq, max_norm);
        ck_assert_mem_eq(param, master, n * 4);
        ck_assert_double_lt(rel_err_d(master, M, n), 1e-6);
        ck_assert_double_lt(rel_err_d(m, Mm, n), 1e-5);
        ck_assert_double_lt(rel_err_d(v, Vv, n), 1e-5);
        free(g);
    }
    free(master); free(param); free(m); free(v); free(M); free(Mm); free(Vv);
}

START_TEST(test_adamw) {
    adamw_case(0, 0.0f);
    adamw_case(0, 0.1f);
    adamw_case(1, 0.0f);
    adamw_case(1, 0.1f);
}
END_TEST

/* ------------------------------------------------------------ determinism */

#ifdef _OPENMP
static void run_attn_mm(int threads, float *outs[6], const float *q, const float *k, const float *v, const float *dout,
                        const float *x, const float *w, const float *dmm, int64_t s, int64_t hq, int64_t hkv,
                        int64_t hd, int64_t n, int64_t kk, int64_t m) {
    omp_set_num_threads(threads);
    float *lse = fzeros((size_t)(hq * s));
    be->attention_fwd(outs[0], lse, q, k, v, s, hq, hkv, hd, 0.3f, NULL);
    be->attention_bwd(outs[1], outs[2], outs[3], dout, q, k, v, outs[0], lse, s, hq, hkv, hd, 0.3f, NULL);
    be->matmul_fwd(outs[4], x, w, n, kk, m);
    memset(outs[5], 0, (size_t)(n * kk + m * kk) * 4);
    be->matmul_bwd(outs[5], 0, outs[5] + n * kk, dmm, x, w, n, kk, m);
    free(lse);
}
#endif

START_TEST(test_determinism) {
#ifndef _OPENMP
    ck_assert_msg(1, "built without OpenMP: one thread, deterministic by construction");
#else
    trng_t r = {1101};
    int64_t s = 61, hq = 4, hkv = 2, hd = 16, n = 37, kk = 48, m = 300;
    size_t nq = (size_t)(s * hq * hd), nk = (size_t)(s * hkv * hd);
    float *q = frand(&r, nq, 1.0), *k = frand(&r, nk, 1.0), *v = frand(&r, nk, 1.0), *dout = frand(&r, nq, 1.0);
    float *x = frand(&r, (size_t)(n * kk), 1.0), *w = frand(&r, (size_t)(m * kk), 1.0), *dmm = frand(&r, (size_t)(n * m), 1.0);
    size_t sizes[6] = {nq, nq, nk, nk, (size_t)(n * m), (size_t)(n * kk + m * kk)};
    const char *names[6] = {"attention out", "attention dq", "attention dk", "attention dv", "matmul out", "matmul dx|dw"};
    float *a[6], *b[6];
    for (int i = 0; i < 6; i++) { a[i] = fzeros(sizes[i]); b[i] = fzeros(sizes[i]); }
    int saved = omp_get_max_threads();
    run_attn_mm(1, a, q, k, v, dout, x, w, dmm, s, hq, hkv, hd, n, kk, m);
    for (int threads = 2; threads <= 3; threads++) {
        run_attn_mm(threads, b, q, k, v, dout, x, w, dmm, s, hq, hkv, hd, n, kk, m);
        for (int i = 0; i < 6; i++)
            ck_assert_msg(memcmp(a[i], b[i], sizes[i] * 4) == 0, "%s differs between 1 and %d threads", names[i], threads);
    }
    omp_set_num_threads(saved);
    for (int i = 0; i < 6; i++) { free(a[i]); free(b[i]); }
    free(q); free(k); free(v); free(dout); free(x); free(w); free(dmm);
#endif
}
END_TEST

static Suite *cpu_suite(void) {
    Suite *s = suite_create("cpu_ops");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_memory_and_bf16);
    tcase_add_test(tc, test_rmsnorm_fwd);
    tcase_add_test(tc, test_rmsnorm_fd);
    tcase_add_test(tc, test_add_rmsnorm_fwd);
    tcase_add_test(tc, test_add_rmsnorm_fd);
    tcase_add_test(tc, test_matmul_fd);
    tcase_add_test(tc, test_matmul_blocked);
    tcase_add_test(tc, test_matmul_slice);
    tcase_add_test(tc, test_rope_fwd);
    tcase_add_test(tc, test_rope_fd);
    tcase_add_test(tc, test_rope_packed);
    int nshapes = (int)(sizeof attn_shapes / sizeof attn_shapes[0]);
    tcase_add_loop_test(tc, test_attention_fwd, 0, nshapes);
    tcase_add_test(tc, test_attention_documents);
    tcase_add_loop_test(tc, test_attention_fd, 0, nshapes);
    tcase_add_test(tc, test_swiglu);
    tcase_add_test(tc, test_embedding);
    tcase_add_test(tc, test_add_accumulate);
    tcase_add_test(tc, test_xent);
    tcase_add_test(tc, test_heads_pack_unpack);
    tcase_add_test(tc, test_grad_sumsq);
    tcase_add_test(tc, test_adamw);
    tcase_add_test(tc, test_determinism);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(cpu_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
