/* The executor's offload copies are ordered by its waits alone. The cpu
 * backend copies at once, which hides a missing wait; here the copies run
 * as late as the backend contract allows (at the first copy_wait that
 * covers them, in the order they were enqueued, as one in-order copy stream
 * would): a read of a staging slot before its copy back was waited for, or
 * a slot overwritten before its copy to the host was, then gives different
 * gradients. With
 * attention's outputs, h and the layer inputs offloaded the losses and
 * gradients must be bitwise those of the all-saved plan, over two steps of
 * two micro-steps. A backend that never waits must be caught. And a failed
 * host allocation is a refusal (exit 2), not a crash mid-training. */
#include <check.h>
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

/* ------------------------------------------------------------------ late copies */

typedef struct { void *dst; const void *src; size_t bytes; int tag; } pending_t;
static pending_t pend[4096];
static int npend;
static int waits_work = 1;   /* 0: copy_wait does nothing (the negative control) */

static void late_copy_async(void *dst, const void *src, size_t bytes, int to_host, int tag) {
    (void)to_host;
    ck_assert_int_lt(npend, 4096);
    ck_assert(tag >= 0 && tag < BACKEND_COPY_TAGS);
    pend[npend++] = (pending_t){dst, src, bytes, tag};
}

/* Run the pending copies up to and including the last one of `tag` (-1: all). */
static void run_pending(int tag) {
    int last = -1;
    for (int i = 0; i < npend; i++)
        if (tag < 0 || pend[i].tag == tag) last = i;
    for (int i = 0; i <= last; i++) memcpy(pend[i].dst, pend[i].src, pend[i].bytes);
    memmove(pend, pend + last + 1, (size_t)(npend - last - 1) * sizeof pend[0]);
    npend -= last + 1;
}

static void late_copy_wait(int tag) {
    if (waits_work) run_pending(tag);
}

static void late_synchronize(void) { run_pending(-1); }

static void late_copy_times(double *bytes, double *busy_s, double *exposed_s) { *bytes = *busy_s = *exposed_s = 0; }

static backend_t late_backend(void) {
    backend_t b = backend_cpu;
    b.copy_async = late_copy_async;
    b.copy_wait = late_copy_wait;
    b.synchronize = late_synchronize;
    b.copy_times = late_copy_times;
    return b;
}

/* ------------------------------------------------------------------ runs */

static config_t cfg;
static model_t model;
static ranks_t ranks;

static void setup_model(void) {
    char err[2048];
    char *sets[] = {"model.hidden_size=32", "model.intermediate_size=48", "model.num_hidden_layers=6",
                    "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.vocab_size=40",
                    "model.initializer_range=0.3", "model.rope_theta=100", "train.seq_len=24",
                    "train.global_batch_size=2", "checkpointing.policy=save_all"};
    ck_assert_msg(config_load(&cfg, NULL, sets, 11, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(model_build(&model, &cfg.model, err, sizeof err) == 0, "%s", err);
    int argc = 0;
    char **argv = NULL;
    ck_assert_msg(par_init(&argc, &argv, &ranks, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(par_set_groups(&ranks, 1, err, sizeof err) == 0, "%s", err);
}

static int find_tensor(const graph_t *g, const char *name) {
    for (int t = 0; t < g->nt; t++)
        if (strcmp(g->t[t].name, name) == 0) return t;
    ck_abort_msg("layer tensor %s missing", name);
    return -1;
}

/* The save_all plan (offload 0), with o, lse and h on the host (1), and
 * the layer inputs too (2). */
static void make_plan(plan_t *p, int offload) {
    char err[2048];
    plan_target_t t = {.act_bytes = 4, .param_bytes = 4, .grad_bytes = 4};
    ck_assert_msg(plan_compile(p, &cfg, &model, 1, &t, err, sizeof err) == 0, "%s", err);
    if (!offload) return;
    graph_plan_t *gp = &p->layer;
    const char *names[] = {"o", "lse", "h"};
    for (int i = 0; i < 3; i++) gp->t[find_tensor(&gp->g, names[i])].keep = KEEP_OFFLOAD;
    p->inputs_offloaded = offload == 2;
    sac_derive(p, gp, NULL, 0);
    memplan_all(p, &cfg);
    ck_assert_int_eq(p->mem.offload_host_layers, 6 - PLAN_OFFLOAD_SLOTS);
    ck_assert_int_eq(plan_input_offloaded(p, gp), offload == 2);
}

/* Two optimizer steps; the loss of each and the gradients after the second. */
static void train2(const plan_t *p, const backend_t *be, double *loss, float *grads) {
    exec_t *e = exec_create(p, be, &coll_host, &coll_host, &ranks);
    exec_init_params(e, 11);
    int64_t mb = p->micro_steps, n = p->seq_local;
    int32_t *tok = malloc(sizeof(int32_t) * mb * n), *tgt = malloc(sizeof(int32_t) * mb * n),
            *pos = malloc(sizeof(int32_t) * mb * n);
    int64_t *valid = malloc(sizeof(int64_t) * mb);
    exec_batch_t *batch = malloc(sizeof(exec_batch_t) * mb);
    trng_t r = {5};
    for (int step = 0; step < 2; step++) {
        for (int64_t b = 0; b < mb; b++) {
            for (int64_t i = 0; i < n; i++) {
                tok[b * n + i] = (int32_t)(trng_next(&r) % 40);
                tgt[b * n + i] = (int32_t)(trng_next(&r) % 40);
                pos[b * n + i] = (int32_t)i;
            }
            valid[b] = n;
            batch[b] = (exec_batch_t){tok + b * n, tgt + b * n, pos + b * n, NULL};
        }
        exec_result_t res;
        exec_forward_backward(e, batch, valid, &res);
        loss[step] = res.loss;
        if (step == 1) exec_gather_grads(e, grads);
        exec_optim_t opt = {1e-2, 0.9, 0.95, 1e-8, 0.1, 1.0, step + 1};
        exec_optimizer_step(e, &opt, &res);
        be->synchronize();
    }
    exec_destroy(e);
    free(tok); free(tgt); free(pos); free(valid); free(batch);
}

START_TEST(t_late_copies_exact) {
    setup_model();
    plan_t *ref = calloc(1, sizeof *ref), *off = calloc(1, sizeof *off);
    make_plan(ref, 0);
    make_plan(off, 2);
    ck_assert_int_eq(ref->micro_steps, 2);
    const size_t n = ref->n_params;
    float *g0 = malloc(n * sizeof(float)), *g1 = malloc(n * sizeof(float)), *g2 = malloc(n * sizeof(float));
    double l0[2], l1[2], l2[2];
    backend_t late = late_backend();
    train2(ref, &backend_cpu, l0, g0);
    waits_work = 1;
    for (int mode = 1; mode <= 2; mode++) {
        plan_t *m = calloc(1, sizeof *m);
        make_plan(m, mode);
        train2(m, &late, l1, g1);
        free(m);
        ck_assert_int_eq(npend, 0);
        for (int s = 0; s < 2; s++)
            ck_assert_msg(l0[s] == l1[s], "plan %d step %d loss %.9g vs %.9g", mode, s + 1, l0[s], l1[s]);
        ck_assert_msg(memcmp(g0, g1, n * sizeof(float)) == 0, "plan %d: gradients differ with late copies", mode);
    }
    /* the control: copies that arrive only at the end of the step are caught */
    waits_work = 0;
    train2(off, &late, l2, g2);
    waits_work = 1;
    ck_assert_msg(l2[0] != l0[0] || memcmp(g0, g2, n * sizeof(float)) != 0,
                  "a backend whose waits do nothing gave the same result: the test cannot see the ordering");
    free(g0); free(g1); free(g2);
    free(ref); free(off);
    model_free(&model);
    par_finalize(&ranks);
}
END_TEST

/* A node that cannot give the host tier: the run is refused before its
 * first step, exit status 2 (the message names the bytes and the node). */
static void *no_host_alloc(size_t bytes, const char *what) {
    (void)bytes;
    (void)what;
    return NULL;
}

START_TEST(t_host_alloc_failure_refused) {
    setup_model();
    plan_t *off = calloc(1, sizeof *off);
    make_plan(off, 2);
    ck_assert_uint_gt(plan_host_bytes(off), 0);
    backend_t b = backend_cpu;
    b.host_alloc = no_host_alloc;
    exec_create(off, &b, &coll_host, &coll_host, &ranks);   /* exits 2 */
    ck_abort_msg("exec_create went on without its host memory");
}
END_TEST

int main(void) {
    Suite *s = suite_create("offload_order");
    TCase *tc = tcase_create("late copies");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, t_late_copies_exact);
    tcase_add_exit_test(tc, t_host_alloc_failure_refused, 2);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_FORK);   /* the refusal exits its process */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
