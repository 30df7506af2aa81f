/* The executor: walks a compiled plan on one rank. Forward over layers keeping
 * what SAC saved; backward in reverse, recomputing what it dropped; gradients
 * reduced over all ranks; AdamW on this rank's ZeRO shard; parameters
 * gathered. All math goes through the backend table, all communication
 * through the collectives table: the executor itself computes nothing. */
#ifndef AUTOSP_EXEC_H
#define AUTOSP_EXEC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "parallel/parallel.h"
#include "plan/plan.h"

typedef struct exec exec_t;

/* One micro-step's inputs for this rank: plan->seq_local entries each. */
typedef struct {
    const int32_t *tokens;
    const int32_t *targets;     /* -1: no loss at this position */
    const int32_t *positions;   /* RoPE positions (global, or within the document) */
    const int32_t *doc_start;   /* packed documents: plan->seq_pad entries for the WHOLE sample, the first
                                 * position of each position's document (loader_next_docs); NULL: one causal stream */
} exec_batch_t;

/* Document starts of one sample from its doc_start array: cu[0] = 0 <
 * cu[1] < ... < cu[n] = n_rows. Returns n (cu has n_rows + 1 entries at
 * most) and the longest document in *max_len. */
int64_t docs_from_starts(const int32_t *doc_start, int64_t n_rows, int32_t *cu, int64_t *max_len);

typedef struct {
    double lr, beta1, beta2, eps, weight_decay, grad_clip;
    int64_t step;               /* 1-based optimizer step (bias correction) */
} exec_optim_t;

typedef struct {
    double loss;                /* mean over the global valid targets of the step */
    double grad_norm;           /* global L2 norm before clipping */
    int64_t valid_targets;      /* over the whole job */
} exec_result_t;

/* Allocate the plan's arenas (one allocation each) and prepare the rank.
 * The plan must have been compiled for r->world_size ranks and r's groups.
 * `coll` moves backend buffers, `host_coll` host scalars (the same table for
 * the cpu backend). */
exec_t *exec_create(const plan_t *plan, const backend_t *be, const coll_ops_t *coll,
                    const coll_ops_t *host_coll, const ranks_t *r);
void exec_destroy(exec_t *e);

/* Initial weights from the model's deterministic initialiser (same on every
 * world size): compute weights in full, fp32 master on this rank's shard. */
void exec_init_params(exec_t *e, uint64_t seed);

/* Forward and backward over `micro_steps` samples (plan->micro_steps), with
 * `sample_valid[i]` the valid-target count of sample i (whole sample), then
 * gradient reduction over all ranks. Fills loss and valid_targets. */
/* Called by exec_forward_backward as each layer's forward (phase 0) and
 * backward (phase 1) begins, on the host (on the GPU: as the host issues the
 * layer's work). The train loop uses it for progress lines in long steps;
 * NULL: none. */
extern void (*exec_progress_hook)(int phase, int layer, int layers);

void exec_forward_backward(exec_t *e, const exec_batch_t *batches, const int64_t *sample_valid,
                           exec_result_t *res);

/* Forward only over `micro_steps` samples, the loss as exec_forward_backward
 * computes it (the same plan and buffers; no backward, no gradient touched):
 * the validation loss. Fills loss and valid_targets. */
void exec_eval(exec_t *e, const exec_batch_t *batches, const int64_t *sample_valid, exec_result_t *res);

/* Clip and AdamW on this rank's shard, then gather the weights. Fills grad_norm.
 * With the optimizer on the host, AdamW runs on a worker thread beside the
 * next forward, which waits for each bucket's weights as it reaches them;
 * every reader of weights or optimizer state waits for the whole update. */
void exec_optimizer_step(exec_t *e, const exec_optim_t *opt, exec_result_t *res);

/* Full reduced gradient as fp32 (after exec_forward_backward; collective:
 * every rank must call it). `out` has plan->n_params elements, on every rank. */
void exec_gather_grads(exec_t *e, float *out);
/* Full compute weights as fp32 into `out` on rank `root` (every rank when
 * root < 0; `out` may be NULL elsewhere). Collective under ZeRO-3, where
 * each rank holds a shard of them: every rank must call it. */
void exec_get_params(exec_t *e, float *out, int root);
/* Replace the weights (compute copy and this rank's fp32 master shard) with
 * `in` (plan->n_params fp32 values, the same on every rank). */
void exec_set_params(exec_t *e, const float *in);

/* Optimizer state for checkpoints: the fp32 master weights and AdamW moments,
 * which ZeRO-1 splits over the ranks. */
typedef enum { EXEC_MASTER = 0, EXEC_ADAM_M, EXEC_ADAM_V } exec_state_t;

/* The parts of the model's parameters whose optimizer state this rank holds:
 * model elements [model_begin, + len), kept at shard_off of its shard (one
 * part per gradient bucket, padding excluded; the whole model without
 * ZeRO-1). Returns the count; fills `out` (plan_n_buckets entries at most)
 * unless it is NULL. */
typedef struct {
    size_t model_begin, len, shard_off;
} exec_piece_t;
int exec_state_pieces(const exec_t *e, exec_piece_t *out);
/* Full state `which` (plan->n_params fp32) into `out` on rank `root` of the
 * world; `out` may be NULL elsewhere. Collective: every rank must call it. */
void exec_get_optimizer_state(exec_t *e, exec_state_t which, float *out, int root);
/* The weights (as exec_get_params) or state `which` (as
 * exec_get_optimizer_state) in model order, one gradient bucket at a time,
 * to sink(ctx, vals, n) on rank `root`, so no rank holds a model-sized
 * buffer (a checkpoint of 8B parameters would need 32 GB per array).
 * Collective. Returns the first non-zero value the sink returned (it is not
 * called again after one), else 0. */
typedef int (*exec_sink_t)(void *ctx, const float *vals, size_t n);
/* Piecewise exec_set_params and exec_set_optimizer_state, so a checkpoint
 * loads without model-sized buffers: the weights of model elements
 * [begin, begin + n) (the compute copy where this rank holds it, the master
 * where its shard does), and state `which` at shard elements
 * [shard_at, shard_at + n). Local. */
void exec_set_params_range(exec_t *e, const float *vals, size_t begin, size_t n);
void exec_set_optimizer_state_range(exec_t *e, exec_state_t which, size_t shard_at, const float *vals, size_t n);
int exec_stream_params(exec_t *e, int root, exec_sink_t sink, void *ctx);
int exec_stream_optimizer_state(exec_t *e, exec_state_t which, int root, exec_sink_t sink, void *ctx);

/* Replace this rank's part of state `which` with `vals`: plan->shard_len
 * values laid out as the shard (each piece at its shard_off, padding zero).
 * Local: no communication. */
void exec_set_optimizer_state(exec_t *e, exec_state_t which, const float *vals);

/* With ASP_PROFILE=1 in the environment every step is timed (the device is
 * synchronised around each, so totals are slower than a normal run): print
 * the time by phase and op kind. Nothing is printed otherwise. */
void exec_print_profile(const exec_t *e, FILE *out);
/* Forget the times so far (the training loop calls it after the first step,
 * whose library set-up would otherwise count as op time). */
void exec_profile_reset(exec_t *e);

/* Communication time since the previous call (all-to-alls, gradient
 * reduction and the part of it the backward did not hide); call after a
 * step, once its results were read. */
void exec_comm_times(exec_t *e, coll_times_t *out);

/* The host optimizer (optimizer.offload): *work_s, the seconds its last
 * finished AdamW took on the CPU (it runs beside the next forward); and
 * *exposed_s, the seconds the step waited for it since the previous call
 * (the part the forward did not hide). Both 0 without it. */
void exec_host_optimizer_times(exec_t *e, double *work_s, double *exposed_s);

/* Activation offload since the previous call: bytes copied between the
 * device and the host, seconds the copy stream was busy, and seconds the
 * compute stood waiting for it (the part the compute did not hide). Call
 * after a step, once its results were read. */
typedef struct {
    double bytes, busy_s, exposed_s;
} exec_copy_times_t;
void exec_copy_times(exec_t *e, exec_copy_times_t *out);

/* Pinned host memory this rank allocated for the plan's host tier. */
size_t exec_host_bytes(const exec_t *e);
/* seconds the pinned host allocations took */
double exec_host_alloc_seconds(const exec_t *e);

/* Device memory the engine has taken since exec_create, as the backend
 * measures it (0 when it cannot). */
size_t exec_measured_bytes(const exec_t *e);

#endif
