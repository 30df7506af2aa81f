/* The executor's walk over the workspace, simulated from the executor
 * contract alone (every buffer write clobbers whatever else occupied those
 * bytes; every read must find its own, intact), over plans of every shape:
 * per-layer SAC, the fused residual + norm, tiles, offload, attention in
 * pieces. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plan_fixtures.h"
#include "testutil.h"

/* ------------------------------------------------------------------ executor walk simulation
 * Written from the executor contract alone: every buffer write clobbers
 * whatever else occupied those bytes; every read must find its own, intact. */

enum { SP_WS = 0, SP_SLOT, SP_HOST };
enum { K_ACT = 0, K_FWD, K_BWD, K_GRAD, K_LOGITS, K_SCRATCH };

typedef struct { int space, t, kind; size_t off, bytes; } vbuf_t;
typedef struct {
    vbuf_t v[1024];
    int n;
    const graph_plan_t *gp;
    const char *what;
    int tile;           /* inside the tiled region: 0 or 1, the half of each whole-sequence tensor it touches; else -1 */
    int piece;          /* inside the pieced region: the piece (its part of each whole pieced tensor); else -1 */
    int loop;           /* the backward's piece loop (else the pieces rebuilt before the backward) */
    int pre;            /* the rebuild before the backward: tensors with a buffer of their own there use it */
} sim_t;

/* The bytes of tensor t at `off` that the current step touches: inside the
 * tiled region, tile k's half of a whole-sequence tensor (a tiled
 * intermediate's buffer is the tile itself). */
static void sim_span(const sim_t *s, int t, int kind, size_t off, size_t bytes, size_t *o, size_t *n) {
    *o = off;
    *n = bytes;
    const tensor_plan_t *tp = &s->gp->t[t];
    if (s->piece >= 0 && kind != K_GRAD && kind != K_SCRATCH && tp->pieced && !tp->piece_buf) {
        /* a pieced tensor kept whole: the piece's part of it (piece-major) */
        size_t part = tp->bytes / (size_t)s->gp->pieces;
        ck_assert_uint_eq(bytes, tp->bytes);
        *o = off + (size_t)s->piece * part;
        *n = part;
        return;
    }
    if (s->tile < 0 || s->gp->t[t].tiled) return;
    size_t h = bytes / 2;
    *o = s->tile == 0 ? off : off + h;
    *n = s->tile == 0 ? h : bytes - h;
}

/* A write clobbers whatever else occupied those bytes; what it leaves of a
 * partly overwritten buffer stays readable. */
static void sim_write(sim_t *s, int space, size_t off0, size_t bytes0, int t, int kind, size_t limit) {
    ck_assert_msg(off0 != PLAN_NO_OFFSET, "%s: %s (kind %d) written without an offset", s->what, s->gp->g.t[t].name, kind);
    ck_assert_msg(off0 % 256 == 0, "%s: %s offset %zu not 256-aligned", s->what, s->gp->g.t[t].name, off0);
    ck_assert_msg(off0 + bytes0 <= limit, "%s: %s [%zu,+%zu) beyond its area %zu", s->what, s->gp->g.t[t].name, off0,
                  bytes0, limit);
    size_t off, bytes;
    sim_span(s, t, kind, off0, bytes0, &off, &bytes);
    vbuf_t keep[1024];
    int k = 0;
    for (int i = 0; i < s->n; i++) {
        vbuf_t b = s->v[i];
        if (b.space != space || b.off >= off + bytes || off >= b.off + b.bytes) {
            keep[k++] = b;
            continue;
        }
        if (b.off < off) keep[k++] = (vbuf_t){b.space, b.t, b.kind, b.off, off - b.off};
        if (b.off + b.bytes > off + bytes)
            keep[k++] = (vbuf_t){b.space, b.t, b.kind, off + bytes, b.off + b.bytes - (off + bytes)};
        ck_assert(k < 1020);
    }
    memcpy(s->v, keep, (size_t)k * sizeof keep[0]);
    s->n = k;
    s->v[s->n++] = (vbuf_t){space, t, kind, off, bytes};
}

/* A read must find every byte it reads written by its own tensor and kind. */
static void sim_read(sim_t *s, int space, size_t off0, size_t bytes0, int t, int kind, const char *when) {
    size_t off, bytes;
    sim_span(s, t, kind, off0, bytes0, &off, &bytes);
    size_t at = off;
    for (int moved = 1; moved && at < off + bytes;) {
        moved = 0;
        for (int i = 0; i < s->n; i++) {
            const vbuf_t *b = &s->v[i];
            if (b->space == space && b->t == t && b->kind == kind && b->off <= at && at < b->off + b->bytes) {
                at = b->off + b->bytes;
                moved = 1;
            }
        }
    }
    if (at < off + bytes)
        ck_abort_msg("%s: %s reads %s (kind %d) but it was never written or was overwritten", s->what, when,
                     s->gp->g.t[t].name, kind);
}

static void sim_clear_workspace(sim_t *s) {
    int k = 0;
    for (int i = 0; i < s->n; i++)
        if (s->v[i].space != SP_WS) s->v[k++] = s->v[i];
    s->n = k;
}

/* The contract's list of what each backward reads. */
static int bwd_reads(const graph_step_t *st, int t) {
    switch (st->op) {
    case OP_RMSNORM: case OP_MATMUL: case OP_SWIGLU: return st->in[0] == t;
    case OP_ADD_RMSNORM: return st->out[0] == t;    /* h, the norm's input */
    case OP_ATTENTION:
        for (int i = 0; i < st->nin; i++) if (st->in[i] == t) return 1;
        for (int i = 0; i < st->nout; i++) if (st->out[i] == t) return 1;
        return 0;
    default: return 0;
    }
}

static int is_saved(const graph_plan_t *gp, int t) { return t == gp->g.input || gp->t[t].keep == KEEP_SAVE; }
static int has_grad(const graph_t *g, int t) { return g->t[t].dtype == TENSOR_ACT; }
static int in_resid(const graph_t *g, int t) { return t == g->input || t == g->output; }
/* a tensor whose gradient is the residual gradient itself (not in the workspace) */
static int grad_in_resid(const graph_plan_t *gp, int t) {
    return in_resid(&gp->g, t) || gp->t[t].grad_is_output || gp->t[t].grad_is_input;
}
static int consumed(const graph_t *g, int t) {
    for (int st = 0; st < g->ns; st++)
        for (int i = 0; i < g->s[st].nin; i++)
            if (g->s[st].in[i] == t) return 1;
    return 0;
}

/* Tensor bytes of t's workspace buffers: one tile for a tiled intermediate. */
static size_t ws_bytes(const plan_t *p, const graph_plan_t *gp, int t) {
    if (gp->t[t].piece_buf) return gp->t[t].bytes / (size_t)gp->pieces;
    return gp->t[t].tiled ? gp->t[t].bytes / (size_t)p->seq_local * (size_t)gp->tile_rows : gp->t[t].bytes;
}
/* A gradient's buffer: one piece for every pieced tensor. */
static size_t gr_bytes(const plan_t *p, const graph_plan_t *gp, int t) {
    return gp->t[t].pieced ? gp->t[t].bytes / (size_t)gp->pieces : ws_bytes(p, gp, t);
}
/* The backward instance of t the walk uses now: the pieces rebuilt before
 * the backward have buffers of their own (pre_off). */
static size_t boff(const sim_t *s, int t) {
    const tensor_plan_t *tp = &s->gp->t[t];
    return s->pre && tp->pre_off != PLAN_NO_OFFSET ? tp->pre_off : tp->bwd_off;
}

static void sim_grad_write(sim_t *s, const plan_t *p, const graph_plan_t *gp, int st, int i, size_t ws) {
    const graph_t *g = &gp->g;
    int t = g->s[st].in[i];
    if (!has_grad(g, t)) return;
    if (grad_in_resid(gp, t)) {
        ck_assert_uint_eq(gp->t[t].grad_off, PLAN_NO_OFFSET);
        return;
    }
    if (!gp->grad_first[st][i]) sim_read(s, SP_WS, gp->t[t].grad_off, gr_bytes(p, gp, t), t, K_GRAD, "gradient accumulation");
    sim_write(s, SP_WS, gp->t[t].grad_off, gr_bytes(p, gp, t), t, K_GRAD, ws);
}

/* Attention's scratch for its forward (run 0) or recompute (run 1): in use
 * while the step reads its inputs and writes its outputs, so all of them
 * must be intact after it is written. */
static void sim_attention_scratch(sim_t *s, const plan_t *p, const graph_plan_t *gp, const graph_step_t *x, int run,
                                  size_t ws) {
    if (!gp->attn_scratch_bytes) return;
    sim_write(s, SP_WS, gp->attn_scratch_off[run], gp->attn_scratch_bytes, x->out[0], K_SCRATCH, ws);
    for (int i = 0; i < x->nin + x->nout; i++) {
        int t = i < x->nin ? x->in[i] : x->out[i - x->nin];
        if (is_saved(gp, t))
            sim_read(s, SP_SLOT, gp->t[t].saved_off, gp->t[t].bytes, t, K_ACT, "attention (scratch in use)");
        else
            sim_read(s, SP_WS, run ? boff(s, t) : gp->t[t].fwd_off, ws_bytes(p, gp, t), t, run ? K_BWD : K_FWD,
                     "attention (scratch in use)");
    }
}

static void sim_forward_step(sim_t *s, const plan_t *p, const graph_plan_t *gp, int st, size_t ws, size_t slot) {
    const graph_t *g = &gp->g;
    const graph_step_t *x = &g->s[st];
    for (int i = 0; i < x->nin; i++) {
        int t = x->in[i];
        if (is_saved(gp, t)) sim_read(s, SP_SLOT, gp->t[t].saved_off, gp->t[t].bytes, t, K_ACT, "forward");
        else sim_read(s, SP_WS, gp->t[t].fwd_off, ws_bytes(p, gp, t), t, K_FWD, "forward");
    }
    for (int i = 0; i < x->nout; i++) {
        int t = x->out[i];
        if (t == g->output) continue;   /* goes to the next layer's input */
        if (is_saved(gp, t)) sim_write(s, SP_SLOT, gp->t[t].saved_off, gp->t[t].bytes, t, K_ACT, slot);
        else sim_write(s, SP_WS, gp->t[t].fwd_off, ws_bytes(p, gp, t), t, K_FWD, ws);
    }
    if (x->op == OP_ATTENTION) sim_attention_scratch(s, p, gp, x, 0, ws);
    if (x->op == OP_LMHEAD_LOSS) {      /* fused backward: writes d(input) now */
        /* the chunk's logits live in the shared workspace next to the
         * step's input and its gradient: all three must stay intact */
        size_t lo = p->mem.logits.offset - p->mem.workspace.offset;
        int t = x->in[0];
        sim_write(s, SP_WS, lo, p->mem.logits.bytes, t, K_LOGITS, p->mem.workspace.bytes);
        ck_assert_int_eq(gp->grad_first[st][0], 1);
        sim_grad_write(s, p, gp, st, 0, ws);
        sim_read(s, SP_WS, lo, p->mem.logits.bytes, t, K_LOGITS, "loss (logits)");
        if (is_saved(gp, t)) sim_read(s, SP_SLOT, gp->t[t].saved_off, gp->t[t].bytes, t, K_ACT, "loss (input)");
        else sim_read(s, SP_WS, gp->t[t].fwd_off, ws_bytes(p, gp, t), t, K_FWD, "loss (input)");
    }
}

static void sim_recompute_step(sim_t *s, const plan_t *p, const graph_plan_t *gp, int st, size_t ws, size_t slot) {
    const graph_t *g = &gp->g;
    const graph_step_t *x = &g->s[st];
    /* ADD_RMSNORM with h kept (saved or offloaded): the norm of h alone, writing hn */
    int h = x->out[0];
    int norm_only = x->op == OP_ADD_RMSNORM && (is_saved(gp, h) || gp->t[h].keep == KEEP_OFFLOAD);
    if (norm_only) {
        if (is_saved(gp, h)) sim_read(s, SP_SLOT, gp->t[h].saved_off, gp->t[h].bytes, h, K_ACT, "recompute (norm of h)");
        else sim_read(s, SP_WS, boff(s, h), ws_bytes(p, gp, h), h, K_BWD, "recompute (norm of h)");
    }
    for (int i = 0; i < x->nin && !norm_only; i++) {
        int t = x->in[i];
        if (is_saved(gp, t)) sim_read(s, SP_SLOT, gp->t[t].saved_off, gp->t[t].bytes, t, K_ACT, "recompute");
        else sim_read(s, SP_WS, boff(s, t), ws_bytes(p, gp, t), t, K_BWD, "recompute");
    }
    for (int i = norm_only; i < x->nout; i++) {
        int t = x->out[i];
        ck_assert_msg(t != g->output, "%s: recompute of the graph output", s->what);
        if (is_saved(gp, t)) sim_write(s, SP_SLOT, gp->t[t].saved_off, gp->t[t].bytes, t, K_ACT, slot);
        else sim_write(s, SP_WS, boff(s, t), ws_bytes(p, gp, t), t, K_BWD, ws);
    }
    /* inside the backward's piece loop the rebuild has a scratch buffer of its own */
    if (x->op == OP_ATTENTION) sim_attention_scratch(s, p, gp, x, s->loop ? 3 : 1, ws);
}

static void sim_backward_step(sim_t *s, const plan_t *p, const graph_plan_t *gp, int st, size_t ws) {
    const graph_t *g = &gp->g;
    const graph_step_t *x = &g->s[st];
    for (int t = 0; t < g->nt; t++) {
        if (!bwd_reads(x, t)) continue;
        if (is_saved(gp, t)) sim_read(s, SP_SLOT, gp->t[t].saved_off, gp->t[t].bytes, t, K_ACT, "backward");
        else sim_read(s, SP_WS, gp->t[t].bwd_off, ws_bytes(p, gp, t), t, K_BWD, "backward");
    }
    if (x->op == OP_LMHEAD_LOSS) return;
    for (int i = 0; i < x->nout; i++) {
        int t = x->out[i];
        if (!has_grad(g, t) || grad_in_resid(gp, t)) continue;
        /* ADD_RMSNORM takes h's gradient only when some step reads h (else it is zero) */
        if (x->op == OP_ADD_RMSNORM && i == 0 && !consumed(g, t)) continue;
        sim_read(s, SP_WS, gp->t[t].grad_off, gr_bytes(p, gp, t), t, K_GRAD, "backward (output gradient)");
    }
    for (int i = 0; i < x->nin; i++) sim_grad_write(s, p, gp, st, i, ws);
    if (x->op == OP_ATTENTION && gp->attn_scratch_bytes) {
        /* in use while the backward reads q, k, v, o, lse and do and writes dq, dk, dv */
        sim_write(s, SP_WS, gp->attn_scratch_off[2], gp->attn_scratch_bytes, x->out[0], K_SCRATCH, ws);
        for (int t = 0; t < g->nt; t++) {
            if (!bwd_reads(x, t)) continue;
            if (is_saved(gp, t)) sim_read(s, SP_SLOT, gp->t[t].saved_off, gp->t[t].bytes, t, K_ACT, "attention backward (scratch in use)");
            else sim_read(s, SP_WS, gp->t[t].bwd_off, ws_bytes(p, gp, t), t, K_BWD, "attention backward (scratch in use)");
        }
        for (int i = 0; i < x->nin; i++)
            if (has_grad(g, x->in[i]) && !in_resid(g, x->in[i]))
                sim_read(s, SP_WS, gp->t[x->in[i]].grad_off, gr_bytes(p, gp, x->in[i]), x->in[i], K_GRAD,
                         "attention gradient (scratch in use)");
        sim_read(s, SP_WS, gp->t[x->out[0]].grad_off, gr_bytes(p, gp, x->out[0]), x->out[0], K_GRAD,
                 "attention output gradient (scratch in use)");
    }
}

static void simulate(const plan_t *p, const graph_plan_t *gp, int is_epilogue, const char *what) {
    const graph_t *g = &gp->g;
    sim_t *s = calloc(1, sizeof *s);
    s->tile = -1;
    s->piece = -1;
    s->gp = gp;
    s->what = what;
    const size_t ws = gp->workspace_bytes, slot = gp->saved_bytes, host = gp->offload_bytes;
    ck_assert(ws <= p->mem.workspace.bytes);
    /* keep decisions agree with what backward reads */
    for (int t = 0; t < g->nt; t++) {
        int read = 0;
        for (int st = 0; st < g->ns; st++) read |= bwd_reads(&g->s[st], t);
        if (t == g->input) ck_assert_int_eq(gp->t[t].keep, KEEP_SAVE);
        else if (read) ck_assert_msg(gp->t[t].keep != KEEP_NOT_NEEDED, "%s: %s is read by a backward", what, g->t[t].name);
        else ck_assert_msg(gp->t[t].keep == KEEP_NOT_NEEDED, "%s: %s kept though no backward reads it", what, g->t[t].name);
        if (!has_grad(g, t) || grad_in_resid(gp, t)) ck_assert_uint_eq(gp->t[t].grad_off, PLAN_NO_OFFSET);
        /* only an addend of the output's residual add, read by nothing else, shares its gradient */
        if (gp->t[t].grad_is_output) {
            int n = 0, add = 0;
            for (int st = 0; st < g->ns; st++)
                for (int i = 0; i < g->s[st].nin; i++)
                    if (g->s[st].in[i] == t) { n++; add = g->s[st].op == OP_ADD && g->s[st].out[0] == g->output; }
            ck_assert_msg(n == 1 && add, "%s: %s shares the output's gradient", what, g->t[t].name);
        }
    }
    /* grad_first marks exactly the first backward writer of each gradient */
    for (int t = 0; t < g->nt; t++) {
        int first = 1;
        for (int st = g->ns - 1; st >= 0; st--)
            for (int i = 0; i < g->s[st].nin; i++)
                if (g->s[st].in[i] == t) {
                    ck_assert_int_eq(gp->grad_first[st][i], has_grad(g, t) ? first : gp->grad_first[st][i]);
                    first = 0;
                }
    }
    if (g->input >= 0) sim_write(s, SP_SLOT, 0, gp->t[g->input].bytes, g->input, K_ACT, slot);
    /* the tiled region runs its steps tile by tile: two tiles replay that
     * interleaving (a tile's writes must not clobber what the next reads) */
    const int tb = gp->tile_rows ? gp->tile_begin : -1, te = gp->tile_rows ? gp->tile_end : -2;
    if (gp->tile_rows) {
        ck_assert(tb >= 0 && te > tb && te < g->ns);
        ck_assert(gp->tile_rows > 0 && gp->tile_rows < p->seq_local);
    }
    /* the pieced region runs its steps once per piece: each piece's writes
     * must leave what the next reads (and the whole tensors' other parts) */
    const int pb = gp->pieces > 1 ? gp->piece_begin : -1, pe = gp->pieces > 1 ? gp->piece_end : -2;
    if (gp->pieces > 1) ck_assert(pb >= 0 && pe > pb && pe < g->ns && (tb < 0 || te < pb || tb > pe));
    /* forward */
    for (int st = 0; st < g->ns; st++) {
        if (st == pb) {
            for (s->piece = 0; s->piece < gp->pieces; s->piece++)
                for (int x = pb; x <= pe; x++) sim_forward_step(s, p, gp, x, ws, slot);
            s->piece = -1;
            st = pe;
            continue;
        }
        if (st == tb) {
            for (s->tile = 0; s->tile < 2; s->tile++)
                for (int x = tb; x <= te; x++) sim_forward_step(s, p, gp, x, ws, slot);
            s->tile = -1;
            st = te;
            continue;
        }
        sim_forward_step(s, p, gp, st, ws, slot);
    }
    for (int t = 0; t < g->nt; t++)
        if (gp->t[t].keep == KEEP_OFFLOAD) {
            sim_read(s, SP_WS, gp->t[t].fwd_off, ws_bytes(p, gp, t), t, K_FWD, "offload copy");
            sim_write(s, SP_HOST, gp->t[t].saved_off, gp->t[t].bytes, t, K_ACT, host);
        }
    /* other layers run in between and reuse the whole workspace */
    if (!is_epilogue) sim_clear_workspace(s);
    /* backward: (a) reload, (b) recompute, (c) backward steps in reverse;
     * the tiled region's recompute runs in its backward's tile loop */
    for (int t = 0; t < g->nt; t++)
        if (gp->t[t].keep == KEEP_OFFLOAD) {
            sim_read(s, SP_HOST, gp->t[t].saved_off, gp->t[t].bytes, t, K_ACT, "reload");
            sim_write(s, SP_WS, gp->t[t].bwd_off, gp->t[t].bytes, t, K_BWD, ws);
        }
    s->pre = 1;
    for (int st = 0; st < g->ns; st++) {
        if (st == pb && gp->recompute_step[pe]) {   /* o_proj's output needed: the region rebuilt first */
            for (s->piece = 0; s->piece < gp->pieces; s->piece++)
                for (int x = pb; x <= pe; x++)
                    if (gp->recompute_step[x]) sim_recompute_step(s, p, gp, x, ws, slot);
            s->piece = -1;
        }
        if (gp->recompute_step[st] && !(st >= tb && st <= te) && !(st >= pb && st <= pe))
            sim_recompute_step(s, p, gp, st, ws, slot);
    }
    s->pre = 0;
    for (int st = g->ns - 1; st >= 0; st--) {
        if (st == pe) {
            /* the region's input rebuilt again just before the loop */
            if (plan_piece_input_rebuild(gp) >= 0) sim_recompute_step(s, p, gp, plan_piece_input_rebuild(gp), ws, slot);
            s->loop = 1;
            for (s->piece = 0; s->piece < gp->pieces; s->piece++) {
                for (int x = pb; x < pe; x++)
                    if (plan_piece_loop_rebuilds(gp, x)) sim_recompute_step(s, p, gp, x, ws, slot);
                for (int x = pe; x >= pb; x--) sim_backward_step(s, p, gp, x, ws);
            }
            s->piece = -1;
            s->loop = 0;
            st = pb;
            continue;
        }
        if (st == te) {
            for (s->tile = 0; s->tile < 2; s->tile++) {
                for (int x = tb; x <= te; x++)
                    if (gp->recompute_step[x]) sim_recompute_step(s, p, gp, x, ws, slot);
                for (int x = te; x >= tb; x--) sim_backward_step(s, p, gp, x, ws);
            }
            s->tile = -1;
            st = tb;
            continue;
        }
        sim_backward_step(s, p, gp, st, ws);
    }
    free(s);
}

static void simulate_plan(const plan_t *p, const char *what) {
    char w[160];
    snprintf(w, sizeof w, "%s prologue", what);
    simulate(p, &p->prologue, 0, w);
    snprintf(w, sizeof w, "%s layer", what);
    simulate(p, &p->layer, 0, w);
    if (plan_layers_mixed(p)) {
        snprintf(w, sizeof w, "%s lean layer", what);
        simulate(p, &p->layer_lean, 0, w);
    }
    snprintf(w, sizeof w, "%s epilogue", what);
    simulate(p, &p->epilogue, 1, w);
    ck_assert_uint_eq(p->epilogue.t[p->epilogue.g.input].bytes, p->mem.final_hidden.bytes);
    const size_t L = (size_t)p->model->L, n = (size_t)p->layers_rich;
    ck_assert_uint_eq(p->mem.saved_layers.bytes,
                      plan_layers_mixed(p) ? n * p->layer.saved_bytes + (L - n) * p->layer_lean.saved_bytes
                                           : L * p->layer.saved_bytes);
    /* the slots tile the region: each begins where the one before ends */
    for (int l = 0; l < (int)L; l++)
        ck_assert_uint_eq(plan_layer_saved_off(p, l + 1),
                          plan_layer_saved_off(p, l) + plan_layer_plan(p, l)->saved_bytes);
}

/* 1 when graph plan gp keeps every output of attention (saved or offloaded). */
static int keeps_attention(const graph_plan_t *gp) {
    for (int s = 0; s < gp->g.ns; s++)
        if (gp->g.s[s].op == OP_ATTENTION)
            for (int i = 0; i < gp->g.s[s].nout; i++) {
                keep_t k = gp->t[gp->g.s[s].out[i]].keep;
                if (k != KEEP_SAVE && k != KEEP_OFFLOAD) return 0;
            }
    return 1;
}

/* Between the budget of full recompute and that of keeping attention's
 * outputs in every layer, auto keeps them in as many layers as fit (the
 * first layers_rich) and recomputes attention in the others. */
START_TEST(test_sac_per_layer) {
    struct { int model, world, sp; int64_t S; } cases[] = {{M_8B, 8, 8, 1 << 20}, {M_3B, 1, 1, 131072}, {M_8B, 2, 2, 65536}};
    plan_t *p = new_plan(), *lo = new_plan(), *q = new_plan();
    char err[512], what[160];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        model_t *m = get_model(cases[i].model);
        const int L = (int)m->L;
        config_t c = make_cfg(m, cases[i].S, cases[i].world, cases[i].sp, SAC_FULL);
        /* whole attention: with auto pieces the cheapest plan may keep attention in fewer layers at a
         * larger budget (a pieced plan's lean layers rebuild their region twice; test_pieces_walk) */
        c.checkpointing.attention_pieces = 1;
        ck_assert_msg(compile(lo, &c, m, cases[i].world, scratch_target(0), err) == 0, "%s", err);
        ck_assert(!keeps_attention(&lo->layer));
        /* budgets from full recompute upward until every layer keeps attention's outputs */
        c.checkpointing.policy = SAC_AUTO;
        const double step = (double)lo->layer.t[lo->layer.g.input].bytes / 4;
        int prev_rich = 0, n_mixed = 0, reached_all = 0;
        for (int k = 0; k < 16 * L && !reached_all; k++) {
            double b = (double)lo->mem.device_total + k * step;
            ck_assert_msg(compile(p, &c, m, cases[i].world, scratch_target(b), err) == 0, "%s", err);
            ck_assert((double)p->mem.device_total <= b);
            int rich = keeps_attention(&p->layer) ? p->layers_rich : 0;
            ck_assert_msg(rich >= prev_rich, "case %zu: layers keeping attention fell from %d to %d as the budget grew",
                          i, prev_rich, rich);
            prev_rich = rich;
            reached_all = rich == L;
            if (!plan_layers_mixed(p)) continue;
            n_mixed++;
            snprintf(what, sizeof what, "case %zu per layer %d of %d", i, p->layers_rich, L);
            simulate_plan(p, what);
            /* the rich layers keep attention's outputs, the lean ones rebuild them as policy full does */
            ck_assert(keeps_attention(&p->layer) && !keeps_attention(&p->layer_lean));
            ck_assert_uint_eq(p->layer_lean.saved_bytes, lo->layer.saved_bytes);
            ck_assert(p->layer_lean.saved_bytes < p->layer.saved_bytes);
            for (int l = 0; l < L; l++)
                ck_assert_ptr_eq(plan_layer_plan(p, l), l < p->layers_rich ? &p->layer : &p->layer_lean);
            /* the largest count that fits: one more rich layer would not */
            *q = *p;
            q->layers_rich++;
            ck_assert(!memplan_all(q, &c));
            /* recompute costs add up per layer, between all-rich and all-lean */
            double rr = 0, rl = 0;
            for (int s = 0; s < p->layer.g.ns; s++) {
                if (p->layer.recompute_step[s]) rr += sac_recompute_step_flops(p, &p->layer, s);
                if (p->layer_lean.recompute_step[s]) rl += sac_recompute_step_flops(p, &p->layer_lean, s);
                /* a pieced region rebuilt before the backward is rebuilt again in its piece loop */
                for (int k = 0; k < 2; k++) {
                    const graph_plan_t *gp = k ? &p->layer_lean : &p->layer;
                    if (plan_piece_prepass(gp) && plan_piece_loop_rebuilds(gp, s))
                        *(k ? &rl : &rr) += sac_recompute_step_flops(p, gp, s);
                    if (s == plan_piece_input_rebuild(gp)) *(k ? &rl : &rr) += sac_recompute_step_flops(p, gp, s);
                }
            }
            ck_assert(rr < rl);
            double want = (rr * p->layers_rich + rl * (L - p->layers_rich)) * (double)p->micro_steps * p->world;
            ck_assert(fabs(p->recompute_flops_per_step - want) <= 1e-9 * want);
        }
        ck_assert_msg(n_mixed > 0, "case %zu: no budget gave a per-layer plan", i);
        ck_assert_msg(reached_all, "case %zu: no budget let every layer keep attention's outputs", i);
    }
    free(p);
    free(lo);
    free(q);
}
END_TEST

/* Attention in pieces: every piece count, SP degree and policy (auto at
 * budgets between full recompute and save_all, with and without offload)
 * replays the executor's walk piece by piece; the full-recompute workspace
 * shrinks as the pieces grow; under a budget only pieces meet, auto
 * chooses them. */
START_TEST(test_pieces_walk) {
    struct { int model, world, sp; int64_t S; } cases[] = {
        {M_TINY, 1, 1, 100}, {M_8B, 1, 1, 32768}, {M_8B, 2, 2, 65536}, {M_8B, 4, 4, 131072},
    };
    plan_t *p = new_plan(), *lo = new_plan(), *hi = new_plan();
    char err[512], what[160];
    int n_pieced = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        model_t *m = get_model(cases[i].model);
        const int kvl = (int)(m->hkv / cases[i].sp);
        size_t prev_ws = 0, whole_ws = 0;
        for (int G = 1; G <= kvl; G *= 2) {
            config_t c = make_cfg(m, cases[i].S, cases[i].world, cases[i].sp, SAC_SAVE_ALL);
            c.checkpointing.attention_pieces = G;
            ck_assert_msg(compile(hi, &c, m, cases[i].world, scratch_target(0), err) == 0, "%s", err);
            ck_assert_int_eq(hi->layer.pieces, G);
            snprintf(what, sizeof what, "case %zu save_all %d pieces", i, G);
            simulate_plan(hi, what);
            c.checkpointing.policy = SAC_FULL;
            ck_assert_msg(compile(lo, &c, m, cases[i].world, scratch_target(0), err) == 0, "%s", err);
            snprintf(what, sizeof what, "case %zu full %d pieces", i, G);
            simulate_plan(lo, what);
            if (G > 1) {   /* the same keeps, lean: attention rebuilt again in the piece loop */
                *p = *lo;
                p->attn_pieces_lean = 1;
                memplan_all(p, &c);
                ck_assert(plan_piece_prepass(&p->layer) && p->layer.t[find_tensor(&p->layer.g, "lse")].piece_buf);
                ck_assert(p->layer.workspace_bytes <= lo->layer.workspace_bytes);
                snprintf(what, sizeof what, "case %zu full %d lean pieces", i, G);
                simulate_plan(p, what);
            }
            /* more pieces never take more workspace, and some always take less than none (until the
             * peak moves out of the attention block) */
            if (G > 1) ck_assert_msg(lo->layer.workspace_bytes <= prev_ws && lo->layer.workspace_bytes < whole_ws,
                                     "case %zu: %d pieces take %zu workspace bytes, %d took %zu, whole %zu", i, G,
                                     lo->layer.workspace_bytes, G / 2, prev_ws, whole_ws);
            else whole_ws = lo->layer.workspace_bytes;
            prev_ws = lo->layer.workspace_bytes;
            for (int off = 0; off < 2; off++)
                for (int k = 1; k <= 5; k++) {
                    double b = (double)lo->mem.device_total +
                               k / 6.0 * ((double)hi->mem.device_total - (double)lo->mem.device_total);
                    c.checkpointing.policy = SAC_AUTO;
                    c.checkpointing.offload = off;
                    if (compile(p, &c, m, cases[i].world, scratch_target(b), err) != 0) continue;
                    snprintf(what, sizeof what, "case %zu auto %d pieces offload %d budget %.0f", i, G, off, b);
                    simulate_plan(p, what);
                    n_pieced += p->layer.pieces > 1;
                }
            /* auto under the budget of this count's full recompute, which whole attention exceeds */
            if (G > 1) {
                c.checkpointing.attention_pieces = -1;
                c.checkpointing.policy = SAC_AUTO;
                c.checkpointing.offload = 0;
                ck_assert_msg(compile(p, &c, m, cases[i].world, scratch_target((double)lo->mem.device_total), err) == 0,
                              "case %zu: auto does not fit the %d-piece full-recompute budget: %s", i, G, err);
                ck_assert_msg(p->attn_pieces > 1 && p->layer.pieces == p->attn_pieces,
                              "case %zu: auto chose %d pieces under the %d-piece budget", i, p->attn_pieces, G);
                snprintf(what, sizeof what, "case %zu auto pieces under the %d-piece budget", i, G);
                simulate_plan(p, what);
            }
        }
    }
    ck_assert_int_gt(n_pieced, 10);
    free(p);
    free(lo);
    free(hi);
}
END_TEST

START_TEST(test_workspace_walk) {
    struct { int model, world, sp; int64_t S; } cases[] = {
        {M_TINY, 1, 1, 100}, {M_TINY, 4, 2, 333}, {M_TINY, 4, 4, 64},
        {M_8B, 8, 1, 32768}, {M_8B, 8, 8, 131072}, {M_8B, 16, 16, 262144}, {M_3B, 24, 24, 96000},
    };
    plan_t *p = new_plan(), *lo = new_plan(), *hi = new_plan();
    char err[512], what[128];
    int n_auto_mixed = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        model_t *m = get_model(cases[i].model);
        config_t c = make_cfg(m, cases[i].S, cases[i].world, cases[i].sp, SAC_SAVE_ALL);
        ck_assert_msg(compile(hi, &c, m, cases[i].world, scratch_target(0), err) == 0, "%s", err);
        snprintf(what, sizeof what, "case %zu save_all", i);
        simulate_plan(hi, what);
        c.checkpointing.policy = SAC_FULL;
        ck_assert_msg(compile(lo, &c, m, cases[i].world, scratch_target(0), err) == 0, "%s", err);
        snprintf(what, sizeof what, "case %zu full", i);
        simulate_plan(lo, what);
        /* auto at budgets between the two extremes, with and without offload */
        for (int off = 0; off < 2; off++)
            for (int k = 1; k <= 7; k++) {
                double b = (double)lo->mem.device_total +
                           k / 8.0 * ((double)hi->mem.device_total - (double)lo->mem.device_total);
                c.checkpointing.policy = SAC_AUTO;
                c.checkpointing.offload = off;
                if (compile(p, &c, m, cases[i].world, scratch_target(b), err) != 0) continue;
                snprintf(what, sizeof what, "case %zu auto offload %d budget %.0f", i, off, b);
                simulate_plan(p, what);
                int rec = 0, sav = 0;
                for (int t = 0; t < p->layer.g.nt; t++) {
                    rec += p->layer.t[t].keep == KEEP_RECOMPUTE || p->layer.t[t].keep == KEEP_OFFLOAD;
                    sav += p->layer.t[t].keep == KEEP_SAVE && t != p->layer.g.input;
                }
                n_auto_mixed += rec > 0 && sav > 0;
            }
        c.checkpointing.offload = 0;
    }
    ck_assert_int_gt(n_auto_mixed, 10);
    /* tiled MLPs: full recompute of the tiny model with tiles that do and do not divide S */
    model_t *m = get_model(M_TINY);
    const int64_t tiles[] = {16, 37, 99};
    for (int sp = 1; sp <= 2; sp++)
        for (size_t i = 0; i < sizeof tiles / sizeof tiles[0]; i++) {
            config_t c = make_cfg(m, 200, 2, sp, SAC_FULL);
            c.checkpointing.mlp_tile_tokens = tiles[i];
            ck_assert_msg(compile(p, &c, m, 2, scratch_target(0), err) == 0, "%s", err);
            ck_assert_int_eq(p->layer.tile_rows, tiles[i]);
            ck_assert_str_eq(p->layer.g.s[p->layer.tile_begin].label, "gate_proj+up_proj");
            ck_assert_str_eq(p->layer.g.s[p->layer.tile_end].label, "down_proj");
            snprintf(what, sizeof what, "tiny full sp %d tiles of %lld", sp, (long long)tiles[i]);
            simulate_plan(p, what);
            /* the tiles' intermediates take a tile of memory: less workspace than untiled */
            c.checkpointing.mlp_tile_tokens = 1000;
            ck_assert_msg(compile(lo, &c, m, 2, scratch_target(0), err) == 0, "%s", err);
            ck_assert_int_eq(lo->layer.tile_rows, 0);
            ck_assert(p->layer.workspace_bytes < lo->layer.workspace_bytes);
        }
    /* the plan tiles on its own at long S; saved intermediates are never tiled */
    m = get_model(M_8B);
    config_t c = make_cfg(m, 131072, 8, 8, SAC_FULL);
    ck_assert_msg(compile(p, &c, m, 8, scratch_target(0), err) == 0, "%s", err);
    ck_assert_int_eq(p->layer.tile_rows, 4096);   /* 16384 tokens per rank; 28672 / 4096 = 7 tiles, floor 4096 */
    c.checkpointing.policy = SAC_SAVE_ALL;
    ck_assert_msg(compile(p, &c, m, 8, scratch_target(0), err) == 0, "%s", err);
    ck_assert_int_eq(p->layer.tile_rows, 0);
    free(p);
    free(lo);
    free(hi);
}
END_TEST


/* The fused residual + norm: with h kept, rebuilding hn is the norm of h
 * alone (no o_proj, no addends); with h dropped too it is the whole step and
 * what it needs. Keeps are set by hand on a save_all plan, then derived and
 * laid out as the SAC pass does, and the executor's walk is replayed. */
static void set_keeps(plan_t *p, const config_t *c, keep_t kh, keep_t khn) {
    graph_plan_t *gp = &p->layer;
    gp->t[find_tensor(&gp->g, "h")].keep = kh;
    gp->t[find_tensor(&gp->g, "hn")].keep = khn;
    sac_derive(p, gp, NULL, 0);
    memplan_all(p, c);
}

START_TEST(test_sac_add_rmsnorm) {
    model_t *m = get_model(M_8B);
    plan_t *p = new_plan();
    char err[512];
    config_t c = make_cfg(m, 131072, 8, 8, SAC_SAVE_ALL);
    ck_assert_msg(compile(p, &c, m, 8, bf16_target(0), err) == 0, "%s", err);
    const graph_t *g = &p->layer.g;
    int fused = -1, oproj = -1, h = find_tensor(g, "h"), hn = find_tensor(g, "hn");
    for (int s = 0; s < g->ns; s++) {
        if (g->s[s].op == OP_ADD_RMSNORM) fused = s;
        if (g->s[s].op == OP_MATMUL && g->s[s].param == LP_O) oproj = s;
    }
    ck_assert_int_ge(fused, 0);
    ck_assert_int_ge(oproj, 0);
    /* save_all keeps both outputs: the backward reads h, gate_up reads hn */
    ck_assert_int_eq(p->layer.t[h].keep, KEEP_SAVE);
    ck_assert_int_eq(p->layer.t[hn].keep, KEEP_SAVE);
    const double norm = 4.0 * 16384 * 4096, whole = 5.0 * 16384 * 4096;
    const double oproj_flops = 2.0 * 16384 * 4096 * 4096;
    keep_t kept[2] = {KEEP_SAVE, KEEP_OFFLOAD};
    for (int k = 0; k < 2; k++) {
        set_keeps(p, &c, kept[k], KEEP_RECOMPUTE);
        for (int s = 0; s < g->ns; s++) ck_assert_int_eq(p->layer.recompute_step[s], s == fused);
        ck_assert(plan_recompute_norm_only(&p->layer, fused));
        ck_assert(p->layer.t[hn].recompute_flops == norm);
        ck_assert(sac_recompute_step_flops(p, &p->layer, fused) == norm);
        double fl;
        size_t cm;
        sac_standalone_cost(p, &p->layer, hn, &fl, &cm);
        ck_assert(fl == norm);
        ck_assert_uint_eq(cm, 0);
        simulate_plan(p, kept[k] == KEEP_SAVE ? "h saved, hn recomputed" : "h offloaded, hn recomputed");
    }
    /* h dropped: the whole step again, and o_proj for attn_out (o is saved) */
    set_keeps(p, &c, KEEP_RECOMPUTE, KEEP_SAVE);
    ck_assert(!plan_recompute_norm_only(&p->layer, fused));
    ck_assert_int_eq(p->layer.recompute_step[fused], 1);
    ck_assert_int_eq(p->layer.recompute_step[oproj], 1);
    ck_assert(p->layer.t[h].recompute_flops == whole + oproj_flops);
    simulate_plan(p, "h recomputed, hn saved");
    set_keeps(p, &c, KEEP_RECOMPUTE, KEEP_RECOMPUTE);
    ck_assert(p->layer.t[h].recompute_flops + p->layer.t[hn].recompute_flops == whole + oproj_flops);
    simulate_plan(p, "h and hn recomputed");
    free(p);
}
END_TEST

int main(void) {
    Suite *s = suite_create("plan_walk");
    TCase *tc = tcase_create("walk");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_sac_add_rmsnorm);
    tcase_add_test(tc, test_sac_per_layer);
    tcase_add_test(tc, test_workspace_walk);
    tcase_add_test(tc, test_pieces_walk);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
