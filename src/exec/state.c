/* The model state: the compute weights (whole, or the ZeRO-3 shard and the
 * gathered bucket buffers), the fp32 master and AdamW moments on this rank's
 * shard, the gradient buckets and their reduction, and reading or writing
 * all of these for initialisation and checkpoints (streamed a bucket at a
 * time). Owns the weight, gradient and bucket-slot fields of struct exec;
 * the optimizer step itself is in optim.c. Knows nothing of activations. */
#include <stdlib.h>
#include <string.h>

#include "cpu/host_optim.h"
#include "exec/internal.h"
#include "util.h"

/* ------------------------------------------------------------------ parameters */

/* Bucket holding flat element fi. */
static int flat_bucket(const plan_t *p, size_t fi) {
    if (fi < p->bucket_len[0]) return 0;
    size_t l = (fi - p->bucket_len[0]) / p->bucket_len[1];
    return l < (size_t)p->model->L ? (int)l + 1 : (int)p->model->L + 1;
}

/* The compute weights of a parameter slot: in the full flat buffer, or
 * (ZeRO-3) in the buffer its bucket was gathered into. */
uint8_t *ex_param_ptr(exec_t *e, int layer, int slot) {
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
uint8_t *ex_grad_ptr(exec_t *e, int layer, int slot) {
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
    if (e->plan->optim_offload) host_copy(dst, src, bytes);
    else e->be->to_device(dst, src, bytes);
}

/* ZeRO-3: no bucket is gathered any more (the shards changed). */
void ex_weights_changed(exec_t *e) {
    for (int k = 0; k < PLAN_BUCKET_SLOTS; k++) e->slot_holds[k] = -1;
}

/* This rank's slice of bucket b in model coordinates: [*lo, *hi) (empty when
 * the slice is all padding), and the slice's first flat index. */
size_t ex_slice_of(const exec_t *e, const plan_bucket_t *b, size_t *lo, size_t *hi) {
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
            ex_slice_of(e, &b, &blo, &bhi);
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
    ex_weights_changed(e);
}

/* The weights are drawn once, a chunk at a time, and each chunk goes both
 * to the compute weights (in full, or this rank's shard under ZeRO-3) and
 * to the part of the fp32 master this rank's slices hold (the padding stays
 * zero): the same values as drawing them for each apart, in half the time
 * (an 8B model's 8e9 normal samples take seconds of all the cores). */
void exec_init_params(exec_t *e, uint64_t seed) {
    const plan_t *p = e->plan;
    const size_t chunk = (size_t)1 << 24;
    /* pinned where the backend can: the chunks cross to the device at full rate */
    float *buf = e->be->host_alloc(chunk * sizeof(float), "weight initialisation");
    float *heap = buf ? NULL : asp_malloc(chunk * sizeof(float), "weight initialisation");
    if (!buf) buf = heap;
    for (size_t b = 0; b < p->n_params; b += chunk) {
        size_t n = p->n_params - b < chunk ? p->n_params - b : chunk;
        model_init_params(e->model, seed, b, n, buf);
        exec_set_params_range(e, buf, b, n);
    }
    if (heap) free(heap);
    else e->be->host_free(buf);
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
    ex_host_optimizer_finish(e);
    return shard_stream(e, SHARD_PARAMS, EXEC_MASTER, root, sink, ctx);
}

int exec_stream_optimizer_state(exec_t *e, exec_state_t which, int root, exec_sink_t sink, void *ctx) {
    ex_host_optimizer_finish(e);
    return shard_stream(e, SHARD_STATE, which, root, sink, ctx);
}

void exec_get_params(exec_t *e, float *out, int root) {
    ex_host_optimizer_finish(e);
    shard_gather(e, SHARD_PARAMS, EXEC_MASTER, out, root);
}

void exec_set_params_range(exec_t *e, const float *vals, size_t begin, size_t n) {
    const plan_t *p = e->plan;
    ex_host_optimizer_finish(e);
    params_from_f32(e, vals, begin, n);
    for (int bi = 0; bi < plan_n_buckets(p); bi++) {
        plan_bucket_t b;
        plan_bucket(p, bi, &b);
        size_t lo, hi;
        ex_slice_of(e, &b, &lo, &hi);
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
        ex_slice_of(e, &b, &lo, &hi);
        if (hi <= lo) continue;
        if (out) out[n] = (exec_piece_t){lo, hi - lo, b.shard_off};
        n++;
    }
    return n;
}

void exec_get_optimizer_state(exec_t *e, exec_state_t which, float *out, int root) {
    ex_host_optimizer_finish(e);
    shard_gather(e, SHARD_STATE, which, out, root);
}

void exec_set_optimizer_state(exec_t *e, exec_state_t which, const float *vals) {
    exec_set_optimizer_state_range(e, which, 0, vals, e->plan->shard_len);
}

void exec_set_optimizer_state_range(exec_t *e, exec_state_t which, size_t shard_at, const float *vals, size_t n) {
    ex_host_optimizer_finish(e);
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
    ex_coll_wait(e);
    flat_to_f32(e, out, e->grads, e->be->grad_dtype);
}

/* ------------------------------------------------------------------ model-state pipeline */


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
void ex_need_weights(exec_t *e, int b) {
    ex_need_updated(e, b);
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
void ex_prefetch_weights(exec_t *e, int next, int cur) {
    if (e->plan->zero_stage < 3 || next < 0 || next >= plan_n_buckets(e->plan)) return;
    if (plan_bucket_slot(e->plan, next) == plan_bucket_slot(e->plan, cur)) return;
    ex_need_updated(e, next);
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
void ex_grad_begin(exec_t *e, int b) {
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
void ex_bucket_done(exec_t *e, int bi) {
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

void ex_grad_drain_all(exec_t *e) {
    if (!grads_staged(e)) return;
    for (int s = 0; s < PLAN_BUCKET_SLOTS; s++) grad_drain(e, s);
}
