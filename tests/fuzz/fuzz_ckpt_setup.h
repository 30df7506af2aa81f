/* Shared by the checkpoint harnesses: once per process the real engine (a
 * very small model on the CPU backend) writes a complete checkpoint of step
 * 7 into the fuzz folder, which the harness then damages input by input. */
#ifndef AUTOSP_FUZZ_CKPT_SETUP_H
#define AUTOSP_FUZZ_CKPT_SETUP_H

#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "config.h"
#include "exec/exec.h"
#include "fuzz_common.h"
#include "io/ckpt.h"
#include "model/model.h"
#include "parallel/parallel.h"
#include "plan/plan.h"

/* Fill cfg, model and plan for the model, write its checkpoint, and name
 * the checkpoint's folder in ckdir. */
static inline void fuzz_write_checkpoint(config_t *cfg, model_t *model, plan_t *plan, char *ckdir, size_t len) {
    char err[4096];
    config_defaults(cfg);
    /* a very small model: every input re-reads the checkpoint's files */
    cfg->model.num_hidden_layers = 1;
    cfg->model.hidden_size = 16;
    cfg->model.intermediate_size = 32;
    cfg->model.num_attention_heads = 2;
    cfg->model.num_key_value_heads = 1;
    cfg->model.head_dim = 8;
    cfg->model.vocab_size = 16;
    snprintf(cfg->io.run_dir, sizeof cfg->io.run_dir, "%s/run", fuzz_folder());
    if (model_build(model, &cfg->model, err, sizeof err)) abort();
    plan_target_t t = {.act_bytes = 4, .param_bytes = 4, .grad_bytes = 4};
    if (plan_compile(plan, cfg, model, 1, &t, err, sizeof err) != 0) abort();
    int argc = 1;
    char *args[] = {"fuzz", NULL}, **argv = args;
    static ranks_t r;
    if (par_init(&argc, &argv, &r, err, sizeof err) || backend_cpu.init(0, err, sizeof err)) abort();
    exec_t *e = exec_create(plan, &backend_cpu, &coll_host, &coll_host, &r);
    exec_init_params(e, 1);
    ckpt_state_t st = {.step = 7, .epoch = 1, .cursor = 4, .seed = 1234};
    if (ckpt_save(cfg, plan, e, &r, &coll_host, &st, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    exec_destroy(e);
    snprintf(ckdir, len, "%s/checkpoints/step-00000007", cfg->io.run_dir);
}

#endif
