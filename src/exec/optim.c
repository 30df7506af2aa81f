/* The optimizer: gradient norm, clipping and AdamW on this rank's shard,
 * on the device, or on the host (optimizer.offload) in a worker thread that
 * runs beside the next forward and hands each bucket's weights back as that
 * forward reaches them. Owns struct exec's `ho` and bucket_sumsq; writes
 * the weights and optimizer state that state.c lays out. */
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "cpu/host_optim.h"
#include "exec/internal.h"
#include "util.h"

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
    ex_slice_of(e, &b, &lo, &hi);
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
             * for this update (ex_need_updated) */
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

void ex_host_optimizer_stop(exec_t *e) {
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
    size_t flat0 = ex_slice_of(e, &b, &lo, &hi);
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
void ex_need_updated(exec_t *e, int bi) {
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

void ex_host_optimizer_finish(exec_t *e) { ex_need_updated(e, plan_n_buckets(e->plan) - 1); }

/* The host optimizer's step: the gradient norm from the buckets' sums (in
 * bucket order, as the backend's grad_sumsq adds them), then AdamW handed
 * to the worker; its weights go back as the next forward needs them. */
static void host_optimizer_step(exec_t *e, const exec_optim_t *opt, exec_result_t *res) {
    const plan_t *p = e->plan;
    const int nb = plan_n_buckets(p);
    ex_host_optimizer_finish(e);
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

void exec_optimizer_step(exec_t *e, const exec_optim_t *opt, exec_result_t *res) {
    const plan_t *p = e->plan;
    const backend_t *be = e->be;
    const model_t *m = e->model;
    const int nb = plan_n_buckets(p);
    if (p->optim_offload) {
        double t0 = ex_prof_begin(e);
        host_optimizer_step(e, opt, res);
        ex_prof_end(e, PROF_BWD, PROF_OPTIMIZER, t0);
        return;
    }
    float *sumsq = &e->scalars[SCALAR_SUMSQ];
    double t0 = ex_prof_begin(e);
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
        size_t flat0 = ex_slice_of(e, &b, &lo, &hi);
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
    ex_weights_changed(e);

    ex_prof_end(e, PROF_BWD, PROF_OPTIMIZER, t0);
    float s = 0;
    ex_coll_wait(e);
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

