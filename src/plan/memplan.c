/* Memory plan: offsets of every per-layer buffer (saved slot, host slot,
 * workspace by interval packing) and the byte layout of every region. */
#include <stdlib.h>
#include <string.h>

#include "plan/passes.h"
#include "util.h"

#define PLAN_ALIGN 256

const char *keep_name(keep_t k) {
    switch (k) {
    case KEEP_NOT_NEEDED: return "not needed";
    case KEEP_SAVE: return "save";
    case KEEP_RECOMPUTE: return "recompute";
    case KEEP_OFFLOAD: return "offload";
    }
    return "?";
}

const char *arena_name(arena_t a) {
    switch (a) {
    case ARENA_PARAMS: return "params";
    case ARENA_OPTIMIZER: return "optimizer";
    case ARENA_ACTIVATIONS: return "activations";
    case ARENA_WORKSPACE: return "workspace";
    case ARENA_HOST: return "host";
    case ARENA_HOST_STATE: return "host state";
    case ARENA__COUNT: break;
    }
    return "?";
}

typedef struct {
    int t, kind;        /* WS_FWD, WS_BWD, WS_GRAD */
    int start, end;     /* inclusive times on the layer timeline */
    size_t bytes, off;
} wbuf_t;

static int wbuf_cmp(const void *a, const void *b) {
    const wbuf_t *x = a, *y = b;
    if (x->bytes != y->bytes) return x->bytes > y->bytes ? -1 : 1;
    if (x->start != y->start) return x->start < y->start ? -1 : 1;
    if (x->t != y->t) return x->t - y->t;
    return x->kind - y->kind;
}

static int off_cmp(const void *a, const void *b) {
    const wbuf_t *x = *(wbuf_t *const *)a, *y = *(wbuf_t *const *)b;
    return x->off < y->off ? -1 : x->off > y->off;
}

static int imax(int a, int b) { return a > b ? a : b; }

/* Greedy first-fit by decreasing size: a buffer goes at the lowest aligned
 * offset clear of every placed buffer whose lifetime intersects its own. */
static size_t pack(wbuf_t *b, int n) {
    qsort(b, (size_t)n, sizeof *b, wbuf_cmp);
    wbuf_t *live[GRAPH_MAX_TENSORS * 3 + 3];
    size_t top = 0;
    for (int i = 0; i < n; i++) {
        int nl = 0;
        for (int j = 0; j < i; j++)
            if (b[j].start <= b[i].end && b[i].start <= b[j].end) live[nl++] = &b[j];
        qsort(live, (size_t)nl, sizeof live[0], off_cmp);
        size_t off = 0;
        for (int j = 0; j < nl; j++) {
            if (live[j]->off >= off + b[i].bytes) break;
            size_t e = asp_align_up(live[j]->off + live[j]->bytes, PLAN_ALIGN);
            if (e > off) off = e;
        }
        b[i].off = off;
        size_t e = asp_align_up(off + b[i].bytes, PLAN_ALIGN);
        if (e > top) top = e;
    }
    return top;
}

/* 1 when the recompute of step s reads tensor t: its inputs, or only h for a
 * norm-only ADD_RMSNORM (plan_recompute_norm_only). */
static int recompute_reads(const graph_plan_t *gp, int s, int t) {
    const graph_step_t *st = &gp->g.s[s];
    if (plan_recompute_norm_only(gp, s)) return st->out[0] == t;
    for (int i = 0; i < st->nin; i++)
        if (st->in[i] == t) return 1;
    return 0;
}

static int step_reads(const graph_step_t *st, int t) {
    for (int i = 0; i < st->nin; i++)
        if (st->in[i] == t) return 1;
    return 0;
}

int plan_grad_in_place(const graph_plan_t *gp, int t) {
    const graph_t *g = &gp->g;
    const keep_t k = gp->t[t].keep;
    if (t == g->input || t == g->output || g->t[t].dtype != TENSOR_ACT) return 0;
    if (k != KEEP_RECOMPUTE && k != KEEP_OFFLOAD) return 0;
    /* every piece reads the region's input again: its gradient needs its own buffer */
    if (gp->pieces > 1 && gp->piece_begin >= 0 && step_reads(&g->s[gp->piece_begin], t)) return 0;
    int reader = -1;
    for (int s = 0; s < g->ns; s++)
        for (int i = 0; i < g->s[s].nin; i++)
            if (g->s[s].in[i] == t) {
                if (reader >= 0 || i != 0) return 0;
                if (g->s[s].op != OP_SWIGLU && !(g->s[s].op == OP_MATMUL && g->t[t].packed <= 1)) return 0;
                reader = s;
            }
    if (reader < 0) return 0;
    /* no other backward may read t afterwards (attention reads its output o) */
    for (int s = 0; s < g->ns; s++)
        if (s != reader && sac_bwd_reads(&g->s[s], t)) return 0;
    return 1;
}

static int consumers(const graph_t *g, int t) {
    int n = 0;
    for (int s = 0; s < g->ns; s++)
        for (int i = 0; i < g->s[s].nin; i++) n += g->s[s].in[i] == t;
    return n;
}

void plan_tile_region(const plan_t *p, graph_plan_t *gp) {
    const graph_t *g = &gp->g;
    gp->tile_begin = gp->tile_end = -1;
    gp->tile_rows = 0;
    for (int t = 0; t < g->nt; t++) gp->t[t].tiled = 0;
    for (int s = 1; s + 1 < g->ns; s++) {
        const graph_step_t *up = &g->s[s - 1], *sw = &g->s[s], *down = &g->s[s + 1];
        if (sw->op != OP_SWIGLU || up->op != OP_MATMUL || down->op != OP_MATMUL) continue;
        const int x = up->in[0], gu = sw->in[0], act = sw->out[0], y = down->out[0];
        if (up->out[0] != gu || down->in[0] != act) continue;
        if (gp->t[gu].keep != KEEP_RECOMPUTE || gp->t[act].keep != KEEP_RECOMPUTE) continue;
        if (consumers(g, gu) != 1 || consumers(g, act) != 1 || gp->recompute_step[s + 1]) continue;
        /* row-wise on this rank's tokens, plain layouts */
        const int ts[4] = {x, gu, act, y};
        int rowwise = 1;
        for (int i = 0; i < 4; i++) rowwise &= g->t[ts[i]].rows == ROWS_LOCAL && g->t[ts[i]].packed <= 1;
        if (!rowwise || x == g->input || y == g->output) continue;
        const int64_t n = p->seq_local;
        int64_t rows;
        if (p->mlp_tile_tokens > 0) {
            rows = p->mlp_tile_tokens;
        } else {
            int64_t tiles = (g->t[gu].width + g->t[x].width - 1) / g->t[x].width;
            /* with attention in pieces memory is tight: tiles an eighth of that (at S = 1M
             * still 18K-token GEMMs) */
            if (p->attn_pieces > 1) tiles *= 8;
            rows = (n + tiles - 1) / tiles;
            if (rows < 4096) rows = 4096;
        }
        if (rows >= n) return;
        gp->tile_begin = s - 1;
        gp->tile_end = s + 1;
        gp->tile_rows = rows;
        gp->t[gu].tiled = gp->t[act].tiled = 1;
        return;
    }
}

/* 1 when step s reads or writes tensor t */
static int step_touches(const graph_step_t *st, int t) {
    for (int i = 0; i < st->nin; i++)
        if (st->in[i] == t) return 1;
    for (int i = 0; i < st->nout; i++)
        if (st->out[i] == t) return 1;
    return 0;
}

int plan_pieces_valid(const plan_t *p, int G) {
    if (G == 1) return 1;
    return G > 1 && p->kv_replication == 1 && p->kv_heads_local % G == 0;
}

int plan_in_pieces(const graph_plan_t *gp, int si) {
    return gp->pieces > 1 && si >= gp->piece_begin && si <= gp->piece_end;
}

int plan_piece_prepass(const graph_plan_t *gp) {
    return gp->pieces > 1 && gp->recompute_step[gp->piece_end];
}

void plan_piece_region(const plan_t *p, graph_plan_t *gp) {
    const graph_t *g = &gp->g;
    gp->pieces = 1;
    gp->piece_begin = gp->piece_end = -1;
    for (int t = 0; t < g->nt; t++) gp->t[t].pieced = gp->t[t].piece_buf = 0;
    const int G = p->attn_pieces;
    if (G <= 1 || !plan_pieces_valid(p, G)) return;
    int rope = -1, att = -1, oproj = -1;
    for (int s = 0; s < g->ns; s++) {
        if (g->s[s].op == OP_ROPE_SPLIT) rope = s;
        if (g->s[s].op == OP_ATTENTION) att = s;
        if (g->s[s].op == OP_MATMUL && g->s[s].param == LP_O) oproj = s;
    }
    if (rope < 0 || att < 0 || oproj < att) return;
    const int qkv = sac_producer(g, g->s[rope].in[0]);
    if (qkv < 0 || g->s[qkv].op != OP_MATMUL || g->s[qkv].param != LP_QKV) return;
    /* what the region makes is read inside it only: each piece is complete on its own */
    for (int s = qkv; s < oproj; s++)
        for (int o = 0; o < g->s[s].nout; o++)
            for (int r = 0; r < g->ns; r++)
                if ((r < qkv || r > oproj) && step_touches(&g->s[r], g->s[s].out[o])) return;
    gp->pieces = G;
    gp->piece_begin = qkv;
    gp->piece_end = oproj;
    /* rebuilt before the backward (for o_proj's output), attention's outputs stay
     * whole from there to their backward, so the piece loop rebuilds only the
     * cheap steps; or, lean, a piece at a time, and the loop rebuilds attention
     * again (plan_compile tries both) */
    const int prepass = gp->recompute_step[oproj] && !p->attn_pieces_lean;
    for (int s = qkv; s < oproj; s++)
        for (int o = 0; o < g->s[s].nout; o++) {
            tensor_plan_t *tp = &gp->t[g->s[s].out[o]];
            tp->pieced = 1;
            tp->piece_buf = tp->keep != KEEP_SAVE && tp->keep != KEEP_OFFLOAD && !(prepass && g->s[s].op == OP_ATTENTION);
        }
}

/* The layer timeline: forward steps, offload copy, reload, recompute steps
 * in order, backward steps in reverse; with a pieced region, its backward's
 * loop holds a piece's rebuild (steps piece_begin .. piece_end - 1, in
 * order) before the region's backward steps. One piece's buffers live
 * within one pass of that loop (or of the region's forward, or of its
 * rebuild before the backward): every piece takes the same times. */
typedef struct {
    const plan_t *p;
    const graph_plan_t *gp;
    int ns, tb, te, pb, pe, prepass;
    int rin_step;       /* plan_piece_input_rebuild */
} timeline_t;

static int T_FWD(const timeline_t *tl, int s) { (void)tl; return s; }
static int T_OFFLOAD(const timeline_t *tl) { return tl->ns; }
static int T_RELOAD(const timeline_t *tl) { return tl->ns + 1; }
static int T_RECOMP(const timeline_t *tl, int s) { return tl->ns + 2 + s; }
/* the loop's first slot rebuilds the region's input (plan_piece_input_rebuild) */
static int loop_slots(const timeline_t *tl) { return tl->gp->pieces > 1 ? tl->pe - tl->pb + 1 : 0; }
static int T_BWD(const timeline_t *tl, int s) {
    return 2 * tl->ns + 2 + (tl->ns - 1 - s) + (s <= tl->pe ? loop_slots(tl) : 0);
}
static int T_LOOP(const timeline_t *tl, int s) { return 2 * tl->ns + 2 + (tl->ns - 1 - tl->pe) + 1 + (s - tl->pb); }
static int T_LOOP_IN(const timeline_t *tl) { return T_LOOP(tl, tl->pb) - 1; }
static int in_tiles(const timeline_t *tl, int s) { return tl->gp->tile_rows && s >= tl->tb && s <= tl->te; }

/* When the backward rebuilds step s's outputs, and when a recompute of s
 * reads its inputs: a tiled region's or a pieced region's steps are rebuilt
 * inside the backward's tile or piece loop (a pieced region with a prepass
 * also before the backward: from there on). */
static int rebuild_start(const timeline_t *tl, int s) {
    if (s == tl->rin_step) return T_LOOP_IN(tl);
    if (in_tiles(tl, s)) return T_BWD(tl, tl->te);
    if (plan_piece_loop_rebuilds(tl->gp, s)) return T_LOOP(tl, s);
    return T_RECOMP(tl, s);
}
static int rebuild_read(const timeline_t *tl, int s) {
    if (in_tiles(tl, s)) return T_BWD(tl, tl->tb);
    if (plan_piece_loop_rebuilds(tl->gp, s)) return T_LOOP(tl, s);
    return T_RECOMP(tl, s);
}

/* 1 for a buffer that holds one piece and lives within one pass of a piece
 * loop: a piece-sized instance, or a pieced tensor's gradient. */
static int piece_local(const graph_plan_t *gp, const wbuf_t *b) {
    if (b->kind >= WS_SCRATCH_FWD || gp->pieces <= 1) return 0;
    return b->kind == WS_GRAD ? gp->t[b->t].pieced : gp->t[b->t].piece_buf;
}

/* attention's scratch, at each time the step runs (t is the step here); in a
 * pieced region for the piece's heads, its rebuild in the piece loop in a
 * buffer of its own */
static int scratch_bufs(const timeline_t *tl, graph_plan_t *gp, wbuf_t *b) {
    const plan_t *p = tl->p;
    const graph_t *g = &gp->g;
    int nb = 0;
    gp->attn_scratch_bytes = 0;
    for (int k = 0; k < 4; k++) gp->attn_scratch_off[k] = PLAN_NO_OFFSET;
    for (int s = 0; s < tl->ns && p->target.attention_scratch_bytes; s++) {
        const graph_step_t *st = &g->s[s];
        if (st->op != OP_ATTENTION) continue;
        const int G = gp->pieces > 1 ? gp->pieces : 1;
        op_shapes_t sh;
        memset(&sh, 0, sizeof sh);
        sh.rows = p->seq_local;
        sh.attn_rows = g->t[st->in[0]].rows == ROWS_GLOBAL ? p->seq_pad : p->seq_local;
        sh.hq = st->heads / G;
        sh.hkv = st->kv_heads / G;
        sh.hd = st->head_dim;
        sh.documents = p->documents;
        size_t a = p->target.attention_scratch_bytes(&sh);
        if (!a) break;
        gp->attn_scratch_bytes = a;
        b[nb++] = (wbuf_t){s, WS_SCRATCH_FWD, T_FWD(tl, s), T_FWD(tl, s), a, 0};
        if (gp->recompute_step[s] && (G == 1 || tl->prepass))
            b[nb++] = (wbuf_t){s, WS_SCRATCH_RECOMP, T_RECOMP(tl, s), T_RECOMP(tl, s), a, 0};
        if (plan_piece_loop_rebuilds(gp, s))
            b[nb++] = (wbuf_t){s, WS_SCRATCH_LOOP, T_LOOP(tl, s), T_LOOP(tl, s), a, 0};
        b[nb++] = (wbuf_t){s, WS_SCRATCH_BWD, T_BWD(tl, s), T_BWD(tl, s), a, 0};
        break;  /* one attention step per graph */
    }
    return nb;
}

/* The forward, backward and gradient instances of tensor t. */
static int tensor_bufs(const timeline_t *tl, int t, const int *prod, wbuf_t *b) {
    const graph_plan_t *gp = tl->gp;
    const graph_t *g = &gp->g;
    const tensor_plan_t *tp = &gp->t[t];
    const int ns = tl->ns;
    int nb = 0;
    /* a tiled intermediate's buffers hold one tile, a pieced one's one piece */
    size_t bytes = tp->tiled ? tp->bytes / (size_t)tl->p->seq_local * (size_t)gp->tile_rows : tp->bytes;
    if (tp->piece_buf) bytes = tp->bytes / (size_t)gp->pieces;
    const size_t gbytes = tp->pieced ? tp->bytes / (size_t)gp->pieces : bytes;
    /* forward instance: producer to last forward reader (or the offload copy) */
    if (tp->keep != KEEP_SAVE) {
        int st = T_FWD(tl, prod[t]), en = st;
        for (int s = 0; s < ns; s++)
            for (int i = 0; i < g->s[s].nin; i++)
                if (g->s[s].in[i] == t) en = imax(en, T_FWD(tl, s));
        if (tp->keep == KEEP_OFFLOAD) en = imax(en, T_OFFLOAD(tl));
        b[nb++] = (wbuf_t){t, WS_FWD, st, en, bytes, 0};
    }
    /* backward instance: reload or recompute to its last recompute/backward reader;
     * with an in-place gradient, on to the producer's backward */
    const int in_place = plan_grad_in_place(gp, t);
    if (tp->keep == KEEP_RECOMPUTE || tp->keep == KEEP_OFFLOAD ||
        (tp->keep != KEEP_SAVE && gp->recompute_step[prod[t]])) {
        int st = tp->keep == KEEP_OFFLOAD ? T_RELOAD(tl) : rebuild_start(tl, prod[t]);
        int en = st;
        for (int s = 0; s < ns; s++) {
            if (gp->recompute_step[s] && recompute_reads(gp, s, t)) en = imax(en, rebuild_read(tl, s));
            if (sac_bwd_reads(&g->s[s], t)) en = imax(en, T_BWD(tl, s));
        }
        if (in_place) en = imax(en, T_BWD(tl, prod[t]));
        /* a piece rebuilt before the backward has a buffer of its own there: the
         * backward's piece loop rebuilds every piece again in its own */
        if ((tp->piece_buf && tl->prepass && tp->keep != KEEP_OFFLOAD) || (tl->rin_step >= 0 && prod[t] == tl->rin_step)) {
            int pe_ = T_RECOMP(tl, prod[t]);
            for (int s = tl->pb; s <= tl->pe; s++)
                if (gp->recompute_step[s] && recompute_reads(gp, s, t)) pe_ = imax(pe_, T_RECOMP(tl, s));
            b[nb++] = (wbuf_t){t, WS_PRE, T_RECOMP(tl, prod[t]), pe_, bytes, 0};
        }
        b[nb++] = (wbuf_t){t, WS_BWD, st, en, bytes, 0};
    }
    /* gradient: first backward writer (the last consumer) to the producer's backward */
    if (g->t[t].dtype == TENSOR_ACT && !in_place && !tp->grad_is_output && !tp->grad_is_input) {
        int last = -1;
        for (int s = 0; s < ns; s++)
            for (int i = 0; i < g->s[s].nin; i++)
                if (g->s[s].in[i] == t) last = s;
        if (last >= 0) {
            /* LMHEAD_LOSS writes its input's gradient in its forward */
            int st = g->s[last].op == OP_LMHEAD_LOSS ? T_FWD(tl, last) : T_BWD(tl, last);
            b[nb++] = (wbuf_t){t, WS_GRAD, st, T_BWD(tl, prod[t]), gbytes, 0};
        }
    }
    return nb;
}

/* A region's steps interleave tile by tile (piece by piece): every buffer of
 * a tensor they touch that is live at some point of one of the region's
 * windows (its forward, its backward, a prepass) stays live through all of it. */
static void extend_region(const graph_plan_t *gp, wbuf_t *b, int nb, int first, int last, const int (*win)[2],
                          int nwin) {
    const graph_t *g = &gp->g;
    for (int i = 0; i < nb; i++) {
        if (b[i].kind >= WS_SCRATCH_FWD || piece_local(gp, &b[i])) continue;
        int touched = 0;
        for (int s = first; s <= last; s++) touched |= step_touches(&g->s[s], b[i].t);
        if (!touched) continue;
        for (int k = 0; k < nwin; k++)
            if (b[i].start <= win[k][1] && win[k][0] <= b[i].end) {
                if (win[k][0] < b[i].start) b[i].start = win[k][0];
                if (win[k][1] > b[i].end) b[i].end = win[k][1];
            }
    }
}

static void saved_layout(const plan_t *p, graph_plan_t *gp) {
    const graph_t *g = &gp->g;
    size_t so = 0, ho = 0;
    if (g->input >= 0) {
        gp->t[g->input].keep = KEEP_SAVE;
        gp->t[g->input].saved_off = 0;
        if (plan_input_offloaded(p, gp)) ho = asp_align_up(gp->t[g->input].bytes, PLAN_ALIGN);
        else so = asp_align_up(gp->t[g->input].bytes, PLAN_ALIGN);
    }
    for (int t = 0; t < g->nt; t++) {
        tensor_plan_t *tp = &gp->t[t];
        if (t == g->input) continue;
        if (tp->keep == KEEP_SAVE) {
            tp->saved_off = so;
            so += asp_align_up(tp->bytes, PLAN_ALIGN);
        } else if (tp->keep == KEEP_OFFLOAD) {
            tp->saved_off = ho;
            ho += asp_align_up(tp->bytes, PLAN_ALIGN);
        }
    }
    gp->saved_bytes = so;
    gp->offload_bytes = ho;
}

/* The most bytes live at one time, and when (graph_plan_t.ws_peak_*). */
static void live_peak(const timeline_t *tl, graph_plan_t *gp, const wbuf_t *b, int nb) {
    gp->ws_live_peak = 0;
    gp->ws_peak_phase = WS_AT_FWD;
    gp->ws_peak_step = 0;
    for (int t = 0; t <= T_BWD(tl, 0); t++) {
        size_t live = 0;
        for (int i = 0; i < nb; i++)
            if (b[i].start <= t && t <= b[i].end) live += asp_align_up(b[i].bytes, PLAN_ALIGN);
        if (live <= gp->ws_live_peak) continue;
        gp->ws_live_peak = live;
        for (int s = 0; s < tl->ns; s++) {
            if (t == T_FWD(tl, s)) gp->ws_peak_phase = WS_AT_FWD, gp->ws_peak_step = s;
            if (t == T_RECOMP(tl, s)) gp->ws_peak_phase = WS_AT_RECOMP, gp->ws_peak_step = s;
            if (t == T_BWD(tl, s)) gp->ws_peak_phase = WS_AT_BWD, gp->ws_peak_step = s;
            if (plan_in_pieces(gp, s) && s < tl->pe && t == T_LOOP(tl, s))
                gp->ws_peak_phase = WS_AT_LOOP, gp->ws_peak_step = s;
        }
        if (gp->pieces > 1 && t == T_LOOP_IN(tl)) gp->ws_peak_phase = WS_AT_LOOP, gp->ws_peak_step = tl->pb;
        if (t == T_OFFLOAD(tl)) gp->ws_peak_phase = WS_AT_OFFLOAD;
        if (t == T_RELOAD(tl)) gp->ws_peak_phase = WS_AT_RELOAD;
    }
}

/* In a pieced plan (memory is tight) the addends of the residual add that
 * makes the graph output, read by nothing else, take the output's gradient
 * as theirs (the add's backward would copy it), and attn_out the input's
 * (grad_is_input): at long S three [S, d] buffers fewer. */
static void grads_of_output(graph_plan_t *gp) {
    const graph_t *g = &gp->g;
    for (int t = 0; t < g->nt; t++) gp->t[t].grad_is_output = gp->t[t].grad_is_input = 0;
    if (gp->pieces <= 1) return;
    /* the fused residual + norm that the graph input enters: its backward writes the
     * input's gradient first and the same values as the other addend's */
    for (int s = 0; s < g->ns; s++) {
        const graph_step_t *st = &g->s[s];
        if (st->op != OP_ADD_RMSNORM || st->in[0] != g->input || !gp->grad_first[s][0]) continue;
        const int b = st->in[1], pb = sac_producer(g, b);
        if (b == g->input || consumers(g, b) != 1 || pb < 0 || g->t[b].packed) continue;
        int ok = 1;   /* b's gradient is read by its producer's backward: before any other input write */
        for (int r = 0; r < g->ns; r++)
            for (int i = 0; i < g->s[r].nin; i++)
                if (g->s[r].in[i] == g->input && r != s && r >= pb) ok = 0;
        gp->t[b].grad_is_input = ok;
    }
    for (int s = 0; s < g->ns; s++) {
        if (g->s[s].op != OP_ADD || g->s[s].out[0] != g->output) continue;
        for (int i = 0; i < g->s[s].nin; i++) {
            int t = g->s[s].in[i];
            if (t != g->input && consumers(g, t) == 1 && g->t[t].dtype == TENSOR_ACT && !g->t[t].packed)
                gp->t[t].grad_is_output = 1;
        }
    }
}

void memplan_graph(const plan_t *p, graph_plan_t *gp) {
    const graph_t *g = &gp->g;
    const int ns = g->ns;
    plan_tile_region(p, gp);
    plan_piece_region(p, gp);
    grads_of_output(gp);
    const timeline_t tl = {p, gp, ns, gp->tile_begin, gp->tile_end, gp->piece_begin, gp->piece_end,
                           plan_piece_prepass(gp), plan_piece_input_rebuild(gp)};
    int prod[GRAPH_MAX_TENSORS];
    for (int t = 0; t < g->nt; t++) {
        prod[t] = sac_producer(g, t);
        tensor_plan_t *tp = &gp->t[t];
        tp->saved_off = tp->fwd_off = tp->bwd_off = tp->grad_off = tp->pre_off = PLAN_NO_OFFSET;
    }
    saved_layout(p, gp);
    wbuf_t b[GRAPH_MAX_TENSORS * 3 + 3];
    int nb = scratch_bufs(&tl, gp, b);
    for (int t = 0; t < g->nt; t++)
        if (t != g->input && t != g->output && prod[t] >= 0) nb += tensor_bufs(&tl, t, prod, b + nb);
    if (gp->tile_rows) {
        const int win[2][2] = {{T_FWD(&tl, tl.tb), T_FWD(&tl, tl.te)}, {T_BWD(&tl, tl.te), T_BWD(&tl, tl.tb)}};
        extend_region(gp, b, nb, tl.tb, tl.te, win, 2);
    }
    if (gp->pieces > 1) {
        const int win[3][2] = {{T_FWD(&tl, tl.pb), T_FWD(&tl, tl.pe)}, {T_LOOP(&tl, tl.pb), T_BWD(&tl, tl.pb)},
                               {T_RECOMP(&tl, tl.pb), T_RECOMP(&tl, tl.pe)}};
        extend_region(gp, b, nb, tl.pb, tl.pe, win, tl.prepass ? 3 : 2);
    }
    gp->workspace_bytes = pack(b, nb);
    live_peak(&tl, gp, b, nb);
    for (int i = 0; i < nb; i++) {
        if (b[i].kind >= WS_SCRATCH_FWD) {
            gp->attn_scratch_off[b[i].kind - WS_SCRATCH_FWD] = b[i].off;
            continue;
        }
        tensor_plan_t *tp = &gp->t[b[i].t];
        if (b[i].kind == WS_FWD) tp->fwd_off = b[i].off;
        else if (b[i].kind == WS_PRE) tp->pre_off = b[i].off;
        else if (b[i].kind == WS_BWD) tp->bwd_off = b[i].off;
        else tp->grad_off = b[i].off;
        if (b[i].kind == WS_BWD && plan_grad_in_place(gp, b[i].t)) tp->grad_off = b[i].off;
    }
}

static region_t place(size_t *end, int arena, size_t bytes) {
    region_t r;
    r.arena = arena;
    r.offset = asp_align_up(end[arena], PLAN_ALIGN);
    r.bytes = bytes;
    end[arena] = r.offset + bytes;
    return r;
}

/* ZeRO 1-3 shard every gradient bucket's optimizer state over all W ranks
 * (each slice a multiple of 64 elements); ZeRO-0 keeps it whole. */
static void zero_layout(plan_t *p) {
    const model_t *m = p->model;
    size_t shards = p->zero_stage >= 1 ? (size_t)p->world : 1;
    p->shards = (int)shards;
    p->n_params = m->n_params;
    const size_t tail = m->n_params - (m->layer_base + (size_t)m->L * m->layer_stride);
    p->bucket_len[0] = asp_align_up(m->layer_base, 64 * shards);
    p->bucket_len[1] = asp_align_up(m->layer_stride, 64 * shards);
    p->bucket_len[2] = asp_align_up(tail, 64 * shards);
    p->n_params_padded = p->bucket_len[0] + (size_t)m->L * p->bucket_len[1] + p->bucket_len[2];
    p->shard_len = p->n_params_padded / shards;

}

/* The LM head's token chunk: logits no larger than the layer's largest
 * activation (checkpointing.loss_chunk_tokens overrides). */
static int64_t loss_chunk(const plan_t *p, const config_t *cfg) {
    const size_t act = (size_t)p->target.act_bytes, V = (size_t)p->model->V;
    size_t maxt = 0;
    for (int t = 0; t < p->layer.g.nt; t++)
        if (p->layer.g.t[t].dtype == TENSOR_ACT && p->layer.t[t].bytes > maxt) maxt = p->layer.t[t].bytes;
    if (p->layer.pieces > 1) {
        /* memory is tight (auto runs attention in pieces only then): no larger
         * than the largest buffer the layer's workspace holds (a tiled
         * intermediate's tile, a piece), nor one [seq_local, d] activation */
        maxt = p->layer.t[p->layer.g.input].bytes;
        for (int t = 0; t < p->layer.g.nt; t++) {
            const tensor_plan_t *tp = &p->layer.t[t];
            size_t b = tp->piece_buf ? tp->bytes / (size_t)p->layer.pieces
                       : tp->tiled  ? tp->bytes / (size_t)p->seq_local * (size_t)p->layer.tile_rows
                                    : 0;
            if (p->layer.g.t[t].dtype == TENSOR_ACT && b > maxt) maxt = b;
        }
    }
    int64_t lc;
    if (cfg->checkpointing.loss_chunk_tokens > 0) {
        lc = cfg->checkpointing.loss_chunk_tokens < p->seq_local ? cfg->checkpointing.loss_chunk_tokens
                                                                 : p->seq_local;
    } else {
        lc = 1;
        while (lc * 2 <= p->seq_local && (size_t)(lc * 2) * V * act <= maxt) lc *= 2;
        int64_t floor = p->seq_local < 128 ? p->seq_local : 128;
        if (lc < floor) lc = floor;
    }
    return lc;

}

/* Staging bytes for the all-to-alls that cannot send or receive in place. */
static void a2a_staging_bytes(const plan_t *p, size_t *send, size_t *recv) {
    const int mixed = plan_layers_mixed(p);
    const graph_plan_t *lps[2] = {&p->layer, &p->layer_lean};
    size_t a2a_send = 0, a2a_recv = 0;
    for (int k = 0; k < 1 + mixed; k++)
        for (int s = 0; s < lps[k]->g.ns; s++) {
            size_t c = sac_step_comm_bytes(p, &lps[k]->g, s);
            a2a_staging_t st = plan_a2a_staging(lps[k], s);
            if ((st.fwd_send || st.bwd_send) && c > a2a_send) a2a_send = c;
            if ((st.fwd_recv || st.bwd_recv) && c > a2a_recv) a2a_recv = c;
        }
    *send = a2a_send;
    *recv = a2a_recv;
}

/* The largest operand shapes, and the backend's op scratch for them. */
static size_t op_scratch(plan_t *p, int64_t lc) {
    const model_t *m = p->model;
    op_shapes_t *sh = &p->op_shapes;
    memset(sh, 0, sizeof *sh);
    sh->rows = p->seq_local;
    sh->attn_rows = p->sp > 1 ? p->seq_pad : p->seq_local;
    sh->hq = p->q_heads_local;
    sh->hkv = p->kv_heads_local;
    sh->hd = m->hd;
    sh->d = m->d;
    sh->f = m->f;
    sh->vocab = m->V;
    sh->loss_chunk = lc;
    for (int t = 0; t < p->layer.g.nt; t++)
        if (p->layer.g.t[t].width > sh->max_width) sh->max_width = p->layer.g.t[t].width;
    return p->target.scratch_bytes ? p->target.scratch_bytes(sh) : 0;

}

/* Weights, gradients, their bucket buffers and stages, the optimizer state:
 * on the device or, with the optimizer (and weights) on the host, there.
 * ZeRO-3 keeps only this rank's shard of the weights and gathers each bucket
 * into its slot's buffer when it is used; ZeRO 2-3 produce each bucket's
 * gradient in its slot's buffer and keep only the reduced shard. */
static void place_model_state(plan_t *p, size_t *end) {
    memplan_t *mem = &p->mem;
    const size_t shards = (size_t)p->shards;
    const size_t pb = (size_t)p->target.param_bytes, gb = (size_t)p->target.grad_bytes;
    const int state_arena = p->optim_offload ? ARENA_HOST_STATE : ARENA_OPTIMIZER;
    size_t slice = 0;   /* the largest bucket slice a rank holds */
    for (int k = 0; k < PLAN_BUCKET_SLOTS; k++)
        if (plan_slot_len(p, k) / shards > slice) slice = plan_slot_len(p, k) / shards;
    mem->params = place(end, p->params_offload ? ARENA_HOST_STATE : ARENA_PARAMS,
                        (p->zero_stage >= 3 ? p->shard_len : p->n_params_padded) * pb);
    if (p->params_offload)   /* the device copy of one bucket's shard, read by its gather */
        mem->param_dev_stage = place(end, ARENA_PARAMS, slice * pb);
    if (p->zero_stage <= 1) mem->grads = place(end, ARENA_PARAMS, p->n_params_padded * gb);
    for (int k = 0; k < PLAN_BUCKET_SLOTS; k++) {
        size_t n = plan_slot_len(p, k);
        if (p->zero_stage >= 3) mem->param_buf[k] = place(end, ARENA_PARAMS, n * pb);
        if (p->zero_stage >= 2) mem->grad_buf[k] = place(end, ARENA_PARAMS, n * gb);
    }
    if (p->optim_offload) {
        mem->grad_shard = place(end, ARENA_HOST_STATE, p->shard_len * (size_t)p->host_grad_bytes);
        /* gradients go straight into an fp32 shard when nothing is accumulated there */
        int direct = p->host_grad_bytes == 4 && p->micro_steps == 1;
        for (int k = 0; k < PLAN_BUCKET_SLOTS && !direct; k++)
            mem->grad_stage[k] = place(end, ARENA_HOST_STATE, plan_slot_len(p, k) / shards * gb);
        /* updated weights go back through a ring of stages, or straight into the host shard */
        for (int k = 0; k < PLAN_PARAM_STAGES && !p->params_offload; k++)
            mem->param_stage[k] = place(end, ARENA_HOST_STATE, slice * pb);
    } else if (p->zero_stage >= 2) {
        mem->grad_shard = place(end, ARENA_PARAMS, p->shard_len * 4);
    }
    mem->master = place(end, state_arena, p->shard_len * 4);
    mem->adam_m = place(end, state_arena, p->shard_len * 4);
    mem->adam_v = place(end, state_arena, p->shard_len * 4);
}

/* Saved activations, the workspace and the buffers that live beside it, the
 * offload staging slots and host slots. */
static void place_activations(plan_t *p, const config_t *cfg, size_t *end, size_t ws, size_t logits_off,
                              size_t scratch) {
    const model_t *m = p->model;
    memplan_t *mem = &p->mem;
    const size_t act = (size_t)p->target.act_bytes;
    const size_t sl = (size_t)p->seq_local, d = (size_t)m->d, V = (size_t)m->V;
    const int mixed = plan_layers_mixed(p);
    const size_t logits_bytes = (size_t)p->loss_chunk * V * act;
    size_t a2a_send, a2a_recv;
    a2a_staging_bytes(p, &a2a_send, &a2a_recv);
    /* No separate reduced-gradient shard for ZeRO 0-1: each bucket is
     * reduce-scattered in place, so rank r's reduced slice lands where its
     * own slice was. */
    mem->saved_layers = place(end, ARENA_ACTIVATIONS, plan_layer_saved_off(p, (int)m->L));
    mem->final_hidden = place(end, ARENA_ACTIVATIONS, sl * d * act);
    mem->workspace = place(end, ARENA_WORKSPACE, ws);
    mem->resid_grad[0] = place(end, ARENA_WORKSPACE, sl * d * act);
    mem->resid_grad[1] = place(end, ARENA_WORKSPACE, sl * d * act);
    mem->logits.arena = ARENA_WORKSPACE;
    mem->logits.offset = mem->workspace.offset + logits_off;
    mem->logits.bytes = logits_bytes;
    mem->a2a_send = place(end, ARENA_WORKSPACE, a2a_send);
    mem->a2a_recv = place(end, ARENA_WORKSPACE, a2a_recv);
    mem->tokens = place(end, ARENA_WORKSPACE, sl * 4);
    mem->targets = place(end, ARENA_WORKSPACE, sl * 4);
    mem->positions = place(end, ARENA_WORKSPACE, sl * 4);
    if (config_documents_eos(cfg)) {   /* every rank holds the whole sample's documents */
        mem->doc_start = place(end, ARENA_WORKSPACE, (size_t)p->seq_pad * 4);
        mem->doc_cu = place(end, ARENA_WORKSPACE, (size_t)(p->seq_pad + 1) * 4);
    }
    mem->rope_freq = place(end, ARENA_WORKSPACE, (size_t)(m->hd / 2) * 8);
    mem->scalars = place(end, ARENA_WORKSPACE, 16 * 4);
    mem->scratch = place(end, ARENA_WORKSPACE, scratch);
    /* offload: the staging slots on the device, the host slots of the layers that leave them */
    mem->offload_stage.arena = ARENA_ACTIVATIONS;   /* where it goes when used */
    size_t slot = p->layer.offload_bytes;
    if (mixed && p->layer_lean.offload_bytes > slot) slot = p->layer_lean.offload_bytes;
    if (slot) {
        mem->offload_slot_bytes = asp_align_up(slot, PLAN_ALIGN);
        int stage_layers = (int)m->L < PLAN_OFFLOAD_SLOTS ? (int)m->L : PLAN_OFFLOAD_SLOTS;
        mem->offload_stage = place(end, ARENA_ACTIVATIONS, (size_t)stage_layers * mem->offload_slot_bytes);
        mem->offload_host_layers = (int)m->L - stage_layers;
    }
    mem->offload = place(end, ARENA_HOST, plan_layer_host_off(p, mem->offload_host_layers));
}

/* Arena sizes, the device and host totals, and the model state's PCIe
 * traffic per optimizer step. */
static void memplan_totals(plan_t *p) {
    memplan_t *mem = &p->mem;
    size_t *end = p->mem.arena_bytes;   /* filled with each arena's end, aligned here */
    const size_t pb = (size_t)p->target.param_bytes, gb = (size_t)p->target.grad_bytes;
    size_t dev = 0;
    for (int a = 0; a < ARENA__COUNT; a++) {
        end[a] = asp_align_up(end[a], PLAN_ALIGN);
        if (a != ARENA_HOST && a != ARENA_HOST_STATE) dev += mem->arena_bytes[a];
    }
    mem->device_total = dev + (size_t)p->target.reserved_bytes;
    mem->host_state = mem->arena_bytes[ARENA_HOST_STATE];
    mem->host_total = mem->arena_bytes[ARENA_HOST] + mem->host_state;
    /* Model state over PCIe per optimizer step: with the optimizer on the
     * host every bucket's gradient slice comes off the device once per
     * micro-step under ZeRO 2-3 (once per step under 0-1) and its updated
     * weights go back once. */
    mem->pcie_bytes = 0;
    if (p->optim_offload) {
        double per = p->zero_stage >= 2 ? (double)p->micro_steps : 1.0;
        /* with the weights on the host they come over before each bucket's
         * forward and backward gather instead of once after the update */
        double wts = p->params_offload ? 2.0 * (double)p->micro_steps : 1.0;
        mem->pcie_bytes = (double)p->shard_len * ((double)gb * per + (double)pb * wts);
    }
    mem->pcie_s = mem->pcie_bytes / (p->host_bandwidth > 0 ? p->host_bandwidth : PLAN_HOST_BANDWIDTH);
}

void memplan_regions(plan_t *p, const config_t *cfg) {
    memplan_t *mem = &p->mem;
    memset(mem, 0, sizeof *mem);
    zero_layout(p);
    p->loss_chunk = loss_chunk(p, cfg);
    /* The three graphs share one workspace. The loss chunk's logits live
     * only inside the epilogue's LMHEAD_LOSS step, after every layer's
     * forward and before any layer's backward, so they sit in the workspace
     * right after the epilogue's own buffers instead of in a region of their
     * own (at long S that is several GiB). */
    const size_t logits_off = asp_align_up(p->epilogue.workspace_bytes, PLAN_ALIGN);
    const size_t logits_bytes = (size_t)p->loss_chunk * (size_t)p->model->V * (size_t)p->target.act_bytes;
    size_t ws = p->layer.workspace_bytes;
    if (plan_layers_mixed(p) && p->layer_lean.workspace_bytes > ws) ws = p->layer_lean.workspace_bytes;
    if (p->prologue.workspace_bytes > ws) ws = p->prologue.workspace_bytes;
    if (logits_off + logits_bytes > ws) ws = logits_off + logits_bytes;
    size_t scratch = op_scratch(p, p->loss_chunk);
    size_t end[ARENA__COUNT] = {0};
    place_model_state(p, end);
    place_activations(p, cfg, end, ws, logits_off, scratch);
    memcpy(mem->arena_bytes, end, sizeof end);
    memplan_totals(p);
}

int memplan_all(plan_t *p, const config_t *cfg) {
    memplan_graph(p, &p->prologue);
    memplan_graph(p, &p->layer);
    if (plan_layers_mixed(p)) memplan_graph(p, &p->layer_lean);
    memplan_graph(p, &p->epilogue);
    memplan_regions(p, cfg);
    return plan_fits(p);
}

int plan_fits(const plan_t *p) {
    int dev = p->target.memory_bytes <= 0 || (double)p->mem.device_total <= p->target.memory_bytes;
    int host = p->target.host_memory_bytes <= 0 || (double)plan_host_bytes(p) <= p->target.host_memory_bytes;
    return dev && host;
}

int plan_input_offloaded(const plan_t *p, const graph_plan_t *gp) {
    return p->inputs_offloaded && (gp == &p->layer || gp == &p->layer_lean);
}

size_t plan_host_bytes(const plan_t *p) { return p->mem.host_total; }

/* ------------------------------------------------------------------ per-layer plans */

int plan_layers_mixed(const plan_t *p) { return p->layers_rich > 0 && p->layers_rich < (int)p->model->L; }

const graph_plan_t *plan_layer_plan(const plan_t *p, int layer) {
    return plan_layers_mixed(p) && layer >= p->layers_rich ? &p->layer_lean : &p->layer;
}

/* Slots of layers 0 .. layer-1: the rich ones, then the lean ones. */
static size_t slots_before(const plan_t *p, int layer, size_t rich, size_t lean) {
    if (!plan_layers_mixed(p) || layer <= p->layers_rich) return (size_t)layer * rich;
    return (size_t)p->layers_rich * rich + (size_t)(layer - p->layers_rich) * lean;
}

size_t plan_layer_saved_off(const plan_t *p, int layer) {
    return slots_before(p, layer, p->layer.saved_bytes, p->layer_lean.saved_bytes);
}

size_t plan_layer_host_off(const plan_t *p, int layer) {
    return slots_before(p, layer, p->layer.offload_bytes, p->layer_lean.offload_bytes);
}

/* ------------------------------------------------------------------ gradient buckets */

int plan_n_buckets(const plan_t *p) { return (int)p->model->L + 2; }

int plan_bucket_slot(const plan_t *p, int b) {
    const int L = (int)p->model->L;
    if (b == 0) return p->model->cfg.tie_word_embeddings ? 0 : 1;
    if (b == L + 1) return 1;
    return 2 + (b - 1) % 2;
}

size_t plan_slot_len(const plan_t *p, int s) {
    size_t n = 0;
    for (int b = 0; b < plan_n_buckets(p); b++) {
        if (plan_bucket_slot(p, b) != s) continue;
        size_t len = b == 0 ? p->bucket_len[0] : b == plan_n_buckets(p) - 1 ? p->bucket_len[2] : p->bucket_len[1];
        if (len > n) n = len;
    }
    return n;
}

int plan_layer_bucket(const plan_t *p, int layer) {
    (void)p;
    return layer + 1;
}

void plan_bucket(const plan_t *p, int b, plan_bucket_t *out) {
    const model_t *m = p->model;
    const size_t L = (size_t)m->L, layers_end = m->layer_base + L * m->layer_stride;
    if (b < 0 || b > (int)L + 1) asp_die(ASP_EXIT_FAILURE, "internal: gradient bucket %d of %zu", b, L + 2);
    if (b == 0) {
        out->model_begin = 0;
        out->model_len = m->layer_base;
        out->flat_begin = 0;
        out->flat_len = p->bucket_len[0];
    } else if (b <= (int)L) {
        out->model_begin = m->layer_base + (size_t)(b - 1) * m->layer_stride;
        out->model_len = m->layer_stride;
        out->flat_begin = p->bucket_len[0] + (size_t)(b - 1) * p->bucket_len[1];
        out->flat_len = p->bucket_len[1];
    } else {
        out->model_begin = layers_end;
        out->model_len = m->n_params - layers_end;
        out->flat_begin = p->bucket_len[0] + L * p->bucket_len[1];
        out->flat_len = p->bucket_len[2];
    }
    out->slice_len = out->flat_len / (size_t)p->shards;
    out->shard_off = out->flat_begin / (size_t)p->shards;
}

size_t plan_flat_index(const plan_t *p, size_t i) {
    const model_t *m = p->model;
    if (i < m->layer_base) return i;
    size_t r = i - m->layer_base, l = r / m->layer_stride;
    if (l < (size_t)m->L) return p->bucket_len[0] + l * p->bucket_len[1] + (r - l * m->layer_stride);
    return p->bucket_len[0] + (size_t)m->L * p->bucket_len[1] + (r - (size_t)m->L * m->layer_stride);
}
