/* Finite-difference check of the whole model: the executor's gradient of the
 * loss (CPU engine, fp32) against central differences of the loss itself,
 * for every parameter tensor and for random directions over all weights.
 *
 * For a unit direction u the directional derivative g.u is compared with
 * (L(p + h u) - L(p - h u)) / 2h, h chosen so the loss moves by ~1e-2 (well
 * above fp32 rounding of the loss, ~1e-6). Bound: relative error 2e-3 per
 * tensor, 1e-3 for the random whole-model directions (measured: at most
 * 4.3e-4 and 1e-4). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "config.h"
#include "exec/exec.h"
#include "model/model.h"
#include "parallel/parallel.h"
#include "plan/passes.h"
#include "plan/plan.h"
#include "testutil.h"

typedef struct {
    config_t cfg;
    model_t model;
    plan_t plan;
    ranks_t ranks;
    exec_t *e;
    int32_t *tok, *tgt, *pos;
    int64_t *valid;
    exec_batch_t *batch;
} fx_t;

/* Keeps of h and hn set by hand (KEEP_NOT_NEEDED: leave the policy's). */
typedef struct { keep_t h, hn; } keeps_t;

static int find_tensor(const graph_t *g, const char *name) {
    for (int t = 0; t < g->nt; t++)
        if (strcmp(g->t[t].name, name) == 0) return t;
    ck_abort_msg("layer tensor %s missing", name);
    return -1;
}

static void setup_keeps(fx_t *f, const char *policy, keeps_t k) {
    char err[2048];
    char *sets[] = {"model.hidden_size=32", "model.intermediate_size=48", "model.num_hidden_layers=2",
                    "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.vocab_size=40",
                    "model.initializer_range=0.3", "model.rope_theta=100", "train.seq_len=12",
                    "train.global_batch_size=2", NULL};
    char pol[64];
    snprintf(pol, sizeof pol, "checkpointing.policy=%s", policy);
    sets[10] = pol;
    ck_assert_msg(config_load(&f->cfg, NULL, sets, 11, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(model_build(&f->model, &f->cfg.model, err, sizeof err) == 0, "%s", err);
    int argc = 0;
    char **argv = NULL;
    ck_assert_msg(par_init(&argc, &argv, &f->ranks, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(par_set_groups(&f->ranks, 1, err, sizeof err) == 0, "%s", err);
    plan_target_t t = {.act_bytes = 4, .param_bytes = 4, .grad_bytes = 4};
    ck_assert_msg(plan_compile(&f->plan, &f->cfg, &f->model, 1, &t, err, sizeof err) == 0, "%s", err);
    if (k.h != KEEP_NOT_NEEDED) {
        graph_plan_t *gp = &f->plan.layer;
        gp->t[find_tensor(&gp->g, "h")].keep = k.h;
        gp->t[find_tensor(&gp->g, "hn")].keep = k.hn;
        sac_derive(&f->plan, gp, NULL, 0);
        memplan_all(&f->plan, &f->cfg);
    }
    f->e = exec_create(&f->plan, &backend_cpu, &coll_host, &coll_host, &f->ranks);
    exec_init_params(f->e, 7);
    /* random tokens, one masked target per sample (the loss ignores it) */
    int64_t mb = f->plan.micro_steps, n = f->plan.seq_local;
    f->tok = malloc(sizeof(int32_t) * mb * n);
    f->tgt = malloc(sizeof(int32_t) * mb * n);
    f->pos = malloc(sizeof(int32_t) * mb * n);
    f->valid = malloc(sizeof(int64_t) * mb);
    f->batch = malloc(sizeof(exec_batch_t) * mb);
    trng_t r = {99};
    for (int64_t b = 0; b < mb; b++) {
        for (int64_t i = 0; i < n; i++) {
            f->tok[b * n + i] = (int32_t)(trng_next(&r) % 40);
            f->tgt[b * n + i] = i == 3 ? -1 : (int32_t)(trng_next(&r) % 40);
            f->pos[b * n + i] = (int32_t)i;
        }
        f->valid[b] = n - 1;
        f->batch[b] = (exec_batch_t){f->tok + b * n, f->tgt + b * n, f->pos + b * n, NULL};
    }
}

static void setup(fx_t *f, const char *policy) { setup_keeps(f, policy, (keeps_t){KEEP_NOT_NEEDED, KEEP_NOT_NEEDED}); }

static void teardown(fx_t *f) {
    exec_destroy(f->e);
    model_free(&f->model);
    par_finalize(&f->ranks);
    free(f->tok); free(f->tgt); free(f->pos); free(f->valid); free(f->batch);
}

static double loss_at(fx_t *f, const float *p) {
    exec_result_t res;
    exec_set_params(f->e, p);
    exec_forward_backward(f->e, f->batch, f->valid, &res);
    return res.loss;
}

/* Central difference along u (unit norm) against g.u. */
static double fd_rel_err(fx_t *f, const float *p0, const float *g, const float *u, double *gu_out) {
    size_t n = f->plan.n_params;
    double gu = 0;
    for (size_t i = 0; i < n; i++) gu += (double)g[i] * u[i];
    double h = 1e-2 / fmax(fabs(gu), 1e-2);
    if (h > 0.5) h = 0.5;
    float *p = calloc(n, sizeof(float));
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++) p[i] = p0[i] + (float)(h * u[i]);
    double lp = loss_at(f, p);
    for (size_t i = 0; i < n; i++) p[i] = p0[i] - (float)(h * u[i]);
    double lm = loss_at(f, p);
    free(p);
    double fd = (lp - lm) / (2 * h);
    *gu_out = gu;
    return fabs(fd - gu) / fmax(fabs(gu), 1e-3);
}

static void check_model(const char *policy) {
    fx_t f;
    setup(&f, policy);
    size_t n = f.plan.n_params;
    float *p0 = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float)), *u = calloc(n, sizeof(float));
    exec_get_params(f.e, p0, 0);
    exec_result_t res;
    exec_forward_backward(f.e, f.batch, f.valid, &res);
    ck_assert_int_eq(res.valid_targets, 2 * 11);
    exec_gather_grads(f.e, g);

    /* every parameter tensor: direction = its own gradient, normalised, so a
     * wrong gradient (direction or size) shows as FD != |g_T| */
    for (int t = 0; t < f.model.nparams; t++) {
        const param_t *pa = &f.model.params[t];
        double norm = 0;
        for (size_t i = 0; i < pa->numel; i++) norm += (double)g[pa->offset + i] * g[pa->offset + i];
        norm = sqrt(norm);
        ck_assert_msg(norm > 0, "%s: gradient is zero", pa->name);
        memset(u, 0, n * sizeof(float));
        for (size_t i = 0; i < pa->numel; i++) u[pa->offset + i] = (float)(g[pa->offset + i] / norm);
        double gu, e = fd_rel_err(&f, p0, g, u, &gu);
        printf("  [%s] %-48s |g| %.4e  fd rel err %.2e\n", policy, pa->name, gu, e);
        ck_assert_msg(e < 2e-3, "%s (%s): finite difference disagrees, rel err %.3e", pa->name, policy, e);
    }
    /* random directions over all weights */
    trng_t r = {1234};
    for (int k = 0; k < 3; k++) {
        double norm = 0;
        for (size_t i = 0; i < n; i++) { u[i] = (float)trng_normal(&r); norm += (double)u[i] * u[i]; }
        /* mix in the gradient direction so g.u is large enough to measure */
        double gn = 0;
        for (size_t i = 0; i < n; i++) gn += (double)g[i] * g[i];
        for (size_t i = 0; i < n; i++) u[i] = (float)(u[i] / sqrt(norm) + g[i] / sqrt(gn));
        norm = 0;
        for (size_t i = 0; i < n; i++) norm += (double)u[i] * u[i];
        for (size_t i = 0; i < n; i++) u[i] = (float)(u[i] / sqrt(norm));
        double gu, e = fd_rel_err(&f, p0, g, u, &gu);
        printf("  [%s] random direction %d: g.u %.4e  fd rel err %.2e\n", policy, k, gu, e);
        ck_assert_msg(e < 1e-3, "random direction %d (%s): rel err %.3e", k, policy, e);
    }
    free(p0); free(g); free(u);
    teardown(&f);
}

START_TEST(t_fd_whole_model) { check_model("auto"); }
END_TEST

START_TEST(t_fd_whole_model_full_recompute) { check_model("full"); }
END_TEST

/* The residual + post-attention norm under every mix of saving, offloading
 * and recomputing h and hn (h kept: hn is rebuilt as the norm of h alone)
 * gives the save_all loss and gradient exactly: recomputation repeats the
 * same arithmetic. */
START_TEST(t_add_rmsnorm_keeps) {
    fx_t f;
    setup(&f, "save_all");
    size_t n = f.plan.n_params;
    float *g0 = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float));
    exec_result_t r0, r;
    exec_forward_backward(f.e, f.batch, f.valid, &r0);
    exec_gather_grads(f.e, g0);
    teardown(&f);
    keeps_t ks[] = {{KEEP_SAVE, KEEP_RECOMPUTE}, {KEEP_OFFLOAD, KEEP_RECOMPUTE}, {KEEP_RECOMPUTE, KEEP_SAVE},
                    {KEEP_RECOMPUTE, KEEP_OFFLOAD}, {KEEP_RECOMPUTE, KEEP_RECOMPUTE}};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        setup_keeps(&f, "save_all", ks[i]);
        int fused = -1;
        for (int s = 0; s < f.plan.layer.g.ns; s++)
            if (f.plan.layer.g.s[s].op == OP_ADD_RMSNORM) fused = s;
        ck_assert_int_eq(f.plan.layer.recompute_step[fused], 1);
        ck_assert_int_eq(plan_recompute_norm_only(&f.plan.layer, fused), ks[i].h != KEEP_RECOMPUTE);
        exec_forward_backward(f.e, f.batch, f.valid, &r);
        exec_gather_grads(f.e, g);
        printf("  h %s, hn %s: loss %.9g (save_all %.9g)\n", keep_name(ks[i].h), keep_name(ks[i].hn), r.loss, r0.loss);
        ck_assert_msg(r.loss == r0.loss, "h %s, hn %s: loss differs from save_all", keep_name(ks[i].h),
                      keep_name(ks[i].hn));
        ck_assert_msg(memcmp(g, g0, n * sizeof(float)) == 0, "h %s, hn %s: gradient differs from save_all",
                      keep_name(ks[i].h), keep_name(ks[i].hn));
        teardown(&f);
    }
    free(g0); free(g);
}
END_TEST

int main(void) {
    Suite *s = suite_create("model_grad");
    TCase *tc = tcase_create("finite differences");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, t_fd_whole_model);
    tcase_add_test(tc, t_fd_whole_model_full_recompute);
    tcase_add_test(tc, t_add_rmsnorm_keeps);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
