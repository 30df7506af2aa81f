/* Shared by the plan compiler's tests: the shipped model shapes, a config
 * and targets for them, and small lookups. */
#ifndef AUTOSP_TEST_PLAN_FIXTURES_H
#define AUTOSP_TEST_PLAN_FIXTURES_H

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "plan/passes.h"
#include "plan/plan.h"
#include "testmodel.h"

#define GiB 1073741824.0

enum { M_TINY, M_3B, M_8B, M_70B, M_1B };

static inline model_t *get_model(int which) {
    static model_t models[5];
    static int built[5];
    if (!built[which]) {
        model_config_t c;
        switch (which) {
        case M_TINY: c = test_llama_cfg(64, 160, 2, 4, 2, 16, 256, 1, 8.0); break;
        case M_3B: c = test_llama_cfg(3072, 8192, 28, 24, 8, 128, 128256, 1, 8.0); break;
        case M_8B: c = test_llama_cfg(4096, 14336, 32, 32, 8, 128, 128256, 0, 8.0); break;
        case M_1B: c = test_llama_cfg(2048, 8192, 16, 32, 8, 64, 128256, 1, 32.0); break;
        default: c = test_llama_cfg(8192, 28672, 80, 64, 8, 128, 128256, 0, 8.0); break;
        }
        char err[256];
        ck_assert_msg(model_build(&models[which], &c, err, sizeof err) == 0, "%s", err);
        built[which] = 1;
    }
    return &models[which];
}

static inline config_t make_cfg(const model_t *m, int64_t S, int64_t gbs, int sp, sac_policy_t policy) {
    config_t c;
    memset(&c, 0, sizeof c);
    c.model = m->cfg;
    c.train.seq_len = S;
    c.train.global_batch_size = gbs;
    c.parallel.sequence_parallel_size = sp;
    c.parallel.zero_stage = 1;
    c.checkpointing.policy = policy;
    return c;
}

static inline plan_target_t bf16_target(double budget) {
    plan_target_t t = {.act_bytes = 2, .param_bytes = 2, .grad_bytes = 2, .memory_bytes = budget, .reserved_bytes = 0};
    return t;
}

/* Attention scratch as the cuda backend asks for it with GQA (two fp32
 * [S, Hq, hd] buffers and row sums), for plans that place it in the workspace. */
static inline size_t attn_scratch(const op_shapes_t *sh) {
    return (size_t)sh->attn_rows * (size_t)sh->hq * ((size_t)sh->hd * 2 + 1) * 4;
}

static inline plan_target_t scratch_target(double budget) {
    plan_target_t t = bf16_target(budget);
    t.attention_scratch_bytes = attn_scratch;
    return t;
}

static inline plan_t *new_plan(void) { return calloc(1, sizeof(plan_t)); }

static inline int compile(plan_t *p, const config_t *c, const model_t *m, int world, plan_target_t t, char *err) {
    return plan_compile(p, c, m, world, &t, err, 512);
}

static inline int find_tensor(const graph_t *g, const char *name) {
    for (int t = 0; t < g->nt; t++)
        if (strcmp(g->t[t].name, name) == 0) return t;
    return -1;
}

/* ------------------------------------------------------------------ SP pass */

#endif
