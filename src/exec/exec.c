/* The executor's life: allocating the plan's arenas and pointing struct
 * exec's regions into them (exec_create), freeing them, and the counters a
 * run reports (profile, copy and communication times, memory). The walk is
 * in walk.c, the model state in state.c and optim.c, the activation tier in
 * tier.c. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu/host_optim.h"
#include "exec/internal.h"
#include "util.h"

double ex_prof_begin(exec_t *e) {
    if (!e->profile) return 0;
    e->be->synchronize();
    return asp_now();
}

void ex_prof_end(exec_t *e, int phase, int what, double t0) {
    if (!e->profile) return;
    e->be->synchronize();
    e->prof[phase][what] += asp_now() - t0;
    e->prof_calls[phase][what]++;
}

/* Before reading results on the host: lets an asynchronous collective
 * library report a failed peer instead of blocking forever. */
void ex_coll_wait(exec_t *e) {
    if (e->coll->wait) e->coll->wait();
}

uint8_t *ex_region_ptr(exec_t *e, const region_t *r) {
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
    e->params = ex_region_ptr(e, &m->params);
    e->param_dev_stage = ex_region_ptr(e, &m->param_dev_stage);
    e->grads = ex_region_ptr(e, &m->grads);
    e->master = ex_region_ptr(e, &m->master);
    e->adam_m = ex_region_ptr(e, &m->adam_m);
    e->adam_v = ex_region_ptr(e, &m->adam_v);
    e->saved = ex_region_ptr(e, &m->saved_layers);
    e->final_hidden = ex_region_ptr(e, &m->final_hidden);
    e->ws = ex_region_ptr(e, &m->workspace);
    e->resid_grad[0] = ex_region_ptr(e, &m->resid_grad[0]);
    e->resid_grad[1] = ex_region_ptr(e, &m->resid_grad[1]);
    e->logits = ex_region_ptr(e, &m->logits);
    e->a2a_send = ex_region_ptr(e, &m->a2a_send);
    e->a2a_recv = ex_region_ptr(e, &m->a2a_recv);
    e->tokens = (int32_t *)ex_region_ptr(e, &m->tokens);
    e->targets = (int32_t *)ex_region_ptr(e, &m->targets);
    e->positions = (int32_t *)ex_region_ptr(e, &m->positions);
    e->doc_start = (int32_t *)ex_region_ptr(e, &m->doc_start);
    e->doc_cu = (int32_t *)ex_region_ptr(e, &m->doc_cu);
    if (e->doc_cu)
        e->doc_cu_host = asp_malloc((size_t)(plan->seq_pad + 1) * sizeof(int32_t), "document starts");
    e->rope_freq = (double *)ex_region_ptr(e, &m->rope_freq);
    e->scalars = (float *)ex_region_ptr(e, &m->scalars);
    e->offload = ex_region_ptr(e, &m->offload);
    e->offload_stage = ex_region_ptr(e, &m->offload_stage);
    for (int k = 0; k < PLAN_BUCKET_SLOTS; k++) {
        e->param_buf[k] = ex_region_ptr(e, &m->param_buf[k]);
        e->grad_buf[k] = ex_region_ptr(e, &m->grad_buf[k]);
        e->grad_stage[k] = ex_region_ptr(e, &m->grad_stage[k]);
        e->slot_holds[k] = e->gslot_bucket[k] = -1;
    }
    e->grad_shard = ex_region_ptr(e, &m->grad_shard);
    for (int k = 0; k < PLAN_PARAM_STAGES; k++) e->param_stage[k] = ex_region_ptr(e, &m->param_stage[k]);
    if ((plan->zero_stage >= 2 || plan->optim_offload) && e->grd != 4)
        asp_die(ASP_EXIT_FAILURE, "internal: ZeRO-%d and the host optimizer need fp32 gradients", plan->zero_stage);
    if (plan->optim_offload) {
        host_optim_threads(r->local_size);
        e->bucket_sumsq = asp_calloc((size_t)plan_n_buckets(plan), sizeof(double), "gradient norm per bucket");
    }
    /* the backend's op scratch comes from the plan: no op allocates while training */
    if (be->set_scratch) be->set_scratch(ex_region_ptr(e, &m->scratch), m->scratch.bytes);

    e->shards = plan->shards;
    e->shard_rank = plan->shards > 1 ? r->world_rank : 0;

    /* Padding elements of the flat buffers must be zero: they take part in
     * the reduce-scatter and all-gather but belong to no parameter. The host
     * regions (the weight shard with optimizer.offload_params, the
     * optimizer's state, shard and stages with optimizer.offload) come zeroed
     * from host_alloc, which faults them in from every core: clearing tens
     * of GiB again would only lengthen the start-up. */
    if (!plan->params_offload) be->zero(e->params, m->params.bytes);
    if (e->grads) be->zero(e->grads, m->grads.bytes);
    for (int k = 0; k < PLAN_BUCKET_SLOTS; k++) {
        if (e->param_buf[k]) be->zero(e->param_buf[k], m->param_buf[k].bytes);
        if (e->grad_buf[k]) be->zero(e->grad_buf[k], m->grad_buf[k].bytes);
    }
    if (!plan->optim_offload) {
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

void exec_destroy(exec_t *e) {
    if (!e) return;
    ex_host_optimizer_stop(e);
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
