/* The graph's facts and costs, as the SAC pass and the memory plan both see
 * them: what each step's backward reads, which step produces a tensor, the
 * FLOPs and all-to-all bytes of a step, and the closure of steps that
 * rebuild a dropped tensor (sac_derive). Depends on no other pass: sac.c
 * (the decisions) and memplan.c (the layout) both build on it. */
#include <string.h>

#include "plan/passes.h"

int sac_bwd_reads(const graph_step_t *s, int t) {
    switch (s->op) {
    case OP_RMSNORM:
    case OP_MATMUL:
    case OP_SWIGLU:
        return s->nin > 0 && s->in[0] == t;
    case OP_ADD_RMSNORM:
        return s->nout > 0 && s->out[0] == t;  /* the norm's input h, not the addends */
    case OP_ATTENTION:
        for (int i = 0; i < s->nin; i++)
            if (s->in[i] == t) return 1;
        for (int i = 0; i < s->nout; i++)
            if (s->out[i] == t) return 1;
        return 0;
    default:
        return 0;   /* EMBED, ROPE_SPLIT, ADD, LMHEAD_LOSS, A2A read no activation */
    }
}

int sac_producer(const graph_t *g, int t) {
    for (int s = 0; s < g->ns; s++)
        for (int i = 0; i < g->s[s].nout; i++)
            if (g->s[s].out[i] == t) return s;
    return -1;
}

int sac_read_by_backward(const graph_t *g, int t) {
    for (int s = 0; s < g->ns; s++)
        if (sac_bwd_reads(&g->s[s], t)) return 1;
    return 0;
}

static double rows_of(const plan_t *p, const tensor_desc_t *t) {
    return (double)(t->rows == ROWS_GLOBAL ? p->seq_pad : p->seq_local);
}

double sac_step_flops(const plan_t *p, const graph_t *g, int si) {
    const graph_step_t *s = &g->s[si];
    const tensor_desc_t *x = s->nin ? &g->t[s->in[0]] : &g->t[s->out[0]];
    double n = rows_of(p, x);
    switch (s->op) {
    case OP_MATMUL: return 2.0 * n * (double)s->k * (double)s->m;
    case OP_RMSNORM: return 4.0 * n * (double)x->width;            /* square, sum, scale, weight */
    case OP_ROPE_SPLIT: return 3.0 * n * (double)x->width;         /* rotate q and k, copy v */
    case OP_ATTENTION:                                             /* QK^T and PV, causal half */
        return 2.0 * n * n * (double)s->heads * (double)s->head_dim;
    case OP_ADD: return n * (double)x->width;
    case OP_ADD_RMSNORM: return 5.0 * n * (double)x->width;      /* the add, then the norm's 4 */
    case OP_SWIGLU: return 3.0 * n * (double)x->width;             /* silu + product per output */
    case OP_EMBED: return n * (double)x->width;
    case OP_LMHEAD_LOSS: return 2.0 * n * (double)x->width * (double)p->model->V;
    default: return 0.0;
    }
}

size_t sac_step_comm_bytes(const plan_t *p, const graph_t *g, int si) {
    const graph_step_t *s = &g->s[si];
    if (s->op == OP_A2A_SEQ_TO_HEAD) return plan_tensor_bytes(p, &g->t[s->out[0]]);
    if (s->op == OP_A2A_HEAD_TO_SEQ) return plan_tensor_bytes(p, &g->t[s->in[0]]);
    return 0;
}

static int is_available(const graph_t *g, const keep_t *keep, int t) {
    return t == g->input || keep[t] == KEEP_SAVE || keep[t] == KEEP_OFFLOAD;
}

/* An ADD_RMSNORM whose h is at hand is rebuilt as the norm of h alone. */
static int norm_only(const graph_t *g, const keep_t *keep, int s) {
    return g->s[s].op == OP_ADD_RMSNORM && is_available(g, keep, g->s[s].out[0]);
}

int plan_recompute_norm_only(const graph_plan_t *gp, int si) {
    const graph_step_t *s = &gp->g.s[si];
    if (s->op != OP_ADD_RMSNORM) return 0;
    keep_t k = gp->t[s->out[0]].keep;
    return s->out[0] == gp->g.input || k == KEEP_SAVE || k == KEEP_OFFLOAD;
}

static double rebuild_flops(const plan_t *p, const graph_t *g, int s, int only_norm) {
    if (!only_norm) return sac_step_flops(p, g, s);
    const tensor_desc_t *h = &g->t[g->s[s].out[0]];
    return 4.0 * rows_of(p, h) * (double)h->width;             /* as RMSNORM */
}

double sac_recompute_step_flops(const plan_t *p, const graph_plan_t *gp, int s) {
    return rebuild_flops(p, &gp->g, s, plan_recompute_norm_only(gp, s));
}

int plan_piece_loop_rebuilds(const graph_plan_t *gp, int si) {
    if (gp->pieces <= 1 || si < gp->piece_begin || si >= gp->piece_end || !gp->recompute_step[si]) return 0;
    for (int o = 0; o < gp->g.s[si].nout; o++)
        if (gp->t[gp->g.s[si].out[o]].piece_buf) return 1;
    return 0;
}

int plan_piece_input_rebuild(const graph_plan_t *gp) {
    const graph_t *g = &gp->g;
    if (gp->pieces <= 1 || !gp->recompute_step[gp->piece_end]) return -1;
    const int rin = g->s[gp->piece_begin].in[0], prod = sac_producer(g, rin);
    if (prod < 0 || rin == g->input || gp->t[rin].keep != KEEP_RECOMPUTE || !gp->recompute_step[prod]) return -1;
    if (g->s[prod].nout != 1 || plan_recompute_norm_only(gp, prod)) return -1;
    for (int s = 0; s < g->ns; s++)
        for (int i = 0; i < g->s[s].nin; i++)
            if (g->s[s].in[i] == rin && (s < gp->piece_begin || s > gp->piece_end)) return -1;
    return prod;
}

double sac_graph_recompute_flops(const plan_t *p, const graph_plan_t *gp) {
    double rc = 0;
    for (int s = 0; s < gp->g.ns; s++)
        if (gp->recompute_step[s]) rc += sac_recompute_step_flops(p, gp, s);
    /* a pieced region rebuilt before the backward (for o_proj's output) has
     * its cheap steps rebuilt again piece by piece inside the backward's loop */
    if (gp->pieces > 1 && gp->recompute_step[gp->piece_end])
        for (int s = gp->piece_begin; s < gp->piece_end; s++)
            if (plan_piece_loop_rebuilds(gp, s)) rc += sac_recompute_step_flops(p, gp, s);
    const int rin = plan_piece_input_rebuild(gp);
    if (rin >= 0) rc += sac_recompute_step_flops(p, gp, rin);
    return rc;
}

void sac_closure(const plan_t *p, const graph_t *g, const keep_t *keep, int t, int *rstep, double *flops,
                 size_t *comm) {
    int stack[GRAPH_MAX_TENSORS * GRAPH_MAX_IO + 1], sp = 0;
    int seen[GRAPH_MAX_TENSORS] = {0};
    stack[sp++] = t;
    seen[t] = 1;
    while (sp) {
        int u = stack[--sp];
        int s = sac_producer(g, u);
        if (s < 0 || rstep[s]) continue;
        rstep[s] = 1;
        int only_norm = norm_only(g, keep, s);
        if (flops) *flops += rebuild_flops(p, g, s, only_norm);
        if (comm) *comm += sac_step_comm_bytes(p, g, s);
        if (only_norm) continue;    /* reads only the kept h */
        for (int i = 0; i < g->s[s].nin; i++) {
            int v = g->s[s].in[i];
            if (!is_available(g, keep, v) && !seen[v]) {
                seen[v] = 1;
                stack[sp++] = v;
            }
        }
    }
}

void sac_derive(const plan_t *p, graph_plan_t *gp, const int *order, int norder) {
    const graph_t *g = &gp->g;
    keep_t keep[GRAPH_MAX_TENSORS];
    for (int t = 0; t < g->nt; t++) {
        keep[t] = gp->t[t].keep;
        gp->t[t].recompute_flops = 0;
        gp->t[t].recompute_comm_bytes = 0;
    }
    memset(gp->recompute_step, 0, sizeof gp->recompute_step);
    /* charge each recomputed step to the first tensor (in drop order) that needs it */
    int done[GRAPH_MAX_TENSORS] = {0};
    for (int pass = 0; pass < 2; pass++) {
        int n = pass == 0 ? (order ? norder : 0) : g->nt;
        for (int i = 0; i < n; i++) {
            int t = pass == 0 ? order[i] : i;
            if (done[t] || keep[t] != KEEP_RECOMPUTE) continue;
            done[t] = 1;
            sac_closure(p, g, keep, t, gp->recompute_step, &gp->t[t].recompute_flops,
                         &gp->t[t].recompute_comm_bytes);
        }
    }
    /* grad_first: the consumer with the highest step index runs its backward first */
    memset(gp->grad_first, 0, sizeof gp->grad_first);
    for (int t = 0; t < g->nt; t++) {
        if (g->t[t].dtype != TENSOR_ACT) continue;
        int last = -1, slot = -1;
        for (int s = 0; s < g->ns; s++)
            for (int i = 0; i < g->s[s].nin; i++)
                if (g->s[s].in[i] == t) { last = s; slot = i; }
        if (last >= 0) gp->grad_first[last][slot] = 1;
    }
}

/* 6N + causal attention per token (plan.h). */
double plan_flops_per_token(const model_t *m, double seq_len) {
    return 6.0 * model_matmul_params(m) + 6.0 * (double)m->L * seq_len * (double)(m->hq * m->hd);
}
