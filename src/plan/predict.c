/* The step-time predictor: walks the compiled plan's graphs (every layer's
 * own plan, the prologue and the epilogue) and prices each step with a card
 * profile: GEMMs at the rate of their call size, attention at its length and
 * head dim, the other ops by the bytes they move, all-to-alls by the
 * profile's collective rate; then what the plan moves beside the compute
 * (activation offload, model state over PCIe, gradient reduction, the host
 * AdamW) and the part of it the compute does not hide. The model is in
 * docs/plan.md ("Predicted step time"). Knows no GPU: only the profile. */
#include "plan/predict.h"

#include <string.h>

#include "plan/passes.h"
#include "util.h"

/* Backward FLOPs of attention against its forward's, the convention of the
 * profile's attn_bwd rates (FlashAttention's). */
#define ATTN_BWD_FLOP_RATIO 2.5
/* A memory-bound op's backward moves about twice its forward's bytes (reads
 * the input and the output's gradient, writes the input's gradient). */
#define MEM_BWD_RATIO 2.0
/* AdamW on the device: fp32 master, m, v and gradient read, master, m, v
 * written, and the compute weight written. */
#define ADAMW_BYTES_FP32 28.0
/* The loss chunk's logits: written by the LM head, read by the softmax, the
 * gradient written over them and read by the two GEMMs of the backward. */
#define LOSS_LOGIT_PASSES 4.0
/* Ranks sharing one node's host AdamW rate at most (a node's GPUs). */
#define NODE_RANKS_MAX 8

const char *pred_kind_name(pred_kind_t k) {
    static const char *const names[PRED__COUNT] = {"GEMMs", "attention", "memory-bound ops", "recompute",
                                                   "exposed PCIe copies", "exposed communication",
                                                   "exposed host AdamW"};
    return k < PRED__COUNT ? names[k] : "?";
}

double predict_attention_s(const card_profile_t *prof, double rows, double heads, double head_dim, double doc_len,
                           int pieces, int backward) {
    if (rows <= 0) return 0;
    double len = doc_len > 0 && doc_len < rows ? doc_len : rows;
    double flops = 2.0 * rows * len * heads * head_dim;     /* causal QK^T and PV: half of 4 n len H hd */
    if (backward) flops *= ATTN_BWD_FLOP_RATIO;
    double rate = profile_attn_flops_per_s(prof, backward, doc_len > 0, len, (int)head_dim);
    return (rate > 0 ? flops / rate : 0) + (double)(pieces > 0 ? pieces : 1) * prof->attn_piece_s;
}

/* The calls attention runs as for step si: one per piece of attention in
 * pieces (head groups), else one per layer. */
static int attention_pieces(const plan_t *p, const graph_plan_t *gp, int si) {
    (void)p;
    return plan_in_pieces(gp, si) ? gp->pieces : 1;
}

/* Seconds of one step's forward or backward by kind (GEMM, attention,
 * memory-bound) and all-to-all seconds. */
typedef struct {
    double k[PRED__COUNT];
    double a2a;
} step_cost_t;

static double rows_of(const plan_t *p, const tensor_desc_t *t) {
    return (double)(t->rows == ROWS_GLOBAL ? p->seq_pad : p->seq_local);
}

static double io_bytes(const plan_t *p, const graph_t *g, const graph_step_t *s) {
    double b = 0;
    for (int i = 0; i < s->nin; i++) b += (double)plan_tensor_bytes(p, &g->t[s->in[i]]);
    for (int i = 0; i < s->nout; i++) b += (double)plan_tensor_bytes(p, &g->t[s->out[i]]);
    return b;
}

static double gemm_s(const card_profile_t *prof, double flops, double flops_per_call) {
    double rate = profile_gemm_flops_per_s(prof, flops_per_call);
    return rate > 0 ? flops / rate : 0;
}

/* The LM head and loss, forward and backward in one step, chunk by chunk. */
static void lmhead_cost(const plan_t *p, const graph_t *g, int si, const card_profile_t *prof, step_cost_t *c) {
    const tensor_desc_t *x = &g->t[g->s[si].in[0]];
    double n = rows_of(p, x), chunk = p->loss_chunk > 0 && (double)p->loss_chunk < n ? (double)p->loss_chunk : n;
    double per_call = 2.0 * chunk * (double)x->width * (double)p->model->V;
    c->k[PRED_GEMM] += gemm_s(prof, 3.0 * 2.0 * n * (double)x->width * (double)p->model->V, per_call);
    c->k[PRED_MEMORY] += LOSS_LOGIT_PASSES * n * (double)p->model->V * p->target.act_bytes / prof->mem_bytes_per_s;
}

static void step_cost(const plan_t *p, const graph_plan_t *gp, int si, int backward, double doc_len,
                      const card_profile_t *prof, step_cost_t *c) {
    const graph_t *g = &gp->g;
    const graph_step_t *s = &g->s[si];
    memset(c, 0, sizeof *c);
    switch (s->op) {
    case OP_MATMUL: {
        double n = rows_of(p, &g->t[s->in[0]]), flops = sac_step_flops(p, g, si);
        double call_rows = gp->tile_rows && si >= gp->tile_begin && si <= gp->tile_end && (double)gp->tile_rows < n
                               ? (double)gp->tile_rows : n;
        c->k[PRED_GEMM] = (backward ? 2.0 : 1.0) * gemm_s(prof, flops, flops * call_rows / n);
        return;
    }
    case OP_ATTENTION:
        c->k[PRED_ATTENTION] = predict_attention_s(prof, rows_of(p, &g->t[s->in[0]]), (double)s->heads,
                                                   (double)s->head_dim, doc_len, attention_pieces(p, gp, si), backward);
        return;
    case OP_A2A_SEQ_TO_HEAD:
    case OP_A2A_HEAD_TO_SEQ: {
        double rate = profile_coll_bytes_per_s(prof, COLL_A2A, p->sp);
        c->a2a = rate > 0 ? (double)sac_step_comm_bytes(p, g, si) / rate : 0;
        return;
    }
    case OP_LMHEAD_LOSS:
        if (!backward) lmhead_cost(p, g, si, prof, c);
        return;
    default:
        c->k[PRED_MEMORY] = (backward ? MEM_BWD_RATIO : 1.0) * io_bytes(p, g, s) / prof->mem_bytes_per_s;
    }
}

/* What rebuilding step si costs: the whole step, or only the norm of a kept h. */
static double recompute_cost(const plan_t *p, const graph_plan_t *gp, int si, double doc_len,
                             const card_profile_t *prof, double *a2a) {
    const graph_t *g = &gp->g;
    if (plan_recompute_norm_only(gp, si)) {
        double h = (double)plan_tensor_bytes(p, &g->t[g->s[si].out[0]]);
        return 2.0 * h / prof->mem_bytes_per_s;
    }
    step_cost_t c;
    step_cost(p, gp, si, 0, doc_len, prof, &c);
    *a2a += c.a2a;
    return c.k[PRED_GEMM] + c.k[PRED_ATTENTION] + c.k[PRED_MEMORY];
}

/* One run of a graph plan (a layer, the prologue or the epilogue). */
typedef struct {
    double k[PRED__COUNT];  /* GEMM, attention, memory, recompute */
    double fwd, bwd;        /* compute seconds of its forward; of its backward with the recompute */
    double a2a;             /* all-to-all seconds, forward, recompute and backward */
} graph_time_t;

static void graph_time(const plan_t *p, const graph_plan_t *gp, double doc_len, const card_profile_t *prof,
                       graph_time_t *t) {
    memset(t, 0, sizeof *t);
    for (int si = 0; si < gp->g.ns; si++) {
        for (int bwd = 0; bwd <= 1; bwd++) {
            step_cost_t c;
            step_cost(p, gp, si, bwd, doc_len, prof, &c);
            double compute = c.k[PRED_GEMM] + c.k[PRED_ATTENTION] + c.k[PRED_MEMORY];
            for (int k = PRED_GEMM; k <= PRED_MEMORY; k++) t->k[k] += c.k[k];
            *(bwd ? &t->bwd : &t->fwd) += compute;
            t->a2a += c.a2a;
        }
        if (gp->recompute_step[si]) {
            /* a pieced region rebuilt before the backward rebuilds its piece-held steps
             * again in the piece loop, and the region's input before that loop */
            int runs = 1 + (plan_piece_prepass(gp) && plan_piece_loop_rebuilds(gp, si)) +
                       (si == plan_piece_input_rebuild(gp));
            double rc = 0;
            for (int r = 0; r < runs; r++) rc += recompute_cost(p, gp, si, doc_len, prof, &t->a2a);
            t->k[PRED_RECOMPUTE] += rc;
            t->bwd += rc;
        }
    }
}

/* Bytes one layer sends to the host tier and back. */
static double offload_bytes(const plan_t *p, const graph_plan_t *gp) {
    double b = 0;
    for (int t = 0; t < gp->g.nt; t++)
        if (gp->t[t].keep == KEEP_OFFLOAD) b += (double)gp->t[t].bytes;
    if (plan_input_offloaded(p, gp)) b += (double)gp->t[gp->g.input].bytes;
    return b;
}

static double pos(double x) { return x > 0 ? x : 0; }

/* Forward seconds of the prologue and of one layer (every layer runs the
 * same forward), and the backward of the whole micro-step: what the copies
 * and collectives beside the compute can hide behind. */
typedef struct {
    double pro_fwd, layer_fwd, fwd, bwd;
} walk_t;

/* Add one layer's offload copies: the copy to the host runs during the next
 * layer's forward, the copy back during the backward of the layer above. */
static void layer_offload(const plan_t *p, const graph_plan_t *gp, int l, const graph_time_t *t,
                          const card_profile_t *prof, step_prediction_t *o) {
    double b = offload_bytes(p, gp);
    if (b <= 0) return;
    o->s[PRED_MEMORY] += 4.0 * b / prof->mem_bytes_per_s; /* into the staging slot and out, both ways */
    if (l >= p->mem.offload_host_layers) return;           /* stays in its staging slot */
    double down = b / prof->d2h_bytes_per_s, up = b / prof->h2d_bytes_per_s;
    o->offload_copy_s += down + up;
    o->s[PRED_PCIE] += pos(down - t->fwd) + pos(up - t->bwd);
}

/* The compute of one micro-step, every layer with its own plan. */
static void walk_graphs(const plan_t *p, const card_profile_t *prof, double doc_len, step_prediction_t *o,
                        walk_t *w) {
    graph_time_t rich, lean, pro, epi;
    graph_time(p, &p->layer, doc_len, prof, &rich);
    graph_time(p, &p->layer_lean, doc_len, prof, &lean);
    graph_time(p, &p->prologue, doc_len, prof, &pro);
    graph_time(p, &p->epilogue, doc_len, prof, &epi);
    memset(w, 0, sizeof *w);
    w->pro_fwd = pro.fwd;
    w->layer_fwd = rich.fwd;
    const graph_time_t *parts[2] = {&pro, &epi};
    for (int i = 0; i < 2; i++) {
        for (int k = PRED_GEMM; k <= PRED_RECOMPUTE; k++) o->s[k] += parts[i]->k[k];
        w->fwd += parts[i]->fwd;
        w->bwd += parts[i]->bwd;
    }
    for (int l = 0; l < (int)p->model->L; l++) {
        const graph_plan_t *gp = plan_layer_plan(p, l);
        const graph_time_t *t = gp == &p->layer ? &rich : &lean;
        for (int k = PRED_GEMM; k <= PRED_RECOMPUTE; k++) o->s[k] += t->k[k];
        w->fwd += t->fwd;
        w->bwd += t->bwd;
        o->a2a_s += t->a2a;
        layer_offload(p, gp, l, t, prof, o);
    }
}

/* The host AdamW beside the next forward: bucket b's weights are ready when
 * the worker has updated buckets 0..b (and, with the weights on the
 * device, copied them over); the forward needs bucket 0 (the embedding) at
 * once and layer l's when it reaches it. Exposed: the largest lag. The
 * gradients go down during the backward as each bucket is final; the
 * embedding's is the last and is exposed. */
static void host_optimizer(const plan_t *p, const card_profile_t *prof, const walk_t *w, step_prediction_t *o) {
    const int nb = plan_n_buckets(p), node = p->world < NODE_RANKS_MAX ? p->world : NODE_RANKS_MAX;
    double done = 0, ready = 0, lag_host = 0, lag_all = 0, up_all = 0, down_all = 0, down_last = 0;
    for (int b = 0; b < nb; b++) {
        plan_bucket_t bk;
        plan_bucket(p, b, &bk);
        double slice = (double)bk.slice_len;
        done += slice * node / prof->host_adamw_per_s;
        double up = p->params_offload ? 0 : slice * p->target.param_bytes / prof->h2d_bytes_per_s;
        double need = b == 0 ? 0 : w->pro_fwd + (double)(b - 1) * w->layer_fwd;
        ready = (ready > done ? ready : done) + up;
        lag_host = done - need > lag_host ? done - need : lag_host;
        lag_all = ready - need > lag_all ? ready - need : lag_all;
        up_all += up;
        double down = (double)p->micro_steps * slice * p->host_grad_bytes / prof->d2h_bytes_per_s;
        down_all += down;
        if (b == 0) down_last = down;
    }
    o->host_adamw_s = done;
    o->state_copy_s += up_all + down_all;
    o->s[PRED_HOST_ADAMW] += lag_host;
    o->s[PRED_PCIE] += (lag_all - lag_host) + down_last + pos(down_all - down_last - w->bwd);
}

/* ZeRO-3 with the weights on the host: each bucket's shard crosses PCIe
 * before its forward and its backward gather, prefetched a bucket ahead:
 * the first one is exposed, and whatever the compute cannot cover. */
static void host_weights(const plan_t *p, const card_profile_t *prof, const walk_t *w, step_prediction_t *o) {
    plan_bucket_t b0;
    plan_bucket(p, 0, &b0);
    double per = (double)p->target.param_bytes / prof->h2d_bytes_per_s;
    double all = 2.0 * (double)p->micro_steps * (double)p->shard_len * per, first = (double)b0.slice_len * per;
    o->state_copy_s += all;
    o->s[PRED_PCIE] += first + pos(all - first - w->fwd - w->bwd);
}

/* Gradient reduction as each bucket's backward ends (the embedding's last,
 * exposed), then the weights: all-gathered after the optimizer (ZeRO 0-2),
 * or gathered bucket by bucket, prefetched, in the forward and backward
 * (ZeRO-3). */
static void collectives(const plan_t *p, const card_profile_t *prof, const walk_t *w, step_prediction_t *o) {
    const double W = (double)p->world, share = (W - 1) / W;
    double rs = profile_coll_bytes_per_s(prof, COLL_REDUCE_SCATTER, p->world);
    double ag = profile_coll_bytes_per_s(prof, COLL_ALL_GATHER, p->world);
    if (rs <= 0 || ag <= 0) {
        o->no_collective_rates = 1;
        return;
    }
    double all = 0, last = 0;
    for (int b = 0; b < plan_n_buckets(p); b++) {
        plan_bucket_t bk;
        plan_bucket(p, b, &bk);
        double t = (double)bk.flat_len * p->target.grad_bytes * share / rs * (p->shards > 1 ? 1.0 : 2.0);
        all += t;
        if (b == 0) last = t;
    }
    double weights = (double)p->n_params_padded * p->target.param_bytes * share / ag;
    o->grad_comm_s = all;
    o->s[PRED_COMM] += last + pos(all - last - w->bwd);
    if (p->zero_stage >= 3) {
        double gathers = 2.0 * (double)p->micro_steps * weights;
        o->grad_comm_s += gathers;
        o->s[PRED_COMM] += gathers / plan_n_buckets(p) + pos(gathers - w->fwd - w->bwd);
    } else if (p->shards > 1) {
        o->grad_comm_s += weights;
        o->s[PRED_COMM] += weights;
    }
}

/* Model FLOPs of a step as bench/README.md counts them (with documents, each
 * document's own attention). */
static double step_flops(const plan_t *p, double doc_len) {
    const model_t *m = p->model;
    double len = doc_len > 0 && doc_len < (double)p->seq_len ? doc_len : (double)p->seq_len;
    double tokens = (double)p->seq_len * (double)p->micro_steps * (double)p->dp;
    return tokens * plan_flops_per_token(m, len);
}

void plan_predict(const plan_t *p, const card_profile_t *prof, double doc_len, step_prediction_t *o) {
    memset(o, 0, sizeof *o);
    step_prediction_t micro;
    memset(&micro, 0, sizeof micro);
    walk_t w;
    walk_graphs(p, prof, doc_len, &micro, &w);
    const double n = (double)p->micro_steps;
    for (int k = PRED_GEMM; k <= PRED_PCIE; k++) o->s[k] = n * micro.s[k];
    o->offload_copy_s = n * micro.offload_copy_s;
    o->a2a_s = n * micro.a2a_s;
    o->s[PRED_COMM] = o->a2a_s;     /* on attention's critical path at both ends */
    if (p->sp > 1 && profile_coll_bytes_per_s(prof, COLL_A2A, p->sp) <= 0) o->no_collective_rates = 1;
    if (p->optim_offload) host_optimizer(p, prof, &w, o);
    else o->s[PRED_MEMORY] += (double)p->shard_len * (ADAMW_BYTES_FP32 + p->target.param_bytes) / prof->mem_bytes_per_s;
    if (p->params_offload) host_weights(p, prof, &w, o);
    if (p->world > 1) collectives(p, prof, &w, o);
    for (int k = 0; k < PRED__COUNT; k++) o->step_s += o->s[k];
    double tokens = (double)p->seq_len * n * (double)p->dp;
    o->tokens_per_s = o->step_s > 0 ? tokens / o->step_s : 0;
    o->tflops_per_gpu = o->step_s > 0 ? step_flops(p, doc_len) / o->step_s / (double)p->world / 1e12 : 0;
    o->mfu = prof->peak_tflops > 0 ? o->tflops_per_gpu / prof->peak_tflops : 0;
}

double plan_predicted_overhead_s(const plan_t *p, const card_profile_t *prof) {
    step_prediction_t o;
    plan_predict(p, prof, 0, &o);
    return o.s[PRED_RECOMPUTE] + o.s[PRED_PCIE] + o.s[PRED_HOST_ADAMW];
}

const card_profile_t *plan_cost_profile(const plan_t *p) {
    static card_profile_t h100;
    static int parsed;
    if (p->target.profile) return p->target.profile;
    if (!parsed) {
        char err[512];
        const char *text = profile_builtin_text("h100");
        if (profile_parse(&h100, text, strlen(text), "h100", err, sizeof err) != 0)
            asp_die(ASP_EXIT_FAILURE, "built-in profile: %s", err);
        parsed = 1;
    }
    return &h100;
}
