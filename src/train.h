/* The training loop: data, learning-rate schedule, optimizer steps, logs. */
#ifndef AUTOSP_TRAIN_H
#define AUTOSP_TRAIN_H

#include "backend.h"
#include "config.h"
#include "parallel/parallel.h"
#include "plan/plan.h"

typedef struct {
    const char *dump_path;      /* --dump-grads: losses of every step + first-step gradient */
    double predicted_step_s;    /* the plan's predicted step (--gpu's card profile); 0: none */
    const char *predicted_card; /* that profile's name */
} train_opts_t;

/* Learning rate at 1-based step `step`: linear warmup from 0 to lr over
 * warmup_steps, then cosine decay to min_lr at the last step. */
/* Install the SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 handlers: first thing in
 * main, so that a signal during start-up is not lost. A stop signal prints a
 * line at once and stops at the next step boundary; a second SIGINT or
 * SIGTERM ends the process at once. */
void train_install_signals(void);
/* The stop signal received so far (0: none). */
int train_stop_signal(void);

double train_lr(const train_config_t *t, int64_t step);

/* Train with the compiled plan. Returns the process exit status. */
int train_run(const config_t *cfg, const plan_t *plan, const backend_t *be, const coll_ops_t *coll,
              const coll_ops_t *host_coll, const ranks_t *r, const train_opts_t *opts);

/* Gradient dump format (little-endian): "ASPDUMP1", int64 n_params, int64 steps,
 * double loss[steps], float grad[n_params] (the reduced gradient of step 1). */
#define DUMP_MAGIC "ASPDUMP1"

#endif
