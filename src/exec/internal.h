/* The executor's shared state, seen only by the files of src/exec/. One
 * struct, each group of fields owned (written after exec_create) by one
 * file; the others may read it:
 *   exec.c   everything set once by exec_create (plan, backend, regions,
 *            element sizes), the profile counters
 *   walk.c   what changes per sample or graph: inputs, docs, eval,
 *            cur_grad, micro_index, last_micro, the loss scalars
 *   state.c  weights, gradients and bucket slots (slot_*, gslot_*)
 *   optim.c  the host optimizer (ho) and bucket_sumsq
 *   tier.c   nothing of its own: it moves bytes between the workspace,
 *            the staging slots (offload_stage) and the host (offload)
 * The functions each file offers the others are declared at the end. */
#ifndef AUTOSP_EXEC_INTERNAL_H
#define AUTOSP_EXEC_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "exec/exec.h"

typedef enum { PHASE_FWD, PHASE_BWD } phase_t;

struct exec {
    /* ---- exec.c: fixed at exec_create */
    const plan_t *plan;
    const model_t *model;
    const backend_t *be;
    const coll_ops_t *coll;      /* collectives on backend buffers */
    const coll_ops_t *host_coll; /* collectives on host scalars */
    const ranks_t *ranks;
    uint8_t *arena[ARENA__COUNT];
    size_t act, par, grd;       /* element sizes */
    /* region pointers */
    uint8_t *params, *grads, *master, *adam_m, *adam_v;
    uint8_t *param_dev_stage;   /* optimizer.offload_params: a bucket's shard on its way to the gather */
    uint8_t *saved, *final_hidden, *ws, *resid_grad[2], *logits, *a2a_send, *a2a_recv;
    int32_t *tokens, *targets, *positions;
    int32_t *doc_start, *doc_cu;    /* backend memory (data.documents eos), NULL otherwise */
    int32_t *doc_cu_host;
    double *rope_freq;
    float *scalars;             /* [0] loss sum, [1] gradient sum of squares */
    uint8_t *offload, *offload_stage; /* host slots; device staging slots (memplan_t) */
    size_t host_bytes;          /* pinned host memory this rank allocated */
    double host_alloc_s;        /* the time allocating it took */
    int shards;                 /* ranks sharing the optimizer state (1 for ZeRO-0) */
    int shard_rank;             /* which slice of every bucket this rank owns (0 for ZeRO-0) */
    size_t baseline_used;       /* device memory in use before the arenas */
    int profile;                /* ASP_PROFILE=1: time every step (synchronising) */
    double prof[3][OP__COUNT + 2]; /* seconds by phase (forward, recompute, backward) and op; +optimizer, +reduce */
    int64_t prof_calls[3][OP__COUNT + 2];

    /* ---- walk.c: the sample and the step in flight */
    attn_docs_t docs;           /* the current sample's documents */
    int docs_on;                /* the current sample has documents: attention takes &docs */
    int eval;                   /* forward only (exec_eval): the loss without its gradient */
    int micro_index;            /* micro-step of the optimizer step, from 0 */
    int last_micro;             /* the micro-step that completes the gradients: buckets reduce as they finish */
    int cur_grad;               /* which resid_grad holds the gradient flowing down */

    /* ---- state.c: the model-state pipeline (ZeRO 2-3, optimizer offload); see docs/plan.md */
    uint8_t *param_buf[PLAN_BUCKET_SLOTS], *grad_buf[PLAN_BUCKET_SLOTS];
    uint8_t *grad_shard, *grad_stage[PLAN_BUCKET_SLOTS], *param_stage[PLAN_PARAM_STAGES];
    int slot_holds[PLAN_BUCKET_SLOTS];      /* ZeRO-3: bucket whose weights param_buf[s] holds, -1 none */
    int slot_waited[PLAN_BUCKET_SLOTS];     /* the compute stream already waits for that gather */
    long long slot_ticket[PLAN_BUCKET_SLOTS];
    int gslot_bucket[PLAN_BUCKET_SLOTS];    /* bucket whose gradient slot s holds, -1 none */
    int gslot_done[PLAN_BUCKET_SLOTS];      /* its reduction and copy are issued (ticket valid) */
    long long gslot_ticket[PLAN_BUCKET_SLOTS];

    /* ---- optim.c: the host optimizer (optimizer.offload). A worker thread
     * runs AdamW bucket by bucket in forward order into the param_stage ring
     * while the next forward runs; the main thread issues each bucket's copy
     * back to the device (and its gather) just before the forward needs it. */
    struct {
        pthread_t thread;
        pthread_mutex_t mu;
        pthread_cond_t cv;
        int started, quit;
        long long step_id, step_seen;       /* steps asked for / taken by the worker */
        int pending;                        /* a step's weights are not all issued yet */
        int done_upto;                      /* buckets [0, done_upto) computed into the ring */
        int issued_upto;                    /* buckets whose copy back the main thread issued */
        long long ticket[PLAN_PARAM_STAGES];/* each stage's last copy back */
        exec_optim_t opt;
        float sumsq;
        double work_s, idle_s;              /* worker's AdamW time; the main thread's wait while the device
                                               stood idle (exposed), since last read */
    } ho;
    double *bucket_sumsq;                   /* optimizer offload: fp64 sum of squares of each bucket's slice */
};

enum { PROF_FWD = 0, PROF_RECOMPUTE = 1, PROF_BWD = 2 };
enum { PROF_OPTIMIZER = OP__COUNT, PROF_REDUCE = OP__COUNT + 1 };

enum { SCALAR_LOSS = 0, SCALAR_SUMSQ = 1 };

/* ---- exec.c */
/* With ASP_PROFILE: synchronise and time one call, added to prof[phase][what]. */
double ex_prof_begin(exec_t *e);
void ex_prof_end(exec_t *e, int phase, int what, double t0);
/* Before reading results on the host: lets an asynchronous collective
 * library report a failed peer instead of blocking forever. */
void ex_coll_wait(exec_t *e);
/* A plan region's address in its arena (NULL for an empty region). */
uint8_t *ex_region_ptr(exec_t *e, const region_t *r);

/* ---- state.c */
/* The compute weights of a parameter slot (layer -1: prologue/epilogue), and
 * where the backward accumulates its gradient. */
uint8_t *ex_param_ptr(exec_t *e, int layer, int slot);
uint8_t *ex_grad_ptr(exec_t *e, int layer, int slot);
/* This rank's slice of bucket b in model coordinates [*lo, *hi); returns the
 * slice's first flat index. */
size_t ex_slice_of(const exec_t *e, const plan_bucket_t *b, size_t *lo, size_t *hi);
/* ZeRO-3: no bucket is gathered any more (the shards changed). */
void ex_weights_changed(exec_t *e);
/* Bucket b's weights for the next compute (gathered, waited for); gather
 * `next` ahead while `cur` computes. */
void ex_need_weights(exec_t *e, int b);
void ex_prefetch_weights(exec_t *e, int next, int cur);
/* Bucket b's backward is about to write its gradient / has finished it;
 * drain every gradient slot at the end of a micro-step. */
void ex_grad_begin(exec_t *e, int b);
void ex_bucket_done(exec_t *e, int bi);
void ex_grad_drain_all(exec_t *e);

/* ---- optim.c */
/* The host optimizer's weights of bucket bi (and those before) are issued
 * back to the device; all of them; stop its thread. */
void ex_need_updated(exec_t *e, int bi);
void ex_host_optimizer_finish(exec_t *e);
void ex_host_optimizer_stop(exec_t *e);

/* ---- tier.c */
/* Layer's device staging slot; send a layer's offloaded tensors to the host
 * after its forward; take them back before its backward (and prefetch the
 * layer below); wait before writing a layer's input into its slot. */
uint8_t *ex_stage_slot(exec_t *e, int layer);
void ex_offload_layer(exec_t *e, int layer);
void ex_reload_layer(exec_t *e, int layer);
void ex_before_layer_input(exec_t *e, int layer);

#endif
