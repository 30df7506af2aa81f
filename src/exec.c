/* The executor: see exec.h. The walk follows docs/plan.md ("the executor's
 * walk") exactly; the plan decides where every tensor lives, this file only
 * turns plan entries into pointers and calls. */
#include "exec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    uint8_t *saved, *final_hidden, *ws, *resid_grad[2], *logits, *a2a_send, *a2a_recv;
    int32_t *tokens, *targets, *positions;
    double *rope_freq;
    float *scalars;             /* [0] loss sum, [1] gradient sum of squares */
    uint8_t *offload, *offload_stage; /* host slots; device staging slots (memplan_t) */
    size_t host_bytes;          /* pinned host memory this rank allocated */
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
    const char *prof = getenv("ASP_PROFILE");
    e->profile = prof && *prof && strcmp(prof, "0") != 0;

    static const char *what[ARENA__COUNT] = {"parameters and gradients", "optimizer state",
                                             "saved activations", "workspace", "host offload"};
    for (int a = 0; a < ARENA__COUNT; a++) {
        size_t bytes = plan->mem.arena_bytes[a];
        if (!bytes) continue;
        if (a != ARENA_HOST) {
            e->arena[a] = be->alloc(bytes, what[a]);
            continue;
        }
        /* before the first step: a node that cannot give the host tier is a clear refusal */
        e->arena[a] = be->host_alloc(bytes, what[a]);
        if (!e->arena[a]) {
            char need[32], phys[32];
            long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
            asp_die(ASP_EXIT_USAGE,
                    "cannot allocate %s of pinned host memory for %s on rank %d (this node has %s in all, shared "
                    "by its ranks); lower checkpointing.host_budget_gib, set checkpointing.offload false, lower "
                    "train.seq_len or add ranks",
                    asp_fmt_bytes(need, sizeof need, (double)bytes), what[a], r->world_rank,
                    pages > 0 && page > 0 ? asp_fmt_bytes(phys, sizeof phys, (double)pages * (double)page) : "?");
        }
        e->host_bytes = bytes;
    }
    const memplan_t *m = &plan->mem;
    e->params = region_ptr(e, &m->params);
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
    e->rope_freq = (double *)region_ptr(e, &m->rope_freq);
    e->scalars = (float *)region_ptr(e, &m->scalars);
    e->offload = region_ptr(e, &m->offload);
    e->offload_stage = region_ptr(e, &m->offload_stage);
    /* the backend's op scratch comes from the plan: no op allocates while training */
    if (be->set_scratch) be->set_scratch(region_ptr(e, &m->scratch), m->scratch.bytes);

    e->shards = plan->shards;
    e->shard_rank = plan->shards > 1 ? r->world_rank : 0;

    /* Padding elements of the flat buffers must be zero: they take part in
     * the reduce-scatter and all-gather but belong to no parameter. */
    be->zero(e->params, m->params.bytes);
    be->zero(e->grads, m->grads.bytes);
    be->zero(e->adam_m, m->adam_m.bytes);
    be->zero(e->adam_v, m->adam_v.bytes);
    be->zero(e->master, m->master.bytes);

    int64_t half = e->model->hd / 2;
    double *freq = asp_malloc((size_t)half * sizeof(double), "RoPE frequencies");
    model_rope_inv_freq(e->model, freq);
    be->to_device(e->rope_freq, freq, (size_t)half * sizeof(double));
    free(freq);
    return e;
}

void exec_destroy(exec_t *e) {
    if (!e) return;
    for (int a = 0; a < ARENA__COUNT; a++) {
        if (!e->arena[a]) continue;
        if (a == ARENA_HOST) e->be->host_free(e->arena[a]);
        else e->be->free(e->arena[a]);
    }
    free(e);
}

size_t exec_measured_bytes(const exec_t *e) {
    if (!e->be->memory_used) return 0;
    size_t used = e->be->memory_used();
    return used > e->baseline_used ? used - e->baseline_used : 0;
}

/* ------------------------------------------------------------------ parameters */

static uint8_t *param_ptr(exec_t *e, int layer, int slot) {
    return e->params + plan_flat_index(e->plan, model_param_offset(e->model, layer, slot)) * e->par;
}

static uint8_t *grad_ptr(exec_t *e, int layer, int slot) {
    return e->grads + plan_flat_index(e->plan, model_param_offset(e->model, layer, slot)) * e->grd;
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

/* Copy fp32 model-ordered values into the flat compute weights, bucket by bucket. */
static void params_from_f32(exec_t *e, const float *in, size_t model_begin, size_t n) {
    const plan_t *p = e->plan;
    for (int bi = 0; bi < plan_n_buckets(p); bi++) {
        plan_bucket_t b;
        plan_bucket(p, bi, &b);
        size_t lo = b.model_begin > model_begin ? b.model_begin : model_begin;
        size_t hi = b.model_begin + b.model_len < model_begin + n ? b.model_begin + b.model_len : model_begin + n;
        if (lo >= hi) continue;
        e->be->from_f32(e->params + (b.flat_begin + lo - b.model_begin) * e->par, e->be->param_dtype,
                        in + (lo - model_begin), hi - lo);
    }
}

void exec_init_params(exec_t *e, uint64_t seed) {
    const plan_t *p = e->plan;
    const size_t chunk = (size_t)1 << 22;
    float *buf = asp_malloc(chunk * sizeof(float), "weight initialisation");
    /* compute weights, in full on every rank */
    for (size_t b = 0; b < p->n_params; b += chunk) {
        size_t n = p->n_params - b < chunk ? p->n_params - b : chunk;
        model_init_params(e->model, seed, b, n, buf);
        params_from_f32(e, buf, b, n);
    }
    /* fp32 master of this rank's slices (the padding stays zero) */
    for (int bi = 0; bi < plan_n_buckets(p); bi++) {
        plan_bucket_t bk;
        plan_bucket(p, bi, &bk);
        size_t lo, hi;
        slice_of(e, &bk, &lo, &hi);
        for (size_t b = lo; b < hi; b += chunk) {
            size_t n = hi - b < chunk ? hi - b : chunk;
            model_init_params(e->model, seed, b, n, buf);
            e->be->to_device(e->master + (bk.shard_off + b - lo) * sizeof(float), buf, n * sizeof(float));
        }
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

void exec_get_params(exec_t *e, float *out) { flat_to_f32(e, out, e->params, e->be->param_dtype); }

void exec_set_params(exec_t *e, const float *in) {
    const plan_t *p = e->plan;
    params_from_f32(e, in, 0, p->n_params);
    for (int bi = 0; bi < plan_n_buckets(p); bi++) {
        plan_bucket_t b;
        plan_bucket(p, bi, &b);
        size_t lo, hi;
        slice_of(e, &b, &lo, &hi);
        if (hi > lo) e->be->to_device(e->master + b.shard_off * sizeof(float), in + lo, (hi - lo) * sizeof(float));
    }
}

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

static uint8_t *state_buf(exec_t *e, exec_state_t which) {
    return which == EXEC_MASTER ? e->master : which == EXEC_ADAM_M ? e->adam_m : e->adam_v;
}

void exec_get_optimizer_state(exec_t *e, exec_state_t which, float *out, int root) {
    const plan_t *p = e->plan;
    const uint8_t *src = state_buf(e, which);
    int root_here = e->ranks->world_rank == root;
    if (e->shards == 1) {
        if (!root_here) return;
        for (int bi = 0; bi < plan_n_buckets(p); bi++) {
            plan_bucket_t b;
            plan_bucket(p, bi, &b);
            e->be->to_host(out + b.model_begin, src + b.shard_off * sizeof(float), b.model_len * sizeof(float));
        }
        return;
    }
    /* Bucket by bucket, in chunks so no rank but the root needs a full-size
     * buffer: chunk c of every rank's slice arrives as `world` consecutive
     * pieces, and rank r's slice is the bucket's r-th part. */
    int w = e->shards;
    size_t chunk = (size_t)1 << 20;
    float *tmp = asp_malloc((size_t)w * chunk * sizeof(float), "optimizer state gather");
    for (int bi = 0; bi < plan_n_buckets(p); bi++) {
        plan_bucket_t b;
        plan_bucket(p, bi, &b);
        for (size_t c = 0; c < b.slice_len; c += chunk) {
            size_t n = b.slice_len - c < chunk ? b.slice_len - c : chunk;
            float *mine = tmp + (size_t)e->ranks->world_rank * n;
            e->be->to_host(mine, src + (b.shard_off + c) * sizeof(float), n * sizeof(float));
            e->host_coll->allgather(e->ranks->world, mine, tmp, n, DT_F32);
            if (!root_here) continue;
            for (int r = 0; r < w; r++) {
                size_t at = (size_t)r * b.slice_len + c;   /* within the bucket */
                if (at >= b.model_len) break;
                size_t k = b.model_len - at < n ? b.model_len - at : n;
                memcpy(out + b.model_begin + at, tmp + (size_t)r * n, k * sizeof(float));
            }
        }
    }
    free(tmp);
}

void exec_set_optimizer_state(exec_t *e, exec_state_t which, const float *vals) {
    e->be->to_device(state_buf(e, which), vals, e->plan->shard_len * sizeof(float));
}

/* After the reduction each rank holds the reduced gradient of its slices
 * only: gather every bucket in place, then convert to the model's order. */
void exec_gather_grads(exec_t *e, float *out) {
    const plan_t *p = e->plan;
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
    uint8_t *dW = step_param_grad(e, w, s);
    int64_t d = w->gp->g.t[tx].width, V = e->model->V, n = p->seq_local;
    for (int64_t c = 0; c < n; c += p->loss_chunk) {
        int64_t rows = n - c < p->loss_chunk ? n - c : p->loss_chunk;
        size_t xoff = (size_t)c * (size_t)d * e->act;
        be->matmul_fwd(e->logits, x + xoff, W, rows, d, V);
        be->xent_fwd_bwd(e->logits, &e->scalars[SCALAR_LOSS], e->targets + c, rows, V, grad_scale);
        be->matmul_bwd(dx + xoff, 0, dW, e->logits, x + xoff, W, rows, d, V);
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
                          (float)(1.0 / sqrt((double)s->head_dim)));
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
                          s->heads, s->kv_heads, s->head_dim, (float)(1.0 / sqrt((double)s->head_dim)));
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

/* Bucket bi's gradient is final (the backward has left its graph): in the
 * micro-step that completes the gradients, start its reduction over the
 * world on the communication stream, overlapping the rest of the backward. */
static void bucket_done(exec_t *e, int bi) {
    if (!e->last_micro || e->ranks->world_size == 1) return;
    plan_bucket_t b;
    plan_bucket(e->plan, bi, &b);
    uint8_t *buf = e->grads + b.flat_begin * e->grd;
    if (e->shards > 1) e->coll->reduce_scatter_async(e->ranks->world, buf, b.slice_len, e->be->grad_dtype);
    else e->coll->allreduce_async(e->ranks->world, buf, b.flat_len, e->be->grad_dtype);
}

static void micro_step(exec_t *e, const exec_batch_t *b, float grad_scale) {
    const plan_t *p = e->plan;
    const backend_t *be = e->be;
    size_t nbytes = (size_t)p->seq_local * sizeof(int32_t);
    be->to_device(e->tokens, b->tokens, nbytes);
    be->to_device(e->targets, b->targets, nbytes);
    be->to_device(e->positions, b->positions, nbytes);

    walk_t pro = walk_of(e, &p->prologue, -1), epi = walk_of(e, &p->epilogue, -1);
    graph_forward(e, &pro, grad_scale);
    for (int l = 0; l < (int)e->model->L; l++) {
        walk_t w = walk_of(e, plan_layer_plan(p, l), l);
        graph_forward(e, &w, grad_scale);
    }
    /* The epilogue has no output: its backward starts from the loss, whose
     * gradient its forward already produced. */
    e->cur_grad = 1;
    graph_forward(e, &epi, grad_scale);
    graph_backward(e, &epi);
    bucket_done(e, plan_n_buckets(p) - 1);  /* the tail; a tied LM head's gradient is the embedding's */
    for (int l = (int)e->model->L - 1; l >= 0; l--) {
        walk_t w = walk_of(e, plan_layer_plan(p, l), l);
        graph_backward(e, &w);
        bucket_done(e, plan_layer_bucket(p, l));
    }
    graph_backward(e, &pro);
    bucket_done(e, 0);
}

void exec_forward_backward(exec_t *e, const exec_batch_t *batches, const int64_t *sample_valid,
                           exec_result_t *res) {
    const plan_t *p = e->plan;
    const backend_t *be = e->be;
    /* The loss is the sum over valid targets divided by the GLOBAL valid
     * count, so each rank's gradient is a plain partial sum. SP ranks of a
     * group see the same samples, so the count is summed over DP only. */
    double valid = 0;
    for (int64_t i = 0; i < p->micro_steps; i++) valid += (double)sample_valid[i];
    e->host_coll->allreduce_sum(e->ranks->dp, &valid, 1, DT_F64);
    if (valid < 1) asp_die(ASP_EXIT_USAGE, "the batch has no valid targets: check the data shard");
    float grad_scale = (float)(1.0 / valid);

    be->zero(e->grads, p->mem.grads.bytes);
    be->zero(e->scalars, p->mem.scalars.bytes);
    /* Every rank holds a partial gradient of the full parameter set; the
     * last micro-step sums each bucket over the world as soon as it is
     * final (reduce-scatter in place for ZeRO-1), and the step waits here. */
    for (int64_t i = 0; i < p->micro_steps; i++) {
        e->last_micro = i == p->micro_steps - 1;
        micro_step(e, &batches[i], grad_scale);
    }
    e->last_micro = 0;
    double t0 = prof_begin(e);
    if (e->coll->join) e->coll->join();
    prof_end(e, PROF_BWD, PROF_REDUCE, t0);

    e->coll->allreduce_sum(e->ranks->world, &e->scalars[SCALAR_LOSS], 1, DT_F32);
    float loss_sum = 0;
    coll_wait(e);
    be->to_host(&loss_sum, &e->scalars[SCALAR_LOSS], sizeof loss_sum);
    res->loss = (double)loss_sum / valid;
    res->valid_targets = (int64_t)valid;
}

void exec_optimizer_step(exec_t *e, const exec_optim_t *opt, exec_result_t *res) {
    const plan_t *p = e->plan;
    const backend_t *be = e->be;
    const model_t *m = e->model;
    const int nb = plan_n_buckets(p);
    float *sumsq = &e->scalars[SCALAR_SUMSQ];
    double t0 = prof_begin(e);
    /* the reduced gradient of this rank's slices (padding is zero) */
    for (int bi = 0; bi < nb; bi++) {
        plan_bucket_t b;
        plan_bucket(p, bi, &b);
        be->grad_sumsq(sumsq, e->grads + (b.flat_begin + (size_t)e->shard_rank * b.slice_len) * e->grd, b.slice_len);
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
            size_t a0 = pa->offset > lo ? pa->offset : lo;
            size_t b0 = pa->offset + pa->numel < hi ? pa->offset + pa->numel : hi;
            if (a0 >= b0) continue;
            size_t sh = b.shard_off + (a0 - lo), flat = flat0 + (a0 - lo);
            be->adamw((float *)e->master + sh, e->params + flat * e->par, (float *)e->adam_m + sh,
                      (float *)e->adam_v + sh, e->grads + flat * e->grd, b0 - a0, (float)opt->lr,
                      (float)opt->beta1, (float)opt->beta2, (float)opt->eps,
                      pa->decay ? (float)opt->weight_decay : 0.0f, opt->step, sumsq, (float)opt->grad_clip);
        }
        /* every rank's updated slice, gathered in place */
        if (e->shards > 1) {
            uint8_t *bucket = e->params + b.flat_begin * e->par;
            e->coll->allgather(e->ranks->world, bucket + (size_t)e->shard_rank * b.slice_len * e->par, bucket,
                               b.slice_len, be->param_dtype);
        }
    }

    prof_end(e, PROF_BWD, PROF_OPTIMIZER, t0);
    float s = 0;
    coll_wait(e);
    be->to_host(&s, sumsq, sizeof s);
    res->grad_norm = sqrt((double)s);
}

void exec_copy_times(exec_t *e, exec_copy_times_t *out) {
    memset(out, 0, sizeof *out);
    if (e->be->copy_times) e->be->copy_times(&out->bytes, &out->busy_s, &out->exposed_s);
}

size_t exec_host_bytes(const exec_t *e) { return e->host_bytes; }

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
