/* Walking the plan: the forward over the prologue, the layers and the
 * epilogue, keeping what SAC saved; the backward in reverse, recomputing
 * what it dropped; tiles; the all-to-alls; the loss. Follows docs/plan.md
 * ("the executor's walk"): the plan decides where every tensor lives, this
 * file turns plan entries into pointers and backend calls. It asks the model
 * state (state.c, optim.c) for weights and gradient buckets and the
 * activation tier (tier.c) for offloaded tensors; it owns none of theirs. */
#include <math.h>
#include <string.h>

#include "exec/internal.h"
#include "util.h"

/* ------------------------------------------------------------------ tensor locations */

typedef struct {
    const graph_plan_t *gp;
    int layer;              /* layer index for the layer graph, -1 for prologue/epilogue */
    int is_layer, is_prologue, is_epilogue;
    /* inside the graph's tiled region: the tile's first row and row count
     * (rows 0: the whole sequence). Whole-sequence tensors are seen from
     * row0 on; the region's tiled intermediates hold just the tile. */
    int64_t row0, rows;
    /* inside the graph's pieced region: the KV-head group (-1: none), and
     * whether the walk is in the backward's piece loop (attention's rebuild
     * there has a scratch buffer of its own) */
    int piece, piece_loop;
    /* in the rebuild before the backward: a tensor with a buffer of its own
     * there (pre_off: the pieced region's, rebuilt again in its loop) uses it */
    int pre;
} walk_t;

/* A pointer into a [rows, width] tensor at the walk's tile. */
static uint8_t *at_tile(exec_t *e, const walk_t *w, int tid, uint8_t *base) {
    if (!w->rows || w->gp->t[tid].tiled) return base;
    return base + (size_t)w->row0 * (size_t)w->gp->g.t[tid].width * e->act;
}


/* Layer `layer`'s input: in its saved slot, or with the inputs on the host
 * in its staging slot (written there by the layer below, brought back from
 * the host before its backward). */
static uint8_t *layer_input(exec_t *e, int layer) {
    if (layer >= (int)e->model->L) return e->final_hidden;
    const graph_plan_t *lp = plan_layer_plan(e->plan, layer);
    if (plan_input_offloaded(e->plan, lp)) return ex_stage_slot(e, layer) + lp->t[lp->g.input].saved_off;
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
    if (ph == PHASE_BWD && w->pre && tp->pre_off != PLAN_NO_OFFSET) off = tp->pre_off;
    if (off == PLAN_NO_OFFSET)
        asp_die(ASP_EXIT_FAILURE, "internal: %s tensor %s has no %s workspace slot", g->name, g->t[tid].name,
                ph == PHASE_FWD ? "forward" : "backward");
    return e->ws + off;
}

/* A pieced tensor kept whole (saved, offloaded) is seen at its piece's
 * part; one held a piece at a time is its buffer. */
static uint8_t *at_piece(const walk_t *w, int tid, uint8_t *base) {
    const tensor_plan_t *tp = &w->gp->t[tid];
    if (w->piece < 0 || !tp->pieced || tp->piece_buf) return base;
    return base + (size_t)w->piece * (tp->bytes / (size_t)w->gp->pieces);
}

static uint8_t *tensor_at(exec_t *e, const walk_t *w, int tid, phase_t ph) {
    return at_piece(w, tid, at_tile(e, w, tid, tensor_at_whole(e, w, tid, ph)));
}

/* Gradient of a tensor. The residual stream's gradient flows between graphs
 * in the two resid_grad buffers: the graph output's gradient is in
 * resid_grad[cur], the graph input's gradient goes to resid_grad[1 - cur]. */
static uint8_t *grad_at(exec_t *e, const walk_t *w, int tid) {
    const graph_t *g = &w->gp->g;
    if (tid == g->output || w->gp->t[tid].grad_is_output) return at_tile(e, w, tid, e->resid_grad[e->cur_grad]);
    if (tid == g->input || w->gp->t[tid].grad_is_input) return at_tile(e, w, tid, e->resid_grad[1 - e->cur_grad]);
    size_t off = w->gp->t[tid].grad_off;
    if (off == PLAN_NO_OFFSET)
        asp_die(ASP_EXIT_FAILURE, "internal: %s tensor %s has no gradient slot", g->name, g->t[tid].name);
    return at_tile(e, w, tid, e->ws + off);
}

static int64_t tensor_rows(const exec_t *e, const tensor_desc_t *t) {
    return t->rows == ROWS_GLOBAL ? e->plan->seq_pad : e->plan->seq_local;
}

static uint8_t *step_param(exec_t *e, const walk_t *w, const graph_step_t *s) {
    return ex_param_ptr(e, w->is_layer ? w->layer : -1, s->param);
}

static uint8_t *step_param_grad(exec_t *e, const walk_t *w, const graph_step_t *s) {
    return ex_grad_ptr(e, w->is_layer ? w->layer : -1, s->param);
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
/* The heads step si works on: in the pieced region a piece's share. */
static int64_t step_heads(const walk_t *w, const graph_step_t *s) {
    return w->piece >= 0 ? s->heads / w->gp->pieces : s->heads;
}
static int64_t step_kv_heads(const walk_t *w, const graph_step_t *s) {
    return w->piece >= 0 ? s->kv_heads / w->gp->pieces : s->kv_heads;
}

static void a2a_send_heads(exec_t *e, const walk_t *w, int si, const uint8_t *src, uint8_t *dst, int staged) {
    const graph_step_t *s = &w->gp->g.s[si];
    const plan_t *p = e->plan;
    const int64_t heads = step_heads(w, s);
    if (staged) {
        uint8_t *send = staging(e, e->a2a_send, "a2a_send", &w->gp->g, si);
        e->be->heads_pack(send, src, p->seq_local, heads, s->head_dim, p->sp);
        src = send;
    }
    size_t count = (size_t)(p->seq_local * a2a_heads_per_rank(heads, p->sp) * s->head_dim);
    e->coll->alltoall(e->ranks->sp, src, dst, count, e->be->act_dtype);
}

/* ------------------------------------------------------------------ forward */

/* Attention's scratch lives in the layer workspace, one buffer for each of
 * its runs (0 forward, 1 recompute, 2 backward, 3 rebuild in the backward's
 * piece loop; graph_plan_t); -1 gives the backend its planned op scratch
 * back. */
static void attention_scratch(exec_t *e, const walk_t *w, int run) {
    const graph_plan_t *gp = w->gp;
    if (!gp->attn_scratch_bytes || !e->be->use_scratch) return;
    if (run < 0) {
        e->be->use_scratch(ex_region_ptr(e, &e->plan->mem.scratch), e->plan->mem.scratch.bytes);
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

/* ------------------------------------------------------------------ attention in pieces */

/* A piece's share of the two projections (docs/plan.md): the QKV projection
 * makes the piece's qkv [n, (hq + 2 hkv) hd / G] from three row ranges of
 * W_qkv (its q heads, its k heads, its v heads), each into its columns of
 * the piece's qkv; o_proj reads the piece's o with the piece's columns of
 * W_o and adds into attn_out. Both weight gradients land in those windows;
 * the QKV projection's input gradient adds up over pieces and parts. */
typedef struct {
    int64_t wrow[3], ocol[3], width[3], ldo;
} qkv_parts_t;

static qkv_parts_t qkv_parts(const exec_t *e, int piece, int G) {
    const model_t *m = e->model;
    const int64_t wq = m->hq * m->hd / G, wk = m->hkv * m->hd / G;
    qkv_parts_t q = {{piece * wq, m->hq * m->hd + piece * wk, (m->hq + m->hkv) * m->hd + piece * wk},
                     {0, wq, wq + wk}, {wq, wk, wk}, wq + 2 * wk};
    return q;
}

static void piece_matmul_fwd(exec_t *e, const walk_t *w, const graph_step_t *s, uint8_t *out, const uint8_t *x,
                             int64_t n) {
    const backend_t *be = e->be;
    const int G = w->gp->pieces, j = w->piece;
    const uint8_t *W = step_param(e, w, s);
    if (s->param == LP_QKV) {
        qkv_parts_t q = qkv_parts(e, j, G);
        for (int i = 0; i < 3; i++)
            be->matmul_slice_fwd(out + (size_t)q.ocol[i] * e->act, q.ldo, 0, x, W + (size_t)(q.wrow[i] * s->k) * e->par,
                                 s->k, n, s->k, q.width[i], 1);
        return;
    }
    const int64_t kp = s->k / G;   /* o_proj: the piece's columns of W_o */
    be->matmul_slice_fwd(out, s->m, j > 0, x, W + (size_t)(j * kp) * e->par, s->k, n, kp, s->m,
                         layout_p(&w->gp->g, s->in[0]));
}

static void piece_matmul_bwd(exec_t *e, const walk_t *w, const graph_step_t *s, uint8_t *dx, int first,
                             const uint8_t *dout, const uint8_t *x, int64_t n) {
    const backend_t *be = e->be;
    const int G = w->gp->pieces, j = w->piece;
    const uint8_t *W = step_param(e, w, s);
    uint8_t *dW = step_param_grad(e, w, s);
    if (s->param == LP_QKV) {
        qkv_parts_t q = qkv_parts(e, j, G);
        for (int i = 0; i < 3; i++) {
            size_t wo = (size_t)(q.wrow[i] * s->k);
            be->matmul_slice_bwd(dx, !(first && j == 0 && i == 0), dW ? dW + wo * e->grd : NULL, s->k,
                                 dout + (size_t)q.ocol[i] * e->act, q.ldo, x, W + wo * e->par, n, s->k, q.width[i], 1);
        }
        return;
    }
    const int64_t kp = s->k / G;
    be->matmul_slice_bwd(dx, !first, dW ? dW + (size_t)(j * kp) * e->grd : NULL, s->k, dout, s->m, x,
                         W + (size_t)(j * kp) * e->par, n, kp, s->m, layout_p(&w->gp->g, s->in[0]));
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
        if (w->piece >= 0)
            piece_matmul_fwd(e, w, s, OUT(0), IN(0), n);
        else if (layout_p(g, s->in[0]) > 1)   /* o_proj on the packed attention output */
            be->matmul_blocked_fwd(OUT(0), IN(0), step_param(e, w, s), n, s->k, s->m, layout_p(g, s->in[0]));
        else
            be->matmul_fwd(OUT(0), IN(0), step_param(e, w, s), n, s->k, s->m);
        break;
    case OP_ROPE_SPLIT:
        be->rope_split_fwd(OUT(0), OUT(1), OUT(2), IN(0), e->positions, e->rope_freq, n, step_heads(w, s),
                           step_kv_heads(w, s), s->head_dim, layout_p(g, s->out[0]), layout_p(g, s->out[1]));
        break;
    case OP_ATTENTION:
        attention_scratch(e, w, ph == PHASE_FWD ? 0 : w->piece_loop ? 3 : 1);
        be->attention_fwd(OUT(0), (float *)OUT(1), IN(0), IN(1), IN(2), n, step_heads(w, s), step_kv_heads(w, s),
                          s->head_dim,
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
        int64_t hpr = a2a_heads_per_rank(step_heads(w, s), p->sp);
        int staged = plan_a2a_staging(w->gp, si).fwd_recv;
        uint8_t *dst = staged ? staging(e, e->a2a_recv, "a2a_recv", g, si) : OUT(0);
        e->coll->alltoall(e->ranks->sp, IN(0), dst, (size_t)(p->seq_local * hpr * s->head_dim), be->act_dtype);
        if (staged) be->heads_unpack(OUT(0), dst, p->seq_local, step_heads(w, s), s->head_dim, p->sp, 0);
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
        if (w->piece >= 0)
            piece_matmul_bwd(e, w, s, DIN(0), first_write(w, si, 0), DOUT(0), IN(0), n);
        else if (layout_p(g, s->in[0]) > 1)   /* writes the packed gradient of o */
            be->matmul_blocked_bwd(DIN(0), ACC(0), step_param_grad(e, w, s), DOUT(0), IN(0), step_param(e, w, s), n,
                                   s->k, s->m, layout_p(g, s->in[0]));
        else
            be->matmul_bwd(DIN(0), ACC(0), step_param_grad(e, w, s), DOUT(0), IN(0), step_param(e, w, s), n, s->k,
                           s->m);
        break;
    case OP_ROPE_SPLIT:
        need_overwrite(w, si, 0);
        be->rope_split_bwd(DIN(0), DOUT(0), DOUT(1), DOUT(2), e->positions, e->rope_freq, n, step_heads(w, s),
                           step_kv_heads(w, s), s->head_dim, layout_p(g, s->out[0]), layout_p(g, s->out[1]));
        break;
    case OP_ATTENTION:
        for (int i = 0; i < 3; i++) need_overwrite(w, si, i);
        attention_scratch(e, w, 2);
        be->attention_bwd(DIN(0), DIN(1), DIN(2), DOUT(0), IN(0), IN(1), IN(2), OUT(0), (const float *)OUT(1), n,
                          step_heads(w, s), step_kv_heads(w, s), s->head_dim, (float)(1.0 / sqrt((double)s->head_dim)),
                          e->docs_on ? &e->docs : NULL);
        attention_scratch(e, w, -1);
        break;
    case OP_ADD: {
        /* an addend whose gradient is the output's (grad_is_output) has it already */
        size_t count = (size_t)n * (size_t)t0->width;
        for (int i = 0; i < 2; i++) {
            if (w->gp->t[s->in[i]].grad_is_output) {
                need_overwrite(w, si, i);
                continue;
            }
            be->accumulate(DIN(i), DOUT(0), count, ACC(i));
        }
        break;
    }
    case OP_ADD_RMSNORM:
        /* h's own gradient (from the mlp residual) plus the norm's, to both addends */
        /* an addend whose gradient is the input's (grad_is_input) gets it there */
        if (w->gp->t[s->in[1]].grad_is_input) need_overwrite(w, si, 0);
        be->add_rmsnorm_bwd(DIN(0), ACC(0), w->gp->t[s->in[1]].grad_is_input ? NULL : DIN(1), ACC(1),
                            step_param_grad(e, w, s), out_grad_or_null(e, w, s->out[0]),
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
        int64_t hpr = a2a_heads_per_rank(step_heads(w, s), p->sp);
        size_t count = (size_t)(p->seq_local * hpr * s->head_dim);
        if (!plan_a2a_staging(w->gp, si).bwd_recv) {
            need_overwrite(w, si, 0);
            e->coll->alltoall(e->ranks->sp, DOUT(0), DIN(0), count, be->act_dtype);
            break;
        }
        uint8_t *recv = staging(e, e->a2a_recv, "a2a_recv", g, si);
        e->coll->alltoall(e->ranks->sp, DOUT(0), recv, count, be->act_dtype);
        if (layout_p(g, s->in[0]) > 1) be->accumulate(DIN(0), recv, count * (size_t)p->sp, ACC(0));
        else be->heads_unpack(DIN(0), recv, p->seq_local, step_heads(w, s), s->head_dim, p->sp, ACC(0));
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
    walk_t w = {gp, layer, layer >= 0, gp == &e->plan->prologue, gp == &e->plan->epilogue, 0, 0, -1, 0, 0};
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

/* The walk at piece j of the graph's pieced region. */
static walk_t piece_walk(const walk_t *w, int j, int loop) {
    walk_t t = *w;
    t.piece = j;
    t.piece_loop = loop;
    return t;
}

/* Steps first..last of the pieced region, piece by piece: forward (ph
 * PHASE_FWD) or their rebuild (PHASE_BWD, recompute steps only). */
static void pieces_forward(exec_t *e, const walk_t *w, int first, int last, phase_t ph, int loop, float grad_scale) {
    const graph_plan_t *gp = w->gp;
    for (int j = 0; j < gp->pieces; j++) {
        walk_t t = piece_walk(w, j, loop);
        for (int ti = first; ti <= last; ti++) {
            if (ph == PHASE_BWD && !(loop ? plan_piece_loop_rebuilds(gp, ti) : gp->recompute_step[ti])) continue;
            double t0 = ex_prof_begin(e);
            run_forward(e, &t, ti, ph, grad_scale);
            ex_prof_end(e, ph == PHASE_FWD ? PROF_FWD : PROF_RECOMPUTE, gp->g.s[ti].op, t0);
        }
        if (loop) {   /* the backward's loop: the piece's rebuild, then its backward */
            for (int ti = gp->piece_end; ti >= gp->piece_begin; ti--) {
                double t0 = ex_prof_begin(e);
                run_backward(e, &t, ti);
                ex_prof_end(e, PROF_BWD, gp->g.s[ti].op, t0);
            }
        }
    }
}

static int step_writes(const graph_step_t *s, int t) {
    for (int i = 0; i < s->nout; i++)
        if (s->out[i] == t) return 1;
    return 0;
}


/* Before a graph writes the next layer's input into that layer's staging
 * slot: the slot's previous layer must have reached the host. */
static void before_next_input(exec_t *e, const walk_t *w) {
    ex_before_layer_input(e, w->is_prologue ? 0 : w->layer + 1);
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
                    double t0 = ex_prof_begin(e);
                    run_forward(e, &t, ti, PHASE_FWD, grad_scale);
                    ex_prof_end(e, PROF_FWD, gp->g.s[ti].op, t0);
                }
            }
            si = gp->tile_end;
            continue;
        }
        if (plan_in_pieces(gp, si)) {
            pieces_forward(e, w, gp->piece_begin, gp->piece_end, PHASE_FWD, 0, grad_scale);
            si = gp->piece_end;
            continue;
        }
        double t0 = ex_prof_begin(e);
        run_forward(e, w, si, PHASE_FWD, grad_scale);
        ex_prof_end(e, PROF_FWD, gp->g.s[si].op, t0);
    }
    if (w->is_layer && gp->offload_bytes) ex_offload_layer(e, w->layer);
}

static void graph_backward(exec_t *e, const walk_t *w) {
    const graph_plan_t *gp = w->gp;
    if (w->is_layer) ex_reload_layer(e, w->layer);
    const int tiled = gp->tile_rows > 0;
    walk_t pre = *w;
    pre.pre = 1;
    for (int si = 0; si < gp->g.ns; si++) {
        if (!gp->recompute_step[si] || (tiled && si >= gp->tile_begin && si <= gp->tile_end)) continue;
        if (plan_in_pieces(gp, si)) {
            /* o_proj's output is needed before the backward: the region's rebuild, piece by piece */
            if (si == gp->piece_begin && plan_piece_prepass(gp))
                pieces_forward(e, &pre, gp->piece_begin, gp->piece_end, PHASE_BWD, 0, 0.0f);
            continue;
        }
        double t0 = ex_prof_begin(e);
        run_forward(e, &pre, si, PHASE_BWD, 0.0f);
        ex_prof_end(e, PROF_RECOMPUTE, gp->g.s[si].op, t0);
    }
    for (int si = gp->g.ns - 1; si >= 0; si--) {
        if (tiled && si == gp->tile_end) {
            /* the tiled region, tile by tile: rebuild the tile, then its backward */
            for (int64_t r0 = 0; r0 < e->plan->seq_local; r0 += gp->tile_rows) {
                walk_t t = tile_walk(e, w, r0);
                for (int ti = gp->tile_begin; ti <= gp->tile_end; ti++) {
                    if (!gp->recompute_step[ti]) continue;
                    double t0 = ex_prof_begin(e);
                    run_forward(e, &t, ti, PHASE_BWD, 0.0f);
                    ex_prof_end(e, PROF_RECOMPUTE, gp->g.s[ti].op, t0);
                }
                for (int ti = gp->tile_end; ti >= gp->tile_begin; ti--) {
                    double t0 = ex_prof_begin(e);
                    run_backward(e, &t, ti);
                    ex_prof_end(e, PROF_BWD, gp->g.s[ti].op, t0);
                }
            }
            si = gp->tile_begin;
            continue;
        }
        if (gp->pieces > 1 && si == gp->piece_end) {
            /* the region's input again (not kept from the rebuild before), then piece by
             * piece: rebuild the piece (o_proj's output is not needed), then its backward */
            const int rin = plan_piece_input_rebuild(gp);
            if (rin >= 0) {
                double t0 = ex_prof_begin(e);
                run_forward(e, w, rin, PHASE_BWD, 0.0f);
                ex_prof_end(e, PROF_RECOMPUTE, gp->g.s[rin].op, t0);
            }
            pieces_forward(e, w, gp->piece_begin, gp->piece_end - 1, PHASE_BWD, 1, 0.0f);
            si = gp->piece_begin;
            continue;
        }
        double t0 = ex_prof_begin(e);
        run_backward(e, w, si);
        ex_prof_end(e, PROF_BWD, gp->g.s[si].op, t0);
    }
    /* the input's gradient becomes the next graph's output gradient */
    if (gp->g.input >= 0) e->cur_grad = 1 - e->cur_grad;
}

int64_t docs_from_starts(const int32_t *doc_start, int64_t n_rows, int32_t *cu, int64_t *max_len) {
    int64_t n = 0, mx = 0;
    cu[0] = 0;
    for (int64_t p = 1; p <= n_rows; p++)
        if (p == n_rows || doc_start[p] != doc_start[p - 1]) {
            cu[++n] = (int32_t)p;
            if (p - cu[n - 1] > mx) mx = p - cu[n - 1];
        }
    if (max_len) *max_len = mx;
    return n;
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
    ex_need_weights(e, 0);
    ex_prefetch_weights(e, 1, 0);
    graph_forward(e, &pro, grad_scale);
    for (int l = 0; l < L; l++) {
        if (exec_progress_hook) exec_progress_hook(0, l, L);
        walk_t w = walk_of(e, plan_layer_plan(p, l), l);
        ex_need_weights(e, l + 1);
        ex_prefetch_weights(e, l + 2, l + 1);
        graph_forward(e, &w, grad_scale);
    }
    /* The epilogue has no output: its backward starts from the loss, whose
     * gradient its forward already produced. */
    e->cur_grad = 1;
    ex_need_weights(e, tail);
    if (tied) ex_need_weights(e, 0);
    ex_prefetch_weights(e, L, tail);
    if (!e->eval) {
        ex_grad_begin(e, tail);
        if (tied) ex_grad_begin(e, 0);
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
    ex_bucket_done(e, tail);  /* a tied LM head's gradient is the embedding's */
    for (int l = L - 1; l >= 0; l--) {
        if (exec_progress_hook) exec_progress_hook(1, l, L);
        walk_t w = walk_of(e, plan_layer_plan(p, l), l);
        ex_need_weights(e, l + 1);
        ex_prefetch_weights(e, l, l + 1);
        ex_grad_begin(e, l + 1);
        graph_backward(e, &w);
        ex_bucket_done(e, plan_layer_bucket(p, l));
    }
    ex_need_weights(e, 0);
    ex_grad_begin(e, 0);
    graph_backward(e, &pro);
    ex_bucket_done(e, 0);
    ex_grad_drain_all(e);
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
    ex_coll_wait(e);
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
    double t0 = ex_prof_begin(e);
    if (e->coll->join) e->coll->join();
    ex_prof_end(e, PROF_BWD, PROF_REDUCE, t0);
    read_loss(e, valid, res);
}

/* ------------------------------------------------------------------ host optimizer */

/* The part [*a0, *b0) of parameter pa inside a slice [lo, hi) of model
 * elements: AdamW runs per parameter part, so weight decay follows the
 * parameter. 0 when they do not meet. */
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

