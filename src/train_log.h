/* What a training run reports, and where: the step and eval lines on the
 * console, metrics.jsonl in the run folder, progress lines inside long
 * steps, the memory check after the first step, the closing summary and
 * the --dump-grads file. Private to train.c and train_log.c. */
#ifndef AUTOSP_TRAIN_LOG_H
#define AUTOSP_TRAIN_LOG_H

#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "exec/exec.h"
#include "parallel/parallel.h"
#include "plan/plan.h"

/* One step's figures. */
typedef struct {
    int64_t step;
    double loss, lr, grad_norm;
    int64_t valid_targets;
    double seconds, flops;      /* wall time of the step, FLOPs it computed (all ranks) */
    coll_times_t comm;
    double host_work_s, host_exposed_s;
    exec_copy_times_t copy;
} step_report_t;

/* The log's state over a run. */
typedef struct {
    const config_t *cfg;
    const plan_t *plan;
    const ranks_t *ranks;
    int lead;                   /* rank 0 writes; the others only count */
    FILE *metrics;              /* run_dir/metrics.jsonl on rank 0, else NULL */
    int64_t first_step;         /* the first step this launch trains */
    double tokens_per_step;
    double peak_tflops;         /* the card's dense bf16 peak, 0: unknown (no MFU) */
    size_t peak_bytes;
    double t_start, t_timed, tokens_timed, first_loss, last_loss;
    double win_time, win_tokens, win_flops;   /* the window since the previous step line */
    int64_t win_steps, n_timed;
    double predicted_s;         /* the plan's predicted step, 0: none (train_opts_t) */
    const char *predicted_card;
} train_log_t;

void log_init(train_log_t *L, const config_t *cfg, const plan_t *plan, const ranks_t *r, double peak_tflops,
              int64_t first_step, FILE *metrics);
/* A trained step: the memory check after the first, the timing, the
 * console line every io.log_every steps, the metrics line. */
void log_step(train_log_t *L, exec_t *e, const step_report_t *s);
/* A validation loss over `tokens` tokens that took `ms`. */
void log_eval(const train_log_t *L, int64_t step, double loss, int64_t tokens, double ms);
/* The closing line: steps, loss from first to last, mean throughput. */
void log_done(const train_log_t *L, int64_t step);
/* Close metrics.jsonl (a failure to write it ends the run). */
void log_close(train_log_t *L);


/* Keep the metrics lines of steps 1..upto (a resumed run rewrites the steps
 * after its checkpoint), then open the file for appending. */
FILE *log_open_metrics(const char *path, int64_t upto);

/* Progress lines inside long steps (rank 0): once a step has run
 * ASP_PROGRESS_S seconds (default 10), at most that often. */
void progress_begin(int64_t steps, int64_t micro_steps);
void progress_step(int64_t step, double t0);
void progress_step_took(double seconds);
void progress_end(void);

/* --dump-grads: every step's loss and the first step's gradient. */
void write_dump(const char *path, const double *losses, int64_t steps, const float *grads, size_t n);

#endif
