/* SP pass: choose what every rank holds for Ulysses sequence parallelism and
 * rewrite the layer graph with the all-to-alls around attention. */
#include <stdio.h>
#include <string.h>

#include "plan/passes.h"
#include "util.h"

int sp_degree_valid(const model_t *m, int64_t P) {
    if (P < 1 || m->hq % P) return 0;
    if (m->hkv % P == 0) return 1;
    return P > m->hkv && P % m->hkv == 0;
}

void sp_valid_degrees(const model_t *m, int world, char *buf, size_t len) {
    size_t n = 0;
    buf[0] = 0;
    for (int64_t P = 1; P <= m->hq; P++) {
        if (!sp_degree_valid(m, P) || (world > 0 && world % P)) continue;
        int w = snprintf(buf + n, len - n, "%s%lld", n ? ", " : "", (long long)P);
        if (w < 0 || (size_t)w >= len - n) break;
        n += (size_t)w;
    }
}

size_t plan_tensor_bytes(const plan_t *p, const tensor_desc_t *t) {
    size_t rows = (size_t)(t->rows == ROWS_GLOBAL ? p->seq_pad : p->seq_local);
    size_t elt = t->dtype == TENSOR_F32 ? 4 : (size_t)p->target.act_bytes;
    return rows * (size_t)t->width * elt;
}

static int new_tensor(graph_t *g, const tensor_desc_t *like, const char *name) {
    tensor_desc_t *t = &g->t[g->nt];
    *t = *like;
    snprintf(t->name, sizeof t->name, "%s", name);
    t->role = TENSOR_INTERNAL;
    t->packed = 0;
    return g->nt++;
}

static void insert_step(graph_t *g, int at, const graph_step_t *s) {
    memmove(&g->s[at + 1], &g->s[at], (size_t)(g->ns - at) * sizeof g->s[0]);
    g->s[at] = *s;
    g->ns++;
}

static graph_step_t a2a_step(op_kind_t op, int in, int out, int64_t heads, int64_t hd, const char *what) {
    graph_step_t s;
    memset(&s, 0, sizeof s);
    s.op = op;
    s.nin = s.nout = 1;
    s.in[0] = in;
    s.out[0] = out;
    s.param = -1;
    s.heads = heads;
    s.head_dim = hd;
    snprintf(s.label, sizeof s.label, "all-to-all %s (%s)", what,
             op == OP_A2A_SEQ_TO_HEAD ? "sequence -> heads" : "heads -> sequence");
    return s;
}

void sp_rewrite_layer(const graph_t *in, graph_t *out, int64_t P, int64_t hq_local, int64_t hkv_local) {
    *out = *in;
    if (P == 1) return;
    graph_t *g = out;
    int att = -1;
    for (int s = 0; s < g->ns; s++)
        if (g->s[s].op == OP_ATTENTION) att = s;
    if (att < 0) return;
    const char *hname[3] = {"q_h", "k_h", "v_h"};
    /* q, k, v: sequence-sharded -> head-sharded, just before attention */
    for (int i = 0; i < 3; i++) {
        int src = g->s[att].in[i];
        const tensor_desc_t *ts = &g->t[src];
        int64_t hl = i == 0 ? hq_local : hkv_local;
        int dst = new_tensor(g, ts, hname[i]);
        g->t[dst].rows = ROWS_GLOBAL;
        g->t[dst].heads = hl;
        g->t[dst].width = hl * ts->head_dim;
        graph_step_t s = a2a_step(OP_A2A_SEQ_TO_HEAD, src, dst, ts->heads, ts->head_dim, ts->name);
        /* ROPE_SPLIT writes it as the all-to-all's per-peer blocks, unless
         * the heads do not split evenly (KV replication: heads_pack stages it) */
        if (g->t[src].heads % P == 0) g->t[src].packed = (int)P;
        insert_step(g, att, &s);
        att++;
        g->s[att].in[i] = dst;
    }
    graph_step_t *as = &g->s[att];
    as->heads = hq_local;
    as->kv_heads = hkv_local;
    /* attention writes o_h (head-sharded) and lse for its local heads; the
     * all-to-all after it restores o (sequence-sharded, all heads) */
    int o = as->out[0], lse = as->out[1];
    int oh = new_tensor(g, &g->t[o], "o_h");
    g->t[oh].rows = ROWS_GLOBAL;
    g->t[oh].heads = hq_local;
    g->t[oh].width = hq_local * g->t[o].head_dim;
    g->t[lse].rows = ROWS_GLOBAL;
    g->t[lse].heads = hq_local;
    g->t[lse].width = hq_local;
    as->out[0] = oh;
    /* the all-to-all receives o as per-peer blocks, which o_proj reads in place */
    if (g->t[o].heads % P == 0) g->t[o].packed = (int)P;
    graph_step_t s = a2a_step(OP_A2A_HEAD_TO_SEQ, oh, o, g->t[o].heads, g->t[o].head_dim, "o");
    insert_step(g, att + 1, &s);
}

a2a_staging_t plan_a2a_staging(const graph_plan_t *gp, int si) {
    a2a_staging_t st = {0, 0, 0, 0};
    const graph_step_t *s = &gp->g.s[si];
    if (s->op == OP_A2A_SEQ_TO_HEAD) {
        int packed = gp->g.t[s->in[0]].packed > 1;
        st.fwd_send = !packed;
        /* the gradient arrives in the packed layout; it can land in place
         * only when it is the first write of that gradient */
        st.bwd_recv = !packed || !gp->grad_first[si][0];
    } else if (s->op == OP_A2A_HEAD_TO_SEQ) {
        int packed = gp->g.t[s->out[0]].packed > 1;
        st.fwd_recv = !packed;
        st.bwd_send = !packed;
    }
    return st;
}

static void reset_graph_plan(graph_plan_t *gp, const graph_t *g) {
    memset(gp, 0, sizeof *gp);
    gp->g = *g;
    for (int t = 0; t < GRAPH_MAX_TENSORS; t++) {
        gp->t[t].saved_off = gp->t[t].fwd_off = gp->t[t].bwd_off = gp->t[t].grad_off = PLAN_NO_OFFSET;
    }
}

int sp_pass(plan_t *p, const config_t *cfg, const model_t *m, int world, int sp, int64_t seq_len,
            const plan_target_t *target, char *err, size_t errlen) {
    char valid[256];
    memset(p, 0, sizeof *p);
    p->model = m;
    p->target = *target;
    p->policy = cfg->checkpointing.policy;
    if (world < 1) return asp_errf(err, errlen, "world size %d: must be at least 1 rank", world);
    if (sp < 1 || world % sp || !sp_degree_valid(m, sp)) {
        sp_valid_degrees(m, world, valid, sizeof valid);
        return asp_errf(err, errlen,
                        "parallel.sequence_parallel_size: %d is not possible with %lld query heads and %lld KV "
                        "heads on %d rank%s; valid sequence_parallel_size for world %d: %s (or auto)",
                        sp, (long long)m->hq, (long long)m->hkv, world, world == 1 ? "" : "s", world,
                        valid[0] ? valid : "none");
    }
    if (seq_len < 1)
        return asp_errf(err, errlen, "train.seq_len: %lld must be at least 1 token", (long long)seq_len);
    if (cfg->parallel.zero_stage < -1 || cfg->parallel.zero_stage > 3)
        return asp_errf(err, errlen, "parallel.zero_stage: %d is not a stage; use 0, 1, 2, 3 or auto",
                        cfg->parallel.zero_stage);
    p->world = world;
    p->sp = sp;
    p->dp = world / sp;
    /* the placement of model state: plan_compile sets it per candidate */
    p->zero_stage = cfg->parallel.zero_stage >= 0 ? cfg->parallel.zero_stage : 1;
    p->optim_offload = cfg->optimizer.offload > 0;
    p->params_offload = cfg->optimizer.offload_params > 0;
    p->host_grad_bytes = 4;
    p->zero_auto = 0;
    int64_t gbs = cfg->train.global_batch_size;
    if (gbs < 1 || gbs % p->dp)
        return asp_errf(err, errlen,
                        "train.global_batch_size: %lld is not a positive multiple of the data-parallel degree %d "
                        "(world %d / sequence_parallel_size %d); use a multiple of %d or change the degrees",
                        (long long)gbs, p->dp, world, sp, p->dp);
    p->micro_steps = gbs / p->dp;
    p->seq_len = seq_len;
    p->seq_pad = asp_ceil_div(seq_len, sp) * sp;
    p->seq_local = p->seq_pad / sp;
    p->q_heads_local = m->hq / sp;
    if (m->hkv % sp == 0) {
        p->kv_heads_local = m->hkv / sp;
        p->kv_replication = 1;
    } else {
        p->kv_heads_local = 1;
        p->kv_replication = (int)(sp / m->hkv);
    }
    reset_graph_plan(&p->prologue, &m->prologue);
    reset_graph_plan(&p->epilogue, &m->epilogue);
    graph_t layer;
    sp_rewrite_layer(&m->layer, &layer, sp, p->q_heads_local, p->kv_heads_local);
    reset_graph_plan(&p->layer, &layer);
    p->layers_rich = (int)m->L;
    p->mlp_tile_tokens = cfg->checkpointing.mlp_tile_tokens;
    p->attn_pieces = 1;
    p->documents = config_documents_eos(cfg);
    graph_plan_t *gps[3] = {&p->prologue, &p->layer, &p->epilogue};
    for (int i = 0; i < 3; i++)
        for (int t = 0; t < gps[i]->g.nt; t++) gps[i]->t[t].bytes = plan_tensor_bytes(p, &gps[i]->g.t[t]);
    return 0;
}
