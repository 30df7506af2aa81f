/* The executor: see exec.h. The walk follows docs/plan.md ("the executor's
 * walk") exactly; the plan decides where every tensor lives, this file only
 * turns plan entries into pointers and calls. */
#include "exec.h"

#include <math.h>
#include <pthread.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu/host_optim.h"
#include "data.h"
#include "util.h"

typedef enum { PHASE_FWD, PHASE_BWD } phase_t;

struct exec {
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
    attn_docs_t docs;           /* the current sample's documents */
    int docs_on;                /* the current sample has documents: attention takes &docs */
    int eval;                   /* forward only (exec_eval): the loss without its gradient */
    double *rope_freq;
    float *scalars;             /* [0] loss sum, [1] gradient sum of squares */
    uint8_t *offload, *offload_stage; /* host slots; device staging slots (memplan_t) */
    size_t host_bytes;          /* pinned host memory this rank allocated */
    double host_alloc_s;        /* the time allocating it took */
    /* model-state pipeline (ZeRO 2-3, optimizer offload); see docs/plan.md */
    uint8_t *param_buf[PLAN_BUCKET_SLOTS], *grad_buf[PLAN_BUCKET_SLOTS];
    uint8_t *grad_shard, *grad_stage[PLAN_BUCKET_SLOTS], *param_stage[PLAN_PARAM_STAGES];
    int slot_holds[PLAN_BUCKET_SLOTS];      /* ZeRO-3: bucket whose weights param_buf[s] holds, -1 none */
    int slot_waited[PLAN_BUCKET_SLOTS];     /* the compute stream already waits for that gather */
    long long slot_ticket[PLAN_BUCKET_SLOTS];
    int gslot_bucket[PLAN_BUCKET_SLOTS];    /* bucket whose gradient slot s holds, -1 none */
    int gslot_done[PLAN_BUCKET_SLOTS];      /* its reduction and copy are issued (ticket valid) */
    long long gslot_ticket[PLAN_BUCKET_SLOTS];
    int micro_index;                        /* micro-step of the optimizer step, from 0 */
    /* The host optimizer (optimizer.offload): a worker thread runs AdamW
     * bucket by bucket in forward order into the param_stage ring while the
     * next forward runs; the main thread issues each bucket's copy back to
     * the device (and its gather) just before the forward needs it. */
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
    int shards;                 /* ranks sharing the optimizer state (1 for ZeRO-0) */
    int shard_rank;             /* which slice of every bucket this rank owns (0 for ZeRO-0) */
    int last_micro;             /* the micro-step that completes the gradients: buckets reduce as they finish */
    int cur_grad;               /* which resid_grad holds the gradient flowing down */
    size_t baseline_used;       /* device memory in use before the arenas */
    int profile;                /* ASP_PROFILE=1: time every step (synchronising) */
    double prof[3][OP__COUNT + 2]; /* seconds by phase (forward, recompute, backward) and op; +optimizer, +reduce */
    int64_t prof_calls[3][OP__COUNT + 2];
};

enum { PROF_FWD = 0, PROF_RECOMPUTE = 1, PROF_BWD = 2 };
enum { PROF_OPTIMIZER = OP__COUNT, PROF_REDUCE = OP__COUNT + 1 };

static double prof_begin(exec_t *e) {
    if (!e->profile) return 0;
    e->be->synchronize();
    return asp_now();
}

static void prof_end(exec_t *e, int phase, int what, double t0) {
    if (!e->profile) return;
    e->be->synchronize();
    e->prof[phase][what] += asp_now() - t0;
    e->prof_calls[phase][what]++;
}

enum { SCALAR_LOSS = 0, SCALAR_SUMSQ = 1 };

/* Before reading results on the host: lets an asynchronous collective
 * library report a failed peer instead of blocking forever. */
static void coll_wait(exec_t *e) {
    if (e->coll->wait) e->coll->wait();
}

static uint8_t *region_ptr(exec_t *e, const region_t *r) {
    if (r->bytes == 0) return NULL;
    if (!e->arena[r->arena])
        asp_die(ASP_EXIT_FAILURE, "internal: plan region in unallocated arena %s", arena_name((arena_t)r->arena));
    return e->arena[r->arena] + r->offset;
}

/* memset of a large host region from every core */
static void host_zero(void *p, size_t bytes) {
    const size_t chunk = (size_t)64 << 20;
    const size_t n = (bytes + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic)
    for (size_t i = 0; i < n; i++) {
        size_t lo = i * chunk, len = bytes - lo < chunk ? bytes - lo : chunk;
        memset((char *)p + lo, 0, len);
    }
}


/* Which step may touch a tensor stored in the packed layout: ROPE_SPLIT
 * writes it, the all-to-all sends it (or receives it), o_proj reads it; any
 * other op would read it as [n][heads][hd]. */
static void check_packed(const plan_t *plan, const graph_t *g) {
    for (int si = 0; si < g->ns; si++) {
        const graph_step_t *s = &g->s[si];
        for (int io = 0; io < 2; io++) {
            int n = io ? s->nout : s->nin;
            for (int i = 0; i < n; i++) {
                int tid = io ? s->out[i] : s->in[i];
                const tensor_desc_t *t = &g->t[tid];
                if (t->packed <= 1) continue;
                int ok = t->packed == plan->sp && t->heads > 0 && t->heads % t->packed == 0 && !t->stats;
                switch (s->op) {
                case OP_ROPE_SPLIT:   /* one degree for k and v */
                    ok = ok && io == 1 && (i == 0 || g->t[s->out[1]].packed == g->t[s->out[2]].packed);
                    break;
                case OP_A2A_SEQ_TO_HEAD: ok = ok && io == 0; break;
                case OP_A2A_HEAD_TO_SEQ: ok = ok && io == 1; break;
                case OP_MATMUL: ok = ok && io == 0 && s->k % t->packed == 0; break;
                default: ok = 0;
                }
                if (!ok)
                    asp_die(ASP_EXIT_FAILURE, "internal: %s tensor %s is stored packed for %d ranks, which step %d "
                            "(%s, %s) cannot %s", g->name, t->name, t->packed, si, op_name(s->op), s->label,
                            io ? "write" : "read");
            }
        }
    }
}

exec_t *exec_create(const plan_t *plan, const backend_t *be, const coll_ops_t *coll,
                    const coll_ops_t *host_coll, const ranks_t *r) {
    if (plan->world != r->world_size || plan->sp != r->sp_size)
        asp_die(ASP_EXIT_FAILURE, "internal: plan compiled for world %d (SP %d) but running on %d (SP %d)",
                plan->world, plan->sp, r->world_size, r->sp_size);
    if (plan->target.act_bytes != (int)dtype_size(be->act_dtype) ||
        plan->target.param_bytes != (int)dtype_size(be->param_dtype) ||
        plan->target.grad_bytes != (int)dtype_size(be->grad_dtype))
        asp_die(ASP_EXIT_FAILURE, "internal: plan element sizes do not match the %s backend", be->name);
    check_packed(plan, &plan->prologue.g);
    check_packed(plan, &plan->layer.g);
    check_packed(plan, &plan->epilogue.g);
    exec_t *e = asp_calloc(1, sizeof *e, "executor");
    e->plan = plan;
    e->model = plan->model;
    e->be = be;
    e->coll = coll;
    e->host_coll = host_coll;
    e->ranks = r;
    e->act = dtype_size(be->act_dtype);
    e->par = dtype_size(be->param_dtype);
    e->grd = dtype_size(be->grad_dtype);
    e->baseline_used = be->memory_used ? be->memory_used() : 0;
    e->profile = asp_env_flag("ASP_PROFILE");

    static const char *what[ARENA__COUNT] = {"parameters and gradients", "optimizer state",
                                             "saved activations", "workspace", "host offload",
                                             "host optimizer state"};
    for (int a = 0; a < ARENA__COUNT; a++) {
        size_t bytes = plan->mem.arena_bytes[a];
        if (!bytes) continue;
        if (a != ARENA_HOST && a != ARENA_HOST_STATE) {
            e->arena[a] = be->alloc(bytes, what[a]);
            continue;
        }
        /* before the first step: a node that cannot give the host tier is a clear refusal */
        double t0 = asp_now();
        e->arena[a] = be->host_alloc(bytes, what[a]);
        e->host_alloc_s += asp_now() - t0;
        if (!e->arena[a]) {
            char need[32], phys[32];
            long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
            asp_die(ASP_EXIT_USAGE,
                    "cannot allocate %s of pinned host memory for %s on rank %d (this node has %s in all, shared "
                    "by its ranks); lower checkpointing.host_budget_gib, set checkpointing.offload or "
                    "optimizer.offload false, lower train.seq_len or add ranks",
                    asp_fmt_bytes(need, sizeof need, (double)bytes), what[a], r->world_rank,
                    pages > 0 && page > 0 ? asp_fmt_bytes(phys, sizeof phys, (double)pages * (double)page) : "?");
        }
        e->host_bytes += bytes;
    }
    const memplan_t *m = &plan->mem;
    e->params = region_ptr(e, &m->params);
    e->param_dev_stage = region_ptr(e, &m->param_dev_stage);
    e->grads = region_ptr(e, &m->grads);
    e->master = region_ptr(e, &m->master);
    e->adam_m = region_ptr(e, &m->adam_m);
    e->adam_v = region_ptr(e, &m->adam_v);
    e->saved = region_ptr(e, &m->saved_layers);
    e->final_hidden = region_ptr(e, &m->final_hidden);
    e->ws = region_ptr(e, &m->workspace);
    e->resid_grad[0] = region_ptr(e, &m->resid_grad[0]);
    e->resid_grad[1] = region_ptr(e, &m->resid_grad[1]);
    e->logits = region_ptr(e, &m->logits);
    e->a2a_send = region_ptr(e, &m->a2a_send);
    e->a2a_recv = region_ptr(e, &m->a2a_recv);
    e->tokens = (int32_t *)region_ptr(e, &m->tokens);
    e->targets = (int32_t *)region_ptr(e, &m->targets);
    e->positions = (int32_t *)region_ptr(e, &m->positions);
    e->doc_start = (int32_t *)region_ptr(e, &m->doc_start);
    e->doc_cu = (int32_t *)region_ptr(e, &m->doc_cu);
    if (e->doc_cu)
        e->doc_cu_host = asp_malloc((size_t)(plan->seq_pad + 1) * sizeof(int32_t), "document starts");
    e->rope_freq = (double *)region_ptr(e, &m->rope_freq);
    e->scalars = (float *)region_ptr(e, &m->scalars);
    e->offload = region_ptr(e, &m->offload);
    e->offload_stage = region_ptr(e, &m->offload_stage);
    for (int k = 0; k < PLAN_BUCKET_SLOTS; k++) {
        e->param_buf[k] = region_ptr(e, &m->param_buf[k]);
        e->grad_buf[k] = region_ptr(e, &m->grad_buf[k]);
        e->grad_stage[k] = region_ptr(e, &m->grad_stage[k]);
        e->slot_holds[k] = e->gslot_bucket[k] = -1;
    }
    e->grad_shard = region_ptr(e, &m->grad_shard);
    for (int k = 0; k < PLAN_PARAM_STAGES; k++) e->param_stage[k] = region_ptr(e, &m->param_stage[k]);
    if ((plan->zero_stage >= 2 || plan->optim_offload) && e->grd != 4)
        asp_die(ASP_EXIT_FAILURE, "internal: ZeRO-%d and the host optimizer need fp32 gradients", plan->zero_stage);
    if (plan->optim_offload) {
        host_optim_threads(r->local_size);
        e->bucket_sumsq = asp_calloc((size_t)plan_n_buckets(plan), sizeof(double), "gradient norm per bucket");
    }
    /* the backend's op scratch comes from the plan: no op allocates while training */
    if (be->set_scratch) be->set_scratch(region_ptr(e, &m->scratch), m->scratch.bytes);

    e->shards = plan->shards;
    e->shard_rank = plan->shards > 1 ? r->world_rank : 0;

    /* Padding elements of the flat buffers must be zero: they take part in
     * the reduce-scatter and all-gather but belong to no parameter. */
    if (plan->params_offload) host_zero(e->params, m->params.bytes);
    else be->zero(e->params, m->params.bytes);
    if (e->grads) be->zero(e->grads, m->grads.bytes);
    for (int k = 0; k < PLAN_BUCKET_SLOTS; k++) {
        if (e->param_buf[k]) be->zero(e->param_buf[k], m->param_buf[k].bytes);
        if (e->grad_buf[k]) be->zero(e->grad_buf[k], m->grad_buf[k].bytes);
    }
    if (plan->optim_offload) {
        /* host memory: padding of the shard and of the weight staging stays
         * zero (tens of GiB for 8B: cleared by the node's cores) */
        host_zero(e->adam_m, m->adam_m.bytes);
        host_zero(e->adam_v, m->adam_v.bytes);
        host_zero(e->master, m->master.bytes);
        host_zero(e->grad_shard, m->grad_shard.bytes);
        for (int k = 0; k < PLAN_PARAM_STAGES; k++) host_zero(e->param_stage[k], m->param_stage[k].bytes);
    } else {
        be->zero(e->adam_m, m->adam_m.bytes);
        be->zero(e->adam_v, m->adam_v.bytes);
        be->zero(e->master, m->master.bytes);
        if (e->grad_shard) be->zero(e->grad_shard, m->grad_shard.bytes);
    }

    int64_t half = e->model->hd / 2;
    double *freq = asp_malloc((size_t)half * sizeof(double), "RoPE frequencies");
    model_rope_inv_freq(e->model, freq);
    be->to_device(e->rope_freq, freq, (size_t)half * sizeof(double));
    free(freq);
    return e;
}

static void host_optimizer_stop(exec_t *e);
static void host_optimizer_finish(exec_t *e);

void exec_destroy(exec_t *e) {
    if (!e) return;
    host_optimizer_stop(e);
    for (int a = 0; a < ARENA__COUNT; a++) {
        if (!e->arena[a]) continue;
        if (a == ARENA_HOST || a == ARENA_HOST_STATE) e->be->host_free(e->arena[a]);
        else e->be->free(e->arena[a]);
    }
    free(e->bucket_sumsq);
    free(e->doc_cu_host);
    free(e);
}

size_t exec_measured_bytes(const exec_t *e) {
    if (!e->be->memory_used) return 0;
    size_t used = e->be->memory_used();
    return used > e->baseline_used ? used - e->baseline_used : 0;
}


/* ------------------------------------------------------------------ parameters */

/* Bucket holding flat element fi. */
static int flat_bucket(const plan_t *p, size_t fi) {
    if (fi < p->bucket_len[0]) return 0;
    size_t l = (fi - p->bucket_len[0]) / p->bucket_len[1];
    return l < (size_t)p->model->L ? (int)l + 1 : (int)p->model->L + 1;
}

/* The compute weights of a parameter slot: in the full flat buffer, or
 * (ZeRO-3) in the buffer its bucket was gathered into. */
static uint8_t *param_ptr(exec_t *e, int layer, int slot) {
    size_t fi = plan_flat_index(e->plan, model_param_offset(e->model, layer, slot));
    if (e->plan->zero_stage < 3) return e->params + fi * e->par;
    int b = flat_bucket(e->plan, fi), s = plan_bucket_slot(e->plan, b);
    if (e->slot_holds[s] != b || !e->slot_waited[s])
        asp_die(ASP_EXIT_FAILURE, "internal: ZeRO-3 weights of bucket %d used before they were gathered", b);
    plan_bucket_t bk;
    plan_bucket(e->plan, b, &bk);
    return e->param_buf[s] + (fi - bk.flat_begin) * e->par;
}

/* Where the backward accumulates a parameter slot's gradient: the full flat
 * buffer, or (ZeRO 2-3) its bucket's gradient buffer. */
static uint8_t *grad_ptr(exec_t *e, int layer, int slot) {
    size_t fi = plan_flat_index(e->plan, model_param_offset(e->model, layer, slot));
    if (e->plan->zero_stage < 2) return e->grads + fi * e->grd;
    int b = flat_bucket(e->plan, fi), s = plan_bucket_slot(e->plan, b);
    if (e->gslot_bucket[s] != b)
        asp_die(ASP_EXIT_FAILURE, "internal: gradient of bucket %d written outside its buffer", b);
    plan_bucket_t bk;
    plan_bucket(e->plan, b, &bk);
    return e->grad_buf[s] + (fi - bk.flat_begin) * e->grd;
}

/* Optimizer state lives on the device or, with the optimizer on the host,
 * in pinned host memory: copies in and out of it. */
static void state_to_host(exec_t *e, void *dst, const void *src, size_t bytes) {
    if (e->plan->optim_offload) memcpy(dst, src, bytes);
    else e->be->to_host(dst, src, bytes);
}

static void state_to_dev(exec_t *e, void *dst, const void *src, size_t bytes) {
    if (e->plan->optim_offload) memcpy(dst, src, bytes);
    else e->be->to_device(dst, src, bytes);
}

/* ZeRO-3: no bucket is gathered any more (the shards changed). */
static void weights_changed(exec_t *e) {
    for (int k = 0; k < PLAN_BUCKET_SLOTS; k++) e->slot_holds[k] = -1;
}

/* This rank's slice of bucket b in model coordinates: [*lo, *hi) (empty when
 * the slice is all padding), and the slice's first flat index. */
static size_t slice_of(const exec_t *e, const plan_bucket_t *b, size_t *lo, size_t *hi) {
    size_t first = (size_t)e->shard_rank * b->slice_len;           /* within the bucket */
    size_t end = first + b->slice_len < b->model_len ? first + b->slice_len : b->model_len;
    *lo = b->model_begin + first;
    *hi = first < end ? b->model_begin + end : *lo;
    return b->flat_begin + first;
}

/* Copy fp32 model-ordered values [model_begin, + n) into the compute
 * weights, bucket by bucket: the flat buffer, or under ZeRO-3 the part of
 * them in this rank's weight shard. */
static void params_from_f32(exec_t *e, const float *in, size_t model_begin, size_t n) {
    const plan_t *p = e->plan;
    for (int bi = 0; bi < plan_n_buckets(p); bi++) {
        plan_bucket_t b;
        plan_bucket(p, bi, &b);
        size_t blo = b.model_begin, bhi = b.model_begin + b.model_len, base;
        if (p->zero_stage >= 3) {
            slice_of(e, &b, &blo, &bhi);
            base = b.shard_off;          /* shard position of model element blo */
        } else {
            base = b.flat_begin;         /* flat position of model element b.model_begin */
            blo = b.model_begin;
        }
        size_t lo = blo > model_begin ? blo : model_begin;
        size_t hi = bhi < model_begin + n ? bhi : model_begin + n;
        if (lo >= hi) continue;
        uint8_t *dst = e->params + (base + lo - blo) * e->par;
        if (p->params_offload) host_accumulate(dst, e->be->param_dtype, in + (lo - model_begin), hi - lo, 0);
        else e->be->from_f32(dst, e->be->param_dtype, in + (lo - model_begin), hi - lo);
    }
    weights_changed(e);
}

/* The weights are drawn once, a chunk at a time, and each chunk goes both
 * to the compute weights (in full, or this rank's shard under ZeRO-3) and
 * to the part of the fp32 master this rank's slices hold (the padding stays
 * zero): the same values as drawing them for each apart, in half the time
 * (an 8B model's 8e9 normal samples take seconds of all the cores). */
void exec_init_params(exec_t *e, uint64_t seed) {
    const plan_t *p = e->plan;
    const size_t chunk = (size_t)1 << 24;
    float *buf = asp_malloc(chunk * sizeof(float), "weight initialisation");
    for (size_t b = 0; b < p->n_params; b += chunk) {
        size_t n = p->n_params - b < chunk ? p->n_params - b : chunk;
        model_init_params(e->model, seed, b, n, buf);
        exec_set_params_range(e, buf, b, n);
    }
    free(buf);
}

/* fp32 model-ordered copy of a flat buffer (compute weights or gradients) */
static void flat_to_f32(exec_t *e, float *out, const uint8_t *flat, dtype_t t) {
    const plan_t *p = e->plan;
    size_t es = dtype_size(t);
    for (int bi = 0; bi < plan_n_buckets(p); bi++) {
        plan_bucket_t b;
        plan_bucket(p, bi, &b);
        e->be->to_f32(out + b.model_begin, flat + b.flat_begin * es, t, b.model_len);
    }
}

/* What a sharded gather reads: the optimizer state, the ZeRO-3 weight shard
 * or the reduced gradient shard. */
typedef enum { SHARD_STATE, SHARD_PARAMS, SHARD_GRADS } shard_kind_t;

static uint8_t *state_buf(exec_t *e, exec_state_t which) {
    return which == EXEC_MASTER ? e->master : which == EXEC_ADAM_M ? e->adam_m : e->adam_v;
}

/* n fp32 values of this rank's shard from element `at` on. */
static void shard_read(exec_t *e, shard_kind_t kind, exec_state_t which, float *out, size_t at, size_t n) {
    const plan_t *p = e->plan;
    switch (kind) {
    case SHARD_STATE:
        state_to_host(e, out, state_buf(e, which) + at * sizeof(float), n * sizeof(float));
        return;
    case SHARD_PARAMS:
        if (p->params_offload) host_to_f32(out, e->params + at * e->par, e->be->param_dtype, n);
        else e->be->to_f32(out, e->params + at * e->par, e->be->param_dtype, n);
        return;
    case SHARD_GRADS:
        if (!p->optim_offload) {
            e->be->to_f32(out, e->grad_shard + at * 4, DT_F32, n);
        } else if (p->host_grad_bytes == 4) {
            memcpy(out, e->grad_shard + at * 4, n * sizeof(float));
        } else {
            const uint16_t *g = (const uint16_t *)e->grad_shard + at;
            for (size_t i = 0; i < n; i++) {
                uint32_t u = (uint32_t)g[i] << 16;
                memcpy(&out[i], &u, 4);
            }
        }
        return;
    }
}

/* A sharded quantity in model order, bucket by bucket, to sink(ctx, vals, n)
 * on rank `root` (every rank when root < 0). Collective when the state is
 * sharded: each bucket is gathered in chunks of every rank's slice (chunk c
 * of every slice arrives as `world` consecutive pieces; rank r's slice is the
 * bucket's r-th part), so the receivers hold one bucket, never the model. A
 * sink that fails is not called again; the gathers go on, so the ranks stay
 * matched. */
static int shard_stream(exec_t *e, shard_kind_t kind, exec_state_t which, int root, exec_sink_t sink, void *ctx) {
    const plan_t *p = e->plan;
    int here = root < 0 || e->ranks->world_rank == root, rc = 0;
    size_t largest = 0;
    for (int bi = 0; bi < plan_n_buckets(p); bi++) {
        plan_bucket_t b;
        plan_bucket(p, bi, &b);
        if (b.model_len > largest) largest = b.model_len;
    }
    float *bucket = here ? asp_malloc(largest * sizeof(float), "bucket gather") : NULL;
    /* the weights are whole on every rank below ZeRO-3: the root reads its own */
    int w = kind == SHARD_PARAMS && p->zero_stage < 3 ? 1 : e->shards;
    size_t chunk = (size_t)1 << 20;
    float *tmp = w > 1 ? asp_malloc((size_t)w * chunk * sizeof(float), "shard gather") : NULL;
    for (int bi = 0; bi < plan_n_buckets(p); bi++) {
        plan_bucket_t b;
        plan_bucket(p, bi, &b);
        if (w == 1) {
            if (!here) continue;
            if (kind == SHARD_PARAMS && p->zero_stage < 3)
                e->be->to_f32(bucket, e->params + b.flat_begin * e->par, e->be->param_dtype, b.model_len);
            else
                shard_read(e, kind, which, bucket, b.shard_off, b.model_len);
        } else {
            for (size_t c = 0; c < b.slice_len; c += chunk) {
                size_t n = b.slice_len - c < chunk ? b.slice_len - c : chunk;
                float *mine = tmp + (size_t)e->ranks->world_rank * n;
                shard_read(e, kind, which, mine, b.shard_off + c, n);
                e->host_coll->allgather(e->ranks->world, mine, tmp, n, DT_F32);
                if (!here) continue;
                for (int r = 0; r < w; r++) {
                    size_t at = (size_t)r * b.slice_len + c;   /* within the bucket */
                    if (at >= b.model_len) break;
                    size_t k = b.model_len - at < n ? b.model_len - at : n;
                    memcpy(bucket + at, tmp + (size_t)r * n, k * sizeof(float));
                }
            }
        }
        if (here && !rc) rc = sink(ctx, bucket, b.model_len);
    }
    free(tmp);
    free(bucket);
    return rc;
}

typedef struct {
    float *out;
    size_t at;
} copy_sink_t;

static int copy_to(void *ctx, const float *vals, size_t n) {
    copy_sink_t *c = ctx;
    memcpy(c->out + c->at, vals, n * sizeof(float));
    c->at += n;
    return 0;
}

/* The same into out (plan->n_params fp32). */
static void shard_gather(exec_t *e, shard_kind_t kind, exec_state_t which, float *out, int root) {
    copy_sink_t c = {out, 0};
    shard_stream(e, kind, which, root, copy_to, &c);
}

int exec_stream_params(exec_t *e, int root, exec_sink_t sink, void *ctx) {
    host_optimizer_finish(e);
    return shard_stream(e, SHARD_PARAMS, EXEC_MASTER, root, sink, ctx);
}

int exec_stream_optimizer_state(exec_t *e, exec_state_t which, int root, exec_sink_t sink, void *ctx) {
    host_optimizer_finish(e);
    return shard_stream(e, SHARD_STATE, which, root, sink, ctx);
}

void exec_get_params(exec_t *e, float *out, int root) {
    host_optimizer_finish(e);
    shard_gather(e, SHARD_PARAMS, EXEC_MASTER, out, root);
}

void exec_set_params_range(exec_t *e, const float *vals, size_t begin, size_t n) {
    const plan_t *p = e->plan;
    host_optimizer_finish(e);
    params_from_f32(e, vals, begin, n);
    for (int bi = 0; bi < plan_n_buckets(p); bi++) {
        plan_bucket_t b;
        plan_bucket(p, bi, &b);
        size_t lo, hi;
        slice_of(e, &b, &lo, &hi);
        size_t a = lo > begin ? lo : begin, z = hi < begin + n ? hi : begin + n;
        if (a < z)
            state_to_dev(e, e->master + (b.shard_off + (a - lo)) * sizeof(float), vals + (a - begin),
                         (z - a) * sizeof(float));
    }
}

void exec_set_params(exec_t *e, const float *in) { exec_set_params_range(e, in, 0, e->plan->n_params); }

int exec_state_pieces(const exec_t *e, exec_piece_t *out) {
    const plan_t *p = e->plan;
    int n = 0;
    for (int bi = 0; bi < plan_n_buckets(p); bi++) {
        plan_bucket_t b;
        plan_bucket(p, bi, &b);
        size_t lo, hi;
        slice_of(e, &b, &lo, &hi);
        if (hi <= lo) continue;
        if (out) out[n] = (exec_piece_t){lo, hi - lo, b.shard_off};
        n++;
    }
    return n;
}

void exec_get_optimizer_state(exec_t *e, exec_state_t which, float *out, int root) {
    host_optimizer_finish(e);
    shard_gather(e, SHARD_STATE, which, out, root);
}

void exec_set_optimizer_state(exec_t *e, exec_state_t which, const float *vals) {
    exec_set_optimizer_state_range(e, which, 0, vals, e->plan->shard_len);
}

void exec_set_optimizer_state_range(exec_t *e, exec_state_t which, size_t shard_at, const float *vals, size_t n) {
    host_optimizer_finish(e);
    if (shard_at > e->plan->shard_len || n > e->plan->shard_len - shard_at)
        asp_die(ASP_EXIT_FAILURE, "internal: optimizer state [%zu, +%zu) outside the shard of %zu", shard_at, n,
                e->plan->shard_len);
    state_to_dev(e, state_buf(e, which) + shard_at * sizeof(float), vals, n * sizeof(float));
}

/* After the reduction each rank holds the reduced gradient of its slices
 * only: gather every bucket in place (ZeRO 0-1 on the device), or gather
 * the gradient shards (ZeRO 2-3, the host optimizer), then convert to the
 * model's order. */
void exec_gather_grads(exec_t *e, float *out) {
    const plan_t *p = e->plan;
    if (p->zero_stage >= 2 || p->optim_offload) {
        shard_gather(e, SHARD_GRADS, EXEC_MASTER, out, -1);
        return;
    }
    if (e->shards > 1)
        for (int bi = 0; bi < plan_n_buckets(p); bi++) {
            plan_bucket_t b;
            plan_bucket(p, bi, &b);
            uint8_t *bucket = e->grads + b.flat_begin * e->grd;
            e->coll->allgather(e->ranks->world, bucket + (size_t)e->shard_rank * b.slice_len * e->grd, bucket,
                               b.slice_len, e->be->grad_dtype);
        }
    coll_wait(e);
    flat_to_f32(e, out, e->grads, e->be->grad_dtype);
}

/* ------------------------------------------------------------------ tensor locations */

typedef struct {
    const graph_plan_t *gp;
    int layer;              /* layer index for the layer graph, -1 for prologue/epilogue */
    int is_layer, is_prologue, is_epilogue;
    /* inside the graph's tiled region: the tile's first row and row count
     * (rows 0: the whole sequence). Whole-sequence tensors are seen from
     * row0 on; the region's tiled intermediates hold just the tile. */
    int64_t row0, rows;
} walk_t;

/* A pointer into a [rows, width] tensor at the walk's tile. */
static uint8_t *at_tile(exec_t *e, const walk_t *w, int tid, uint8_t *base) {
    if (!w->rows || w->gp->t[tid].tiled) return base;
    return base + (size_t)w->row0 * (size_t)w->gp->g.t[tid].width * e->act;
}

static uint8_t *stage_slot(exec_t *e, int layer);

/* Layer `layer`'s input: in its saved slot, or with the inputs on the host
 * in its staging slot (written there by the layer below, brought back from
 * the host before its backward). */
static uint8_t *layer_input(exec_t *e, int layer) {
    if (layer >= (int)e->model->L) return e->final_hidden;
    const graph_plan_t *lp = plan_layer_plan(e->plan, layer);
    if (plan_input_offloaded(e->plan, lp)) return stage_slot(e, layer) + lp->t[lp->g.input].saved_off;
    return e->saved + plan_layer_saved_off(e->plan, layer) + lp->t[lp->g.input].saved_off;
}

static uint8_t *tensor_at_whole(exec_t *e, const walk_t *w, int tid, phase_t ph) {
    const graph_t *g = &w->gp->g;
    const tensor_plan_t *tp = &w->gp->t[tid];
    if (tid == g->output) {     /* written by the forward only */
        if (w->is_prologue) return layer_input(e, 0);
        return layer_input(e, w->layer + 1);
    }
    if (tid == g->input) {
        if (w->is_epilogue) return e->final_hidden;
        return layer_input(e, w->layer);
    }
    if (tp->keep == KEEP_SAVE) {
        if (!w->is_layer)
            asp_die(ASP_EXIT_FAILURE, "internal: %s tensor %s planned as saved", g->name, g->t[tid].name);
        return e->saved + plan_layer_saved_off(e->plan, w->layer) + tp->saved_off;
    }
    size_t off = ph == PHASE_FWD ? tp->fwd_off : tp->bwd_off;
    if (off == PLAN_NO_OFFSET)
        asp_die(ASP_EXIT_FAILURE, "internal: %s tensor %s has no %s workspace slot", g->name, g->t[tid].name,
                ph == PHASE_FWD ? "forward" : "backward");
    return e->ws + off;
}

static uint8_t *tensor_at(exec_t *e, const walk_t *w, int tid, phase_t ph) {
    return at_tile(e, w, tid, tensor_at_whole(e, w, tid, ph));
}

/* Gradient of a tensor. The residual stream's gradient flows between graphs
 * in the two resid_grad buffers: the graph output's gradient is in
 * resid_grad[cur], the graph input's gradient goes to resid_grad[1 - cur]. */
static uint8_t *grad_at(exec_t *e, const walk_t *w, int tid) {
    const graph_t *g = &w->gp->g;
    if (tid == g->output) return at_tile(e, w, tid, e->resid_grad[e->cur_grad]);
    if (tid == g->input) return at_tile(e, w, tid, e->resid_grad[1 - e->cur_grad]);
    size_t off = w->gp->t[tid].grad_off;
    if (off == PLAN_NO_OFFSET)
        asp_die(ASP_EXIT_FAILURE, "internal: %s tensor %s has no gradient slot", g->name, g->t[tid].name);
    return at_tile(e, w, tid, e->ws + off);
}

static int64_t tensor_rows(const exec_t *e, const tensor_desc_t *t) {
    return t->rows == ROWS_GLOBAL ? e->plan->seq_pad : e->plan->seq_local;
}

static uint8_t *step_param(exec_t *e, const walk_t *w, const graph_step_t *s) {
    return param_ptr(e, w->is_layer ? w->layer : -1, s->param);
}

static uint8_t *step_param_grad(exec_t *e, const walk_t *w, const graph_step_t *s) {
    return grad_ptr(e, w->is_layer ? w->layer : -1, s->param);
}

static int64_t a2a_heads_per_rank(int64_t heads, int P) { return heads >= P ? heads / P : 1; }

/* The degree a tensor is packed for, as the ops take it (1: plain layout). */
static int layout_p(const graph_t *g, int tid) { return g->t[tid].packed > 1 ? g->t[tid].packed : 1; }

static uint8_t *staging(exec_t *e, uint8_t *buf, const char *which, const graph_t *g, int si) {
    if (!buf)
        asp_die(ASP_EXIT_FAILURE, "internal: %s step %d (%s) needs the %s staging buffer but the plan reserved none",
                g->name, si, g->s[si].label, which);
    return buf;
}

/* The sequence-sharded -> head-sharded all-to-all of step si's head
 * tensor src into dst: sent as it is when src already holds per-peer blocks
 * (packed), else packed into the a2a_send staging first (`staged`). The
 * forward of SEQ_TO_HEAD and the backward of HEAD_TO_SEQ both send this way. */
static void a2a_send_heads(exec_t *e, const walk_t *w, int si, const uint8_t *src, uint8_t *dst, int staged) {
    const graph_step_t *s = &w->gp->g.s[si];
    const plan_t *p = e->plan;
    if (staged) {
        uint8_t *send = staging(e, e->a2a_send, "a2a_send", &w->gp->g, si);
        e->be->heads_pack(send, src, p->seq_local, s->heads, s->head_dim, p->sp);
        src = send;
    }
    size_t count = (size_t)(p->seq_local * a2a_heads_per_rank(s->heads, p->sp) * s->head_dim);
    e->coll->alltoall(e->ranks->sp, src, dst, count, e->be->act_dtype);
}

/* ------------------------------------------------------------------ forward */

/* Attention's scratch lives in the layer workspace, one buffer for each of
 * its runs (0 forward, 1 recompute, 2 backward; graph_plan_t); -1 gives the
 * backend its planned op scratch back. */
static void attention_scratch(exec_t *e, const walk_t *w, int run) {
    const graph_plan_t *gp = w->gp;
    if (!gp->attn_scratch_bytes || !e->be->use_scratch) return;
    if (run < 0) {
        e->be->use_scratch(region_ptr(e, &e->plan->mem.scratch), e->plan->mem.scratch.bytes);
        return;
    }
    size_t off = gp->attn_scratch_off[run];
    if (off == PLAN_NO_OFFSET)
        asp_die(ASP_EXIT_FAILURE, "internal: %s has no attention scratch for run %d", gp->g.name, run);
    e->be->use_scratch(e->ws + off, gp->attn_scratch_bytes);
}

static void lmhead_loss(exec_t *e, const walk_t *w, const graph_step_t *s, float grad_scale) {
    const backend_t *be = e->be;
    const plan_t *p = e->plan;
    int tx = s->in[0];
    const uint8_t *x = tensor_at(e, w, tx, PHASE_FWD);
    uint8_t *dx = grad_at(e, w, tx);
    const uint8_t *W = step_param(e, w, s);
    uint8_t *dW = e->eval ? NULL : step_param_grad(e, w, s);   /* validation touches no gradient */
    int64_t d = w->gp->g.t[tx].width, V = e->model->V, n = p->seq_local;
    for (int64_t c = 0; c < n; c += p->loss_chunk) {
        int64_t rows = n - c < p->loss_chunk ? n - c : p->loss_chunk;
        size_t xoff = (size_t)c * (size_t)d * e->act;
        be->matmul_fwd(e->logits, x + xoff, W, rows, d, V);
        be->xent_fwd_bwd(e->logits, &e->scalars[SCALAR_LOSS], e->targets + c, rows, V, grad_scale);
        if (!e->eval) be->matmul_bwd(dx + xoff, 0, dW, e->logits, x + xoff, W, rows, d, V);
    }
}

static void run_forward(exec_t *e, const walk_t *w, int si, phase_t ph, float grad_scale) {
    const backend_t *be = e->be;
    const graph_t *g = &w->gp->g;
    const graph_step_t *s = &g->s[si];
    const plan_t *p = e->plan;
    const tensor_desc_t *t0 = &g->t[s->out[0] >= 0 ? s->out[0] : s->in[0]];
    int64_t n = w->rows ? w->rows : tensor_rows(e, t0);
#define IN(i) tensor_at(e, w, s->in[i], ph)
#define OUT(i) tensor_at(e, w, s->out[i], ph)
    switch (s->op) {
    case OP_EMBED:
        be->embed_fwd(OUT(0), e->tokens, step_param(e, w, s), n, g->t[s->out[0]].width);
        break;
    case OP_RMSNORM:
        be->rmsnorm_fwd(OUT(0), IN(0), step_param(e, w, s), n, g->t[s->in[0]].width,
                        (float)e->model->cfg.rms_norm_eps);
        break;
    case OP_MATMUL:
        if (layout_p(g, s->in[0]) > 1)   /* o_proj on the packed attention output */
            be->matmul_blocked_fwd(OUT(0), IN(0), step_param(e, w, s), n, s->k, s->m, layout_p(g, s->in[0]));
        else
            be->matmul_fwd(OUT(0), IN(0), step_param(e, w, s), n, s->k, s->m);
        break;
    case OP_ROPE_SPLIT:
        be->rope_split_fwd(OUT(0), OUT(1), OUT(2), IN(0), e->positions, e->rope_freq, n, s->heads, s->kv_heads,
                           s->head_dim, layout_p(g, s->out[0]), layout_p(g, s->out[1]));
        break;
    case OP_ATTENTION:
        attention_scratch(e, w, ph == PHASE_FWD ? 0 : 1);
        be->attention_fwd(OUT(0), (float *)OUT(1), IN(0), IN(1), IN(2), n, s->heads, s->kv_heads, s->head_dim,
                          (float)(1.0 / sqrt((double)s->head_dim)), e->docs_on ? &e->docs : NULL);
        attention_scratch(e, w, -1);
        break;
    case OP_ADD:
        be->add_fwd(OUT(0), IN(0), IN(1), (size_t)n * (size_t)t0->width);
        break;
    case OP_ADD_RMSNORM:
        if (ph == PHASE_BWD && plan_recompute_norm_only(w->gp, si))
            /* h was kept: rebuild hn from it, as the fused op would have */
            be->rmsnorm_fwd(OUT(1), OUT(0), step_param(e, w, s), n, t0->width, (float)e->model->cfg.rms_norm_eps);
        else
            be->add_rmsnorm_fwd(OUT(0), OUT(1), IN(0), IN(1), step_param(e, w, s), n, t0->width,
                                (float)e->model->cfg.rms_norm_eps);
        break;
    case OP_SWIGLU:
        be->swiglu_fwd(OUT(0), IN(0), n, g->t[s->out[0]].width);
        break;
    case OP_LMHEAD_LOSS:
        lmhead_loss(e, w, s, grad_scale);
        break;
    case OP_A2A_SEQ_TO_HEAD:
        /* a packed tensor is already the per-peer blocks: send it as it is */
        a2a_send_heads(e, w, si, IN(0), OUT(0), plan_a2a_staging(w->gp, si).fwd_send);
        break;
    case OP_A2A_HEAD_TO_SEQ: {
        /* o is stored packed: receive straight into it */
        int64_t hpr = a2a_heads_per_rank(s->heads, p->sp);
        int staged = plan_a2a_staging(w->gp, si).fwd_recv;
        uint8_t *dst = staged ? staging(e, e->a2a_recv, "a2a_recv", g, si) : OUT(0);
        e->coll->alltoall(e->ranks->sp, IN(0), dst, (size_t)(p->seq_local * hpr * s->head_dim), be->act_dtype);
        if (staged) be->heads_unpack(OUT(0), dst, p->seq_local, s->heads, s->head_dim, p->sp, 0);
        break;
    }
    default:
        asp_die(ASP_EXIT_FAILURE, "internal: op %s has no forward in the executor", op_name(s->op));
    }
#undef IN
#undef OUT
}

/* ------------------------------------------------------------------ backward */

static int first_write(const walk_t *w, int si, int i) { return w->gp->grad_first[si][i]; }

static void need_overwrite(const walk_t *w, int si, int i) {
    if (!first_write(w, si, i)) {
        const graph_t *g = &w->gp->g;
        asp_die(ASP_EXIT_FAILURE, "internal: %s step %d (%s) can only overwrite the gradient of %s", g->name, si,
                op_name(g->s[si].op), g->t[g->s[si].in[i]].name);
    }
}

/* The gradient of output tensor tid, or NULL when no step reads tid (no
 * backward wrote one: it is zero). Every reader of tid comes after its
 * producer, so by the producer's backward the gradient is complete. */
static const uint8_t *out_grad_or_null(exec_t *e, const walk_t *w, int tid) {
    const graph_t *g = &w->gp->g;
    if (tid == g->output) return grad_at(e, w, tid);
    for (int s = 0; s < g->ns; s++)
        for (int i = 0; i < g->s[s].nin; i++)
            if (g->s[s].in[i] == tid) return grad_at(e, w, tid);
    return NULL;
}

static void run_backward(exec_t *e, const walk_t *w, int si) {
    const backend_t *be = e->be;
    const graph_t *g = &w->gp->g;
    const graph_step_t *s = &g->s[si];
    const plan_t *p = e->plan;
    const tensor_desc_t *t0 = &g->t[s->out[0] >= 0 ? s->out[0] : s->in[0]];
    int64_t n = w->rows ? w->rows : tensor_rows(e, t0);
    float eps = (float)e->model->cfg.rms_norm_eps;
#define IN(i) tensor_at(e, w, s->in[i], PHASE_BWD)
#define OUT(i) tensor_at(e, w, s->out[i], PHASE_BWD)
#define DIN(i) grad_at(e, w, s->in[i])
#define DOUT(i) grad_at(e, w, s->out[i])
#define ACC(i) (!first_write(w, si, i))
    switch (s->op) {
    case OP_EMBED:
        be->embed_bwd(step_param_grad(e, w, s), e->tokens, DOUT(0), n, g->t[s->out[0]].width, e->model->V);
        break;
    case OP_RMSNORM:
        be->rmsnorm_bwd(DIN(0), ACC(0), step_param_grad(e, w, s), DOUT(0), IN(0), step_param(e, w, s), n,
                        g->t[s->in[0]].width, eps);
        break;
    case OP_MATMUL:
        if (layout_p(g, s->in[0]) > 1)   /* writes the packed gradient of o */
            be->matmul_blocked_bwd(DIN(0), ACC(0), step_param_grad(e, w, s), DOUT(0), IN(0), step_param(e, w, s), n,
                                   s->k, s->m, layout_p(g, s->in[0]));
        else
            be->matmul_bwd(DIN(0), ACC(0), step_param_grad(e, w, s), DOUT(0), IN(0), step_param(e, w, s), n, s->k,
                           s->m);
        break;
    case OP_ROPE_SPLIT:
        need_overwrite(w, si, 0);
        be->rope_split_bwd(DIN(0), DOUT(0), DOUT(1), DOUT(2), e->positions, e->rope_freq, n, s->heads, s->kv_heads,
                           s->head_dim, layout_p(g, s->out[0]), layout_p(g, s->out[1]));
        break;
    case OP_ATTENTION:
        for (int i = 0; i < 3; i++) need_overwrite(w, si, i);
        attention_scratch(e, w, 2);
        be->attention_bwd(DIN(0), DIN(1), DIN(2), DOUT(0), IN(0), IN(1), IN(2), OUT(0), (const float *)OUT(1), n,
                          s->heads, s->kv_heads, s->head_dim, (float)(1.0 / sqrt((double)s->head_dim)),
                          e->docs_on ? &e->docs : NULL);
        attention_scratch(e, w, -1);
        break;
    case OP_ADD: {
        size_t count = (size_t)n * (size_t)t0->width;
        be->accumulate(DIN(0), DOUT(0), count, ACC(0));
        be->accumulate(DIN(1), DOUT(0), count, ACC(1));
        break;
    }
    case OP_ADD_RMSNORM:
        /* h's own gradient (from the mlp residual) plus the norm's, to both addends */
        be->add_rmsnorm_bwd(DIN(0), ACC(0), DIN(1), ACC(1), step_param_grad(e, w, s), out_grad_or_null(e, w, s->out[0]),
                            DOUT(1), OUT(0), step_param(e, w, s), n, t0->width, eps);
        break;
    case OP_SWIGLU:
        need_overwrite(w, si, 0);
        be->swiglu_bwd(DIN(0), DOUT(0), IN(0), n, g->t[s->out[0]].width);
        break;
    case OP_LMHEAD_LOSS:
        break; /* its forward wrote the gradient of its input */
    case OP_A2A_SEQ_TO_HEAD: {
        /* gradient flows head-sharded -> sequence-sharded. It arrives as
         * per-peer blocks: the packed gradient itself when this is its first
         * write, else staged and added (packed) or unpacked (replicated KV,
         * summing the replicas) */
        int64_t hpr = a2a_heads_per_rank(s->heads, p->sp);
        size_t count = (size_t)(p->seq_local * hpr * s->head_dim);
        if (!plan_a2a_staging(w->gp, si).bwd_recv) {
            need_overwrite(w, si, 0);
            e->coll->alltoall(e->ranks->sp, DOUT(0), DIN(0), count, be->act_dtype);
            break;
        }
        uint8_t *recv = staging(e, e->a2a_recv, "a2a_recv", g, si);
        e->coll->alltoall(e->ranks->sp, DOUT(0), recv, count, be->act_dtype);
        if (layout_p(g, s->in[0]) > 1) be->accumulate(DIN(0), recv, count * (size_t)p->sp, ACC(0));
        else be->heads_unpack(DIN(0), recv, p->seq_local, s->heads, s->head_dim, p->sp, ACC(0));
        break;
    }
    case OP_A2A_HEAD_TO_SEQ:
        /* the gradient of a packed o is already the per-peer blocks */
        need_overwrite(w, si, 0);
        a2a_send_heads(e, w, si, DOUT(0), DIN(0), plan_a2a_staging(w->gp, si).bwd_send);
        break;
    default:
        asp_die(ASP_EXIT_FAILURE, "internal: op %s has no backward in the executor", op_name(s->op));
    }
#undef IN
#undef OUT
#undef DIN
#undef DOUT
#undef ACC
}

/* ------------------------------------------------------------------ graphs */

static walk_t walk_of(exec_t *e, const graph_plan_t *gp, int layer) {
    walk_t w = {gp, layer, layer >= 0, gp == &e->plan->prologue, gp == &e->plan->epilogue, 0, 0};
    return w;
}

/* The walk at tile row0 of the graph's tiled region. */
static walk_t tile_walk(const exec_t *e, const walk_t *w, int64_t row0) {
    walk_t t = *w;
    int64_t n = e->plan->seq_local, r = w->gp->tile_rows;
    t.row0 = row0;
    t.rows = n - row0 < r ? n - row0 : r;
    return t;
}

/* ------------------------------------------------------------------ offload
 * Layer l's offloaded tensors pass through device staging slot
 * l % PLAN_OFFLOAD_SLOTS (copy tag = slot). Forward: at the end of the
 * layer, wait until the slot's previous copy to the host is done, copy the
 * tensors into the slot, and send the slot to the host on the copy stream.
 * Backward: wait for the slot's copy back, take the tensors from it, then
 * start the copy back of the layer below into its slot, which the layer
 * above has just emptied. The last PLAN_OFFLOAD_SLOTS layers never leave
 * their slots. */

static int step_writes(const graph_step_t *s, int t) {
    for (int i = 0; i < s->nout; i++)
        if (s->out[i] == t) return 1;
    return 0;
}

static uint8_t *stage_slot(exec_t *e, int layer) {
    return e->offload_stage + (size_t)(layer % PLAN_OFFLOAD_SLOTS) * e->plan->mem.offload_slot_bytes;
}

static int goes_to_host(const exec_t *e, int layer) {
    return layer >= 0 && layer < e->plan->mem.offload_host_layers && plan_layer_plan(e->plan, layer)->offload_bytes;
}

static void offload_layer(exec_t *e, int layer) {
    const graph_plan_t *gp = plan_layer_plan(e->plan, layer);
    const int tag = layer % PLAN_OFFLOAD_SLOTS;
    uint8_t *slot = stage_slot(e, layer);
    if (goes_to_host(e, layer - PLAN_OFFLOAD_SLOTS)) e->be->copy_wait(tag);
    for (int t = 0; t < gp->g.nt; t++)
        if (gp->t[t].keep == KEEP_OFFLOAD) e->be->copy(slot + gp->t[t].saved_off, e->ws + gp->t[t].fwd_off, gp->t[t].bytes);
    if (goes_to_host(e, layer))
        e->be->copy_async(e->offload + plan_layer_host_off(e->plan, layer), slot, gp->offload_bytes, 1, tag);
}

static void prefetch_layer(exec_t *e, int layer) {
    if (!goes_to_host(e, layer)) return;
    const graph_plan_t *gp = plan_layer_plan(e->plan, layer);
    e->be->copy_async(stage_slot(e, layer), e->offload + plan_layer_host_off(e->plan, layer), gp->offload_bytes, 0,
                      layer % PLAN_OFFLOAD_SLOTS);
}

static void reload_layer(exec_t *e, int layer) {
    const graph_plan_t *gp = plan_layer_plan(e->plan, layer);
    if (gp->offload_bytes) {
        const uint8_t *slot = stage_slot(e, layer);
        if (goes_to_host(e, layer)) e->be->copy_wait(layer % PLAN_OFFLOAD_SLOTS);
        for (int t = 0; t < gp->g.nt; t++)
            if (gp->t[t].keep == KEEP_OFFLOAD)
                e->be->copy(e->ws + gp->t[t].bwd_off, slot + gp->t[t].saved_off, gp->t[t].bytes);
    }
    /* one layer ahead of its backward */
    prefetch_layer(e, layer - 1);
}

/* Before a graph writes the next layer's input into that layer's staging
 * slot: the slot's previous layer must have reached the host. */
static void before_next_input(exec_t *e, const walk_t *w) {
    const int next = w->is_prologue ? 0 : w->layer + 1;
    if (next >= (int)e->model->L || !plan_input_offloaded(e->plan, plan_layer_plan(e->plan, next))) return;
    if (goes_to_host(e, next - PLAN_OFFLOAD_SLOTS)) e->be->copy_wait(next % PLAN_OFFLOAD_SLOTS);
}

static void graph_forward(exec_t *e, const walk_t *w, float grad_scale) {
    const graph_plan_t *gp = w->gp;
    for (int si = 0; si < gp->g.ns; si++) {
        if ((w->is_layer || w->is_prologue) && step_writes(&gp->g.s[si], gp->g.output)) before_next_input(e, w);
        if (gp->tile_rows && si == gp->tile_begin) {
            /* the tiled region: its steps tile by tile */
            for (int64_t r0 = 0; r0 < e->plan->seq_local; r0 += gp->tile_rows) {
                walk_t t = tile_walk(e, w, r0);
                for (int ti = gp->tile_begin; ti <= gp->tile_end; ti++) {
                    double t0 = prof_begin(e);
                    run_forward(e, &t, ti, PHASE_FWD, grad_scale);
                    prof_end(e, PROF_FWD, gp->g.s[ti].op, t0);
                }
            }
            si = gp->tile_end;
            continue;
        }
        double t0 = prof_begin(e);
        run_forward(e, w, si, PHASE_FWD, grad_scale);
        prof_end(e, PROF_FWD, gp->g.s[si].op, t0);
    }
    if (w->is_layer && gp->offload_bytes) offload_layer(e, w->layer);
}

static void graph_backward(exec_t *e, const walk_t *w) {
    const graph_plan_t *gp = w->gp;
    if (w->is_layer) reload_layer(e, w->layer);
    const int tiled = gp->tile_rows > 0;
    for (int si = 0; si < gp->g.ns; si++) {
        if (!gp->recompute_step[si] || (tiled && si >= gp->tile_begin && si <= gp->tile_end)) continue;
        double t0 = prof_begin(e);
        run_forward(e, w, si, PHASE_BWD, 0.0f);
        prof_end(e, PROF_RECOMPUTE, gp->g.s[si].op, t0);
    }
    for (int si = gp->g.ns - 1; si >= 0; si--) {
        if (tiled && si == gp->tile_end) {
            /* the tiled region, tile by tile: rebuild the tile, then its backward */
            for (int64_t r0 = 0; r0 < e->plan->seq_local; r0 += gp->tile_rows) {
                walk_t t = tile_walk(e, w, r0);
                for (int ti = gp->tile_begin; ti <= gp->tile_end; ti++) {
                    if (!gp->recompute_step[ti]) continue;
                    double t0 = prof_begin(e);
                    run_forward(e, &t, ti, PHASE_BWD, 0.0f);
                    prof_end(e, PROF_RECOMPUTE, gp->g.s[ti].op, t0);
                }
                for (int ti = gp->tile_end; ti >= gp->tile_begin; ti--) {
                    double t0 = prof_begin(e);
                    run_backward(e, &t, ti);
                    prof_end(e, PROF_BWD, gp->g.s[ti].op, t0);
                }
            }
            si = gp->tile_begin;
            continue;
        }
        double t0 = prof_begin(e);
        run_backward(e, w, si);
        prof_end(e, PROF_BWD, gp->g.s[si].op, t0);
    }
    /* the input's gradient becomes the next graph's output gradient */
    if (gp->g.input >= 0) e->cur_grad = 1 - e->cur_grad;
}

/* ------------------------------------------------------------------ model-state pipeline */

static void need_updated(exec_t *e, int bi);
static void host_optimizer_finish(exec_t *e);

/* ZeRO-3: start gathering bucket b's weights into its slot's buffer on the
 * communication stream (after all compute issued so far, so whatever last
 * read that buffer is done with it). */
static void gather_issue(exec_t *e, int b) {
    const plan_t *p = e->plan;
    int s = plan_bucket_slot(p, b);
    if (e->slot_holds[s] == b) return;
    plan_bucket_t bk;
    plan_bucket(p, b, &bk);
    const uint8_t *src = e->params + bk.shard_off * e->par;
    if (p->params_offload) {
        /* the shard lives on the host: its part goes to the device stage
         * first, on the same stream, so the gather (and the next bucket's
         * copy after it) find it in order */
        e->coll->to_device_async(e->param_dev_stage, src, bk.slice_len * e->par);
        src = e->param_dev_stage;
    }
    e->coll->allgather_async(e->ranks->world, src, e->param_buf[s], bk.slice_len, e->be->param_dtype);
    e->slot_ticket[s] = e->coll->mark();
    e->slot_holds[s] = b;
    e->slot_waited[s] = 0;
}

/* ZeRO-3: bucket b's weights are needed by the next compute: gathered, and
 * the compute stream waits for them. */
static void need_weights(exec_t *e, int b) {
    need_updated(e, b);
    if (e->plan->zero_stage < 3) return;
    gather_issue(e, b);
    int s = plan_bucket_slot(e->plan, b);
    if (!e->slot_waited[s]) {
        e->coll->wait_mark(e->slot_ticket[s]);
        e->slot_waited[s] = 1;
    }
}

/* ZeRO-3: gather bucket `next` while bucket `cur` computes (never into the
 * buffer `cur` reads). */
static void prefetch_weights(exec_t *e, int next, int cur) {
    if (e->plan->zero_stage < 3 || next < 0 || next >= plan_n_buckets(e->plan)) return;
    if (plan_bucket_slot(e->plan, next) == plan_bucket_slot(e->plan, cur)) return;
    need_updated(e, next);
    gather_issue(e, next);
}

static int grads_staged(const exec_t *e) { return e->plan->zero_stage >= 2 || e->plan->optim_offload; }

/* The gradient of slot s's bucket is reduced and copied: add it into the
 * rank's gradient shard (on the device, or on the host with the optimizer
 * there) and free the slot. */
static void grad_drain(exec_t *e, int s) {
    const plan_t *p = e->plan;
    int b = e->gslot_bucket[s];
    if (b < 0) return;
    if (!e->gslot_done[s]) asp_die(ASP_EXIT_FAILURE, "internal: gradient bucket %d drained before it was final", b);
    plan_bucket_t bk;
    plan_bucket(p, b, &bk);
    int acc = p->zero_stage >= 2 && e->micro_index > 0;
    if (p->optim_offload) {
        e->coll->sync_mark(e->gslot_ticket[s]);
        int direct = p->host_grad_bytes == 4 && p->micro_steps == 1;
        uint8_t *shard = e->grad_shard + bk.shard_off * (size_t)p->host_grad_bytes;
        /* the gradient norm from the fp32 values, before a bf16 shard rounds them */
        if (e->last_micro && p->host_grad_bytes == 2)
            e->bucket_sumsq[b] = host_grad_sumsq_total(e->grad_stage[s], DT_F32, bk.slice_len);
        if (!direct)
            host_accumulate(shard, p->host_grad_bytes == 4 ? DT_F32 : DT_BF16, (const float *)e->grad_stage[s],
                            bk.slice_len, acc);
        if (e->last_micro && p->host_grad_bytes == 4)
            e->bucket_sumsq[b] = host_grad_sumsq_total(shard, DT_F32, bk.slice_len);
    } else {
        e->coll->wait_mark(e->gslot_ticket[s]);
        e->be->grad_accumulate(e->grad_shard + bk.shard_off * 4,
                               e->grad_buf[s] + (size_t)e->shard_rank * bk.slice_len * e->grd, bk.slice_len, acc);
    }
    e->gslot_bucket[s] = -1;
    e->gslot_done[s] = 0;
}

/* Bucket b's backward is about to write its gradient: its slot (gradient
 * buffer, host staging) is drained of the bucket before it and cleared. */
static void grad_begin(exec_t *e, int b) {
    const plan_t *p = e->plan;
    if (!grads_staged(e)) return;
    if (p->zero_stage < 2 && !e->last_micro) return;
    int s = plan_bucket_slot(p, b);
    if (e->gslot_bucket[s] == b) return;    /* a tied embedding's, claimed at the LM head */
    grad_drain(e, s);
    e->gslot_bucket[s] = b;
    e->gslot_done[s] = 0;
    if (p->zero_stage >= 2) e->be->zero(e->grad_buf[s], p->mem.grad_buf[s].bytes);
}

/* Bucket bi's gradient is final (the backward has left its graph): start
 * its reduction over the world on the communication stream, overlapping the
 * rest of the backward, in the micro-step that completes the gradients
 * (ZeRO 0-1) or in every micro-step (ZeRO 2-3, whose buffers are reused);
 * with the optimizer on the host, copy this rank's slice off the device
 * behind it. */
static void bucket_done(exec_t *e, int bi) {
    const plan_t *p = e->plan;
    if (p->zero_stage < 2 && !e->last_micro) return;
    plan_bucket_t b;
    plan_bucket(p, bi, &b);
    int s = plan_bucket_slot(p, bi);
    uint8_t *buf = p->zero_stage >= 2 ? e->grad_buf[s] : e->grads + b.flat_begin * e->grd;
    if (e->ranks->world_size > 1) {
        if (e->shards > 1) e->coll->reduce_scatter_async(e->ranks->world, buf, b.slice_len, e->be->grad_dtype);
        else e->coll->allreduce_async(e->ranks->world, buf, b.flat_len, e->be->grad_dtype);
    }
    if (!grads_staged(e)) return;
    if (e->gslot_bucket[s] != bi) asp_die(ASP_EXIT_FAILURE, "internal: gradient bucket %d finished outside its slot", bi);
    const uint8_t *mine = buf + (size_t)e->shard_rank * b.slice_len * e->grd;
    if (p->optim_offload) {
        int direct = p->host_grad_bytes == 4 && p->micro_steps == 1;
        uint8_t *dst = direct ? e->grad_shard + b.shard_off * 4 : e->grad_stage[s];
        e->coll->to_host_async(dst, mine, b.slice_len * e->grd);
    }
    e->gslot_ticket[s] = e->coll->mark();
    e->gslot_done[s] = 1;
}

static void grad_drain_all(exec_t *e) {
    if (!grads_staged(e)) return;
    for (int s = 0; s < PLAN_BUCKET_SLOTS; s++) grad_drain(e, s);
}

void (*exec_progress_hook)(int phase, int layer, int layers) = NULL;

/* The sample's inputs into the plan's buffers; its documents, when it has
 * them, become the attention's (the whole sample's, on every SP rank). */
static void load_batch(exec_t *e, const exec_batch_t *b) {
    const plan_t *p = e->plan;
    const backend_t *be = e->be;
    size_t nbytes = (size_t)p->seq_local * sizeof(int32_t);
    be->to_device(e->tokens, b->tokens, nbytes);
    be->to_device(e->targets, b->targets, nbytes);
    be->to_device(e->positions, b->positions, nbytes);
    e->docs_on = 0;
    if (!b->doc_start) return;
    if (!e->doc_start)
        asp_die(ASP_EXIT_FAILURE, "internal: a batch carries documents but the plan has no document buffers "
                "(compiled without data.documents: eos)");
    int64_t max_len = 0, n = docs_from_starts(b->doc_start, p->seq_pad, e->doc_cu_host, &max_len);
    be->to_device(e->doc_start, b->doc_start, (size_t)p->seq_pad * sizeof(int32_t));
    be->to_device(e->doc_cu, e->doc_cu_host, (size_t)(n + 1) * sizeof(int32_t));
    e->docs = (attn_docs_t){n, max_len, e->doc_cu_host, e->doc_cu, e->doc_start};
    e->docs_on = 1;
}

/* Forward over the prologue, the layers and the epilogue (the loss). */
static void forward_all(exec_t *e, float grad_scale) {
    const plan_t *p = e->plan;
    const int L = (int)e->model->L, tail = plan_n_buckets(p) - 1;
    const int tied = e->model->cfg.tie_word_embeddings;
    walk_t pro = walk_of(e, &p->prologue, -1), epi = walk_of(e, &p->epilogue, -1);
    need_weights(e, 0);
    prefetch_weights(e, 1, 0);
    graph_forward(e, &pro, grad_scale);
    for (int l = 0; l < L; l++) {
        if (exec_progress_hook) exec_progress_hook(0, l, L);
        walk_t w = walk_of(e, plan_layer_plan(p, l), l);
        need_weights(e, l + 1);
        prefetch_weights(e, l + 2, l + 1);
        graph_forward(e, &w, grad_scale);
    }
    /* The epilogue has no output: its backward starts from the loss, whose
     * gradient its forward already produced. */
    e->cur_grad = 1;
    need_weights(e, tail);
    if (tied) need_weights(e, 0);
    prefetch_weights(e, L, tail);
    if (!e->eval) {
        grad_begin(e, tail);
        if (tied) grad_begin(e, 0);
    }
    graph_forward(e, &epi, grad_scale);
}

static void micro_step(exec_t *e, const exec_batch_t *b, float grad_scale) {
    const plan_t *p = e->plan;
    const int L = (int)e->model->L, tail = plan_n_buckets(p) - 1;
    load_batch(e, b);
    forward_all(e, grad_scale);
    walk_t pro = walk_of(e, &p->prologue, -1), epi = walk_of(e, &p->epilogue, -1);
    graph_backward(e, &epi);
    bucket_done(e, tail);  /* a tied LM head's gradient is the embedding's */
    for (int l = L - 1; l >= 0; l--) {
        if (exec_progress_hook) exec_progress_hook(1, l, L);
        walk_t w = walk_of(e, plan_layer_plan(p, l), l);
        need_weights(e, l + 1);
        prefetch_weights(e, l, l + 1);
        grad_begin(e, l + 1);
        graph_backward(e, &w);
        bucket_done(e, plan_layer_bucket(p, l));
    }
    need_weights(e, 0);
    grad_begin(e, 0);
    graph_backward(e, &pro);
    bucket_done(e, 0);
    grad_drain_all(e);
}

/* The loss is the sum over valid targets divided by the GLOBAL valid count,
 * so each rank's gradient is a plain partial sum. SP ranks of a group see
 * the same samples, so the count is summed over DP only. */
static double global_valid(exec_t *e, const int64_t *sample_valid, const char *none) {
    double valid = 0;
    for (int64_t i = 0; i < e->plan->micro_steps; i++) valid += (double)sample_valid[i];
    e->host_coll->allreduce_sum(e->ranks->dp, &valid, 1, DT_F64);
    if (valid < 1) asp_die(ASP_EXIT_USAGE, "%s", none);
    return valid;
}

/* The loss sums of every rank, over the global valid count. */
static void read_loss(exec_t *e, double valid, exec_result_t *res) {
    e->coll->allreduce_sum(e->ranks->world, &e->scalars[SCALAR_LOSS], 1, DT_F32);
    float loss_sum = 0;
    coll_wait(e);
    e->be->to_host(&loss_sum, &e->scalars[SCALAR_LOSS], sizeof loss_sum);
    res->loss = (double)loss_sum / valid;
    res->valid_targets = (int64_t)valid;
}

void exec_forward_backward(exec_t *e, const exec_batch_t *batches, const int64_t *sample_valid,
                           exec_result_t *res) {
    const plan_t *p = e->plan;
    const backend_t *be = e->be;
    double valid = global_valid(e, sample_valid, "the batch has no valid targets: check the data shard");
    float grad_scale = (float)(1.0 / valid);

    if (e->grads) be->zero(e->grads, p->mem.grads.bytes);
    be->zero(e->scalars, p->mem.scalars.bytes);
    /* Every rank holds a partial gradient of the full parameter set; the
     * last micro-step sums each bucket over the world as soon as it is
     * final (reduce-scatter in place for ZeRO-1), and the step waits here.
     * ZeRO 2-3 reduce every micro-step's buckets into the gradient shard. */
    for (int64_t i = 0; i < p->micro_steps; i++) {
        e->last_micro = i == p->micro_steps - 1;
        e->micro_index = (int)i;
        micro_step(e, &batches[i], grad_scale);
    }
    e->last_micro = 0;
    double t0 = prof_begin(e);
    if (e->coll->join) e->coll->join();
    prof_end(e, PROF_BWD, PROF_REDUCE, t0);
    read_loss(e, valid, res);
}

/* ------------------------------------------------------------------ host optimizer */

/* The part [*a0, *b0) of parameter pa inside a slice [lo, hi) of model
 * elements: AdamW runs per parameter part, so weight decay follows the
 * parameter. 0 when they do not meet. */
static int param_part(const param_t *pa, size_t lo, size_t hi, size_t *a0, size_t *b0) {
    *a0 = pa->offset > lo ? pa->offset : lo;
    *b0 = pa->offset + pa->numel < hi ? pa->offset + pa->numel : hi;
    return *a0 < *b0;
}

/* AdamW on the host over this rank's slice of bucket bi, into the weights'
 * staging ring. */
static void host_adamw_bucket(exec_t *e, int bi, uint8_t *stage) {
    const plan_t *p = e->plan;
    const model_t *m = e->model;
    const exec_optim_t *opt = &e->ho.opt;
    const dtype_t gt = p->host_grad_bytes == 4 ? DT_F32 : DT_BF16;
    plan_bucket_t b;
    plan_bucket(p, bi, &b);
    size_t lo, hi;
    slice_of(e, &b, &lo, &hi);
    for (int i = 0; i < m->nparams && lo < hi; i++) {
        const param_t *pa = &m->params[i];
        size_t a0, b0;
        if (!param_part(pa, lo, hi, &a0, &b0)) continue;
        size_t sh = b.shard_off + (a0 - lo);
        host_adamw((float *)e->master + sh, stage + (a0 - lo) * e->par, e->be->param_dtype, (float *)e->adam_m + sh,
                   (float *)e->adam_v + sh, e->grad_shard + sh * (size_t)p->host_grad_bytes, gt, b0 - a0,
                   (float)opt->lr, (float)opt->beta1, (float)opt->beta2, (float)opt->eps,
                   pa->decay ? (float)opt->weight_decay : 0.0f, opt->step, e->ho.sumsq, (float)opt->grad_clip);
    }
}

/* The worker: for each step asked for, every bucket in forward order, each
 * into the next stage of the ring once the copy back of the bucket that
 * used it last has finished. */
static void *host_optimizer_main(void *arg) {
    exec_t *e = arg;
    const int nb = plan_n_buckets(e->plan);
    pthread_mutex_lock(&e->ho.mu);
    for (;;) {
        while (!e->ho.quit && e->ho.step_seen == e->ho.step_id) pthread_cond_wait(&e->ho.cv, &e->ho.mu);
        if (e->ho.quit) break;
        e->ho.step_seen = e->ho.step_id;
        double t0 = asp_now();
        for (int bi = 0; bi < nb; bi++) {
            int k = bi % PLAN_PARAM_STAGES;
            /* the stage is free once the bucket before in it was copied back */
            while (bi >= PLAN_PARAM_STAGES && e->ho.issued_upto <= bi - PLAN_PARAM_STAGES && !e->ho.quit)
                pthread_cond_wait(&e->ho.cv, &e->ho.mu);
            if (e->ho.quit) break;
            long long t = bi >= PLAN_PARAM_STAGES ? e->ho.ticket[k] : -1;
            pthread_mutex_unlock(&e->ho.mu);
            if (t >= 0) e->coll->sync_mark(t);
            /* with the weight shard on the host, AdamW writes it in place:
             * nothing reads it until this bucket's next gather, which waits
             * for this update (need_updated) */
            uint8_t *dst = e->param_stage[k];
            if (e->plan->params_offload) {
                plan_bucket_t b;
                plan_bucket(e->plan, bi, &b);
                dst = e->params + b.shard_off * e->par;
            }
            host_adamw_bucket(e, bi, dst);
            pthread_mutex_lock(&e->ho.mu);
            e->ho.done_upto = bi + 1;
            pthread_cond_broadcast(&e->ho.cv);
        }
        e->ho.work_s = asp_now() - t0;
    }
    pthread_mutex_unlock(&e->ho.mu);
    return NULL;
}

static void host_optimizer_stop(exec_t *e) {
    if (!e->ho.started) return;
    pthread_mutex_lock(&e->ho.mu);
    e->ho.quit = 1;
    pthread_cond_broadcast(&e->ho.cv);
    pthread_mutex_unlock(&e->ho.mu);
    pthread_join(e->ho.thread, NULL);
    pthread_mutex_destroy(&e->ho.mu);
    pthread_cond_destroy(&e->ho.cv);
    e->ho.started = 0;
}

/* Copy bucket bi's updated weights back from its stage: to the full weights
 * (ZeRO 0-2; gathered over the ranks on the compute stream under ZeRO 1-2)
 * or to this rank's weight shard (ZeRO-3, gathered when the bucket is used).
 * The compute stream waits for the copy; nothing in flight reads them (the
 * previous backward has finished). */
static void host_issue_upload(exec_t *e, int bi) {
    const plan_t *p = e->plan;
    plan_bucket_t b;
    plan_bucket(p, bi, &b);
    size_t lo, hi;
    size_t flat0 = slice_of(e, &b, &lo, &hi);
    int k = bi % PLAN_PARAM_STAGES;
    if (hi > lo && !p->params_offload) {   /* with the shard on the host AdamW wrote it in place */
        uint8_t *dst = p->zero_stage >= 3 ? e->params + b.shard_off * e->par : e->params + flat0 * e->par;
        e->coll->to_device_async(dst, e->param_stage[k], (hi - lo) * e->par);
    }
    long long t = e->coll->mark();
    e->coll->wait_mark(t);
    /* a gather of this bucket from before the copy holds its old weights */
    int slot = plan_bucket_slot(p, bi);
    if (e->slot_holds[slot] == bi) e->slot_holds[slot] = -1;
    if (e->shards > 1 && p->zero_stage < 3) {
        uint8_t *bucket = e->params + b.flat_begin * e->par;
        e->coll->allgather(e->ranks->world, bucket + (size_t)e->shard_rank * b.slice_len * e->par, bucket,
                           b.slice_len, e->be->param_dtype);
    }
    pthread_mutex_lock(&e->ho.mu);
    e->ho.ticket[k] = t;
    e->ho.issued_upto = bi + 1;
    pthread_cond_broadcast(&e->ho.cv);
    pthread_mutex_unlock(&e->ho.mu);
}

/* Bucket bi's weights of the step in flight are about to be used (up to the
 * last bucket: all of them): wait for the worker, then issue every finished
 * bucket's copy back, in order, up to bi at least. */
static void need_updated(exec_t *e, int bi) {
    if (!e->ho.pending) return;
    const int nb = plan_n_buckets(e->plan);
    if (bi >= nb) bi = nb - 1;
    for (;;) {
        pthread_mutex_lock(&e->ho.mu);
        int issued = e->ho.issued_upto;
        if (issued > bi) {
            pthread_mutex_unlock(&e->ho.mu);
            break;
        }
        /* The host waits for the worker; what the step loses is the part of
         * that wait in which the device has run out of queued work. */
        double last = asp_now();
        while (e->ho.done_upto <= issued) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 500000;
            if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
            pthread_cond_timedwait(&e->ho.cv, &e->ho.mu, &ts);
            double now = asp_now();
            if (!e->be->idle || e->be->idle()) e->ho.idle_s += now - last;
            last = now;
        }
        int done = e->ho.done_upto;
        pthread_mutex_unlock(&e->ho.mu);
        /* A copy back that ends in a gather over the ranks is issued at the
         * same point on every rank (collectives match by order); others as
         * soon as they are ready. */
        if (e->shards > 1 && e->plan->zero_stage < 3 && done > bi + 1) done = bi + 1;
        for (int k = issued; k < done; k++) host_issue_upload(e, k);
    }
    if (bi == nb - 1) e->ho.pending = 0;
}

static void host_optimizer_finish(exec_t *e) { need_updated(e, plan_n_buckets(e->plan) - 1); }

/* The host optimizer's step: the gradient norm from the buckets' sums (in
 * bucket order, as the backend's grad_sumsq adds them), then AdamW handed
 * to the worker; its weights go back as the next forward needs them. */
static void host_optimizer_step(exec_t *e, const exec_optim_t *opt, exec_result_t *res) {
    const plan_t *p = e->plan;
    const int nb = plan_n_buckets(p);
    host_optimizer_finish(e);
    float sumsq = 0;
    for (int bi = 0; bi < nb; bi++) sumsq = (float)((double)sumsq + e->bucket_sumsq[bi]);
    if (e->shards > 1) e->host_coll->allreduce_sum(e->ranks->world, &sumsq, 1, DT_F32);
    if (!e->ho.started) {
        pthread_mutex_init(&e->ho.mu, NULL);
        pthread_cond_init(&e->ho.cv, NULL);
        if (pthread_create(&e->ho.thread, NULL, host_optimizer_main, e) != 0)
            asp_die(ASP_EXIT_FAILURE, "cannot start the host optimizer's thread");
        e->ho.started = 1;
    }
    pthread_mutex_lock(&e->ho.mu);
    e->ho.opt = *opt;
    e->ho.sumsq = sumsq;
    e->ho.done_upto = e->ho.issued_upto = 0;
    e->ho.pending = 1;
    e->ho.step_id++;
    pthread_cond_broadcast(&e->ho.cv);
    pthread_mutex_unlock(&e->ho.mu);
    res->grad_norm = sqrt((double)sumsq);
}

void exec_eval(exec_t *e, const exec_batch_t *batches, const int64_t *sample_valid, exec_result_t *res) {
    const plan_t *p = e->plan;
    const backend_t *be = e->be;
    double valid = global_valid(e, sample_valid, "the validation batch has no valid targets: check data.val_path");
    be->zero(e->scalars, p->mem.scalars.bytes);
    /* the gradient buffers stay as they are: the next step zeroes them anyway */
    e->eval = 1;
    for (int64_t i = 0; i < p->micro_steps; i++) {
        load_batch(e, &batches[i]);
        forward_all(e, 0.0f);
    }
    e->eval = 0;
    read_loss(e, valid, res);
    res->grad_norm = 0;
}

void exec_optimizer_step(exec_t *e, const exec_optim_t *opt, exec_result_t *res) {
    const plan_t *p = e->plan;
    const backend_t *be = e->be;
    const model_t *m = e->model;
    const int nb = plan_n_buckets(p);
    if (p->optim_offload) {
        double t0 = prof_begin(e);
        host_optimizer_step(e, opt, res);
        prof_end(e, PROF_BWD, PROF_OPTIMIZER, t0);
        return;
    }
    float *sumsq = &e->scalars[SCALAR_SUMSQ];
    double t0 = prof_begin(e);
    /* the reduced gradient of this rank's slices (padding is zero): in the
     * flat buffer (ZeRO 0-1) or the gradient shard (ZeRO 2-3) */
    for (int bi = 0; bi < nb; bi++) {
        plan_bucket_t b;
        plan_bucket(p, bi, &b);
        const uint8_t *g = p->zero_stage >= 2 ? e->grad_shard + b.shard_off * 4
                                              : e->grads + (b.flat_begin + (size_t)e->shard_rank * b.slice_len) * e->grd;
        be->grad_sumsq(sumsq, g, b.slice_len);
    }
    if (e->shards > 1) e->coll->allreduce_sum(e->ranks->world, sumsq, 1, DT_F32);

    /* AdamW over the parts of each parameter that fall in this rank's
     * slices, so weight decay follows the parameter (2-D weights only). */
    for (int bi = 0; bi < nb; bi++) {
        plan_bucket_t b;
        plan_bucket(p, bi, &b);
        size_t lo, hi;
        size_t flat0 = slice_of(e, &b, &lo, &hi);
        for (int i = 0; i < m->nparams && lo < hi; i++) {
            const param_t *pa = &m->params[i];
            size_t a0, b0;
            if (!param_part(pa, lo, hi, &a0, &b0)) continue;
            size_t sh = b.shard_off + (a0 - lo), flat = flat0 + (a0 - lo);
            uint8_t *w = p->zero_stage >= 3 ? e->params + sh * e->par : e->params + flat * e->par;
            const uint8_t *g = p->zero_stage >= 2 ? e->grad_shard + sh * 4 : e->grads + flat * e->grd;
            be->adamw((float *)e->master + sh, w, (float *)e->adam_m + sh, (float *)e->adam_v + sh, g, b0 - a0,
                      (float)opt->lr, (float)opt->beta1, (float)opt->beta2, (float)opt->eps,
                      pa->decay ? (float)opt->weight_decay : 0.0f, opt->step, sumsq, (float)opt->grad_clip);
        }
        /* every rank's updated slice, gathered in place (ZeRO-3 gathers when a bucket is used) */
        if (e->shards > 1 && p->zero_stage < 3) {
            uint8_t *bucket = e->params + b.flat_begin * e->par;
            e->coll->allgather(e->ranks->world, bucket + (size_t)e->shard_rank * b.slice_len * e->par, bucket,
                               b.slice_len, be->param_dtype);
        }
    }
    weights_changed(e);

    prof_end(e, PROF_BWD, PROF_OPTIMIZER, t0);
    float s = 0;
    coll_wait(e);
    be->to_host(&s, sumsq, sizeof s);
    res->grad_norm = sqrt((double)s);
}

void exec_host_optimizer_times(exec_t *e, double *work_s, double *exposed_s) {
    *work_s = *exposed_s = 0;
    if (!e->ho.started) return;
    pthread_mutex_lock(&e->ho.mu);
    *work_s = e->ho.work_s;
    *exposed_s = e->ho.idle_s;
    e->ho.idle_s = 0;
    pthread_mutex_unlock(&e->ho.mu);
}

void exec_copy_times(exec_t *e, exec_copy_times_t *out) {
    memset(out, 0, sizeof *out);
    if (e->be->copy_times) e->be->copy_times(&out->bytes, &out->busy_s, &out->exposed_s);
}

size_t exec_host_bytes(const exec_t *e) { return e->host_bytes; }
double exec_host_alloc_seconds(const exec_t *e) { return e->host_alloc_s; }

void exec_comm_times(exec_t *e, coll_times_t *out) {
    memset(out, 0, sizeof *out);
    if (e->coll->take_times) e->coll->take_times(out);
}

void exec_profile_reset(exec_t *e) {
    memset(e->prof, 0, sizeof e->prof);
    memset(e->prof_calls, 0, sizeof e->prof_calls);
}

void exec_print_profile(const exec_t *e, FILE *out) {
    if (!e->profile) return;
    static const char *phase[3] = {"forward", "recompute", "backward"};
    double total = 0;
    for (int ph = 0; ph < 3; ph++)
        for (int k = 0; k < OP__COUNT + 2; k++) total += e->prof[ph][k];
    fprintf(out, "\nPROFILE (ASP_PROFILE: every step synchronised; steps after the first summed)\n");
    fprintf(out, "  %-10s %-18s %8s %12s %7s\n", "phase", "op", "calls", "seconds", "share");
    for (int ph = 0; ph < 3; ph++)
        for (int k = 0; k < OP__COUNT + 2; k++) {
            if (!e->prof_calls[ph][k]) continue;
            const char *name = k == PROF_OPTIMIZER ? "optimizer" : k == PROF_REDUCE ? "gradient reduce" : op_name((op_kind_t)k);
            fprintf(out, "  %-10s %-18s %8lld %12.4f %6.1f%%\n", phase[ph], name, (long long)e->prof_calls[ph][k],
                    e->prof[ph][k], 100 * e->prof[ph][k] / total);
        }
    fprintf(out, "  %-10s %-18s %8s %12.4f\n", "total", "", "", total);
}
