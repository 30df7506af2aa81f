/* Plan compiler: SP pass (degrees, all-to-alls, KV replication, padding),
 * SAC properties, the memory plan against a hand calculation, and --explain.
 * The simulation of the executor's walk over the workspace is in
 * test_plan_walk.c. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plan_fixtures.h"
#include "testutil.h"

/* ------------------------------------------------------------------ SP pass */

START_TEST(test_sp_collectives) {
    model_t *m = get_model(M_8B);
    plan_t *p = new_plan();
    char err[512];
    int Ps[] = {1, 2, 4, 8};
    for (int i = 0; i < 4; i++) {
        int P = Ps[i];
        config_t c = make_cfg(m, 65536, 8, P, SAC_SAVE_ALL);
        ck_assert_msg(compile(p, &c, m, 8, bf16_target(0), err) == 0, "%s", err);
        const graph_t *g = &p->layer.g;
        int s2h = 0, h2s = 0, att = -1;
        for (int s = 0; s < g->ns; s++) {
            if (g->s[s].op == OP_A2A_SEQ_TO_HEAD) s2h++;
            if (g->s[s].op == OP_A2A_HEAD_TO_SEQ) h2s++;
            if (g->s[s].op == OP_ATTENTION) att = s;
        }
        ck_assert_int_eq(p->sp, P);
        ck_assert_int_eq(p->dp, 8 / P);
        ck_assert_int_eq(p->micro_steps, P);
        ck_assert_int_eq(p->seq_local, 65536 / P);
        ck_assert_int_eq(p->kv_replication, 1);
        ck_assert_int_eq(p->q_heads_local, 32 / P);
        ck_assert_int_eq(p->kv_heads_local, 8 / P);
        ck_assert_int_eq(g->s[att].heads, 32 / P);
        ck_assert_int_eq(g->s[att].kv_heads, 8 / P);
        if (P == 1) {
            ck_assert_int_eq(s2h + h2s, 0);
            ck_assert_int_eq(g->ns, m->layer.ns);
            ck_assert_int_eq(p->mem.a2a_send.bytes, 0);
            ck_assert_int_eq(p->mem.a2a_recv.bytes, 0);
            for (int t = 0; t < g->nt; t++) ck_assert_int_eq(g->t[t].packed, 0);
            continue;
        }
        ck_assert_int_eq(s2h, 3);
        ck_assert_int_eq(h2s, 1);
        ck_assert_int_eq(g->ns, m->layer.ns + 4);
        /* q, k, v cross right after ROPE_SPLIT, o right after attention */
        ck_assert_int_eq(g->s[att - 4].op, OP_ROPE_SPLIT);
        const char *src[3] = {"q", "k", "v"}, *dst[3] = {"q_h", "k_h", "v_h"};
        int64_t heads[3] = {32, 8, 8};
        for (int j = 0; j < 3; j++) {
            const graph_step_t *s = &g->s[att - 3 + j];
            ck_assert_int_eq(s->op, OP_A2A_SEQ_TO_HEAD);
            ck_assert_str_eq(g->t[s->in[0]].name, src[j]);
            ck_assert_str_eq(g->t[s->out[0]].name, dst[j]);
            ck_assert_int_eq(s->heads, heads[j]);
            ck_assert_int_eq(s->head_dim, 128);
            const tensor_desc_t *in = &g->t[s->in[0]], *out = &g->t[s->out[0]];
            ck_assert_int_eq(in->rows, ROWS_LOCAL);
            ck_assert_int_eq(in->heads, heads[j]);
            ck_assert_int_eq(out->rows, ROWS_GLOBAL);
            ck_assert_int_eq(out->heads, heads[j] / P);
            ck_assert_int_eq(out->width, heads[j] / P * 128);
            ck_assert_int_eq(g->s[att].in[j], s->out[0]);
            /* 32 and 8 heads split over P <= 8: ROPE_SPLIT writes the per-peer blocks the all-to-all sends */
            ck_assert_int_eq(in->packed, P);
            ck_assert_int_eq(out->packed, 0);
            a2a_staging_t st = plan_a2a_staging(&p->layer, att - 3 + j);
            ck_assert(!st.fwd_send && !st.fwd_recv && !st.bwd_send && !st.bwd_recv);
        }
        const graph_step_t *a = &g->s[att + 1];
        ck_assert_int_eq(a->op, OP_A2A_HEAD_TO_SEQ);
        ck_assert_str_eq(g->t[a->in[0]].name, "o_h");
        ck_assert_str_eq(g->t[a->out[0]].name, "o");
        ck_assert_int_eq(a->heads, 32);
        ck_assert_int_eq(g->t[a->in[0]].rows, ROWS_GLOBAL);
        ck_assert_int_eq(g->t[a->out[0]].rows, ROWS_LOCAL);
        ck_assert_int_eq(g->t[a->out[0]].heads, 32);
        ck_assert_int_eq(g->s[att + 2].op, OP_MATMUL);
        ck_assert_int_eq(g->s[att + 2].in[0], a->out[0]);
        /* o arrives packed and o_proj reads it so: no staging anywhere */
        ck_assert_int_eq(g->t[a->out[0]].packed, P);
        ck_assert_int_eq(g->t[a->in[0]].packed, 0);
        a2a_staging_t st = plan_a2a_staging(&p->layer, att + 1);
        ck_assert(!st.fwd_send && !st.fwd_recv && !st.bwd_send && !st.bwd_recv);
        int lse = find_tensor(g, "lse");
        ck_assert_int_eq(g->t[lse].rows, ROWS_GLOBAL);
        ck_assert_int_eq(g->t[lse].heads, 32 / P);
        ck_assert_int_eq(g->s[att].out[1], lse);
        /* every all-to-all sends and receives in place: no staging reserved */
        ck_assert_uint_eq(p->mem.a2a_send.bytes, 0);
        ck_assert_uint_eq(p->mem.a2a_recv.bytes, 0);
        for (int t = 0; t < g->nt; t++)
            if (g->t[t].packed) ck_assert(strchr("qkvo", g->t[t].name[0]) && g->t[t].name[1] == 0);
        /* prologue/epilogue untouched */
        ck_assert_int_eq(p->prologue.g.ns, 1);
        ck_assert_int_eq(p->epilogue.g.ns, 2);
    }
    free(p);
}
END_TEST

START_TEST(test_sp_kv_replication) {
    model_t *m = get_model(M_8B);
    plan_t *p = new_plan();
    char err[512];
    int Ps[] = {16, 32};
    for (int i = 0; i < 2; i++) {
        config_t c = make_cfg(m, 131072, 1, Ps[i], SAC_SAVE_ALL);
        ck_assert_msg(compile(p, &c, m, Ps[i], bf16_target(0), err) == 0, "%s", err);
        ck_assert_int_eq(p->kv_heads_local, 1);
        ck_assert_int_eq(p->kv_replication, Ps[i] / 8);
        ck_assert_int_eq(p->q_heads_local, 32 / Ps[i]);
        const graph_t *g = &p->layer.g;
        int kh = find_tensor(g, "k_h");
        ck_assert_int_eq(g->t[kh].heads, 1);
        ck_assert_int_eq(g->t[kh].width, 128);
        for (int s = 0; s < g->ns; s++)
            if (g->s[s].op == OP_A2A_SEQ_TO_HEAD && g->s[s].out[0] == kh) ck_assert_int_eq(g->s[s].heads, 8);
        /* replicated k and v keep the plain layout and go through the staging buffers (packed in the
         * forward, unpacked with the replicas summed in the backward); q and o stay packed */
        ck_assert_int_eq(g->t[find_tensor(g, "q")].packed, Ps[i]);
        ck_assert_int_eq(g->t[find_tensor(g, "o")].packed, Ps[i]);
        ck_assert_int_eq(g->t[find_tensor(g, "k")].packed, 0);
        ck_assert_int_eq(g->t[find_tensor(g, "v")].packed, 0);
        int staged = 0;
        for (int s = 0; s < g->ns; s++) {
            if (g->s[s].op != OP_A2A_SEQ_TO_HEAD && g->s[s].op != OP_A2A_HEAD_TO_SEQ) continue;
            a2a_staging_t st = plan_a2a_staging(&p->layer, s);
            const char *name = g->t[g->s[s].in[0]].name;
            int kv = g->s[s].op == OP_A2A_SEQ_TO_HEAD && (name[0] == 'k' || name[0] == 'v');
            ck_assert_int_eq(st.fwd_send, kv);
            ck_assert_int_eq(st.bwd_recv, kv);
            ck_assert(!st.fwd_recv && !st.bwd_send);
            staged += kv;
        }
        ck_assert_int_eq(staged, 2);
        /* staging holds one k_h: 131072 tokens x 1 head x 128 x 2 bytes */
        ck_assert_uint_eq(p->mem.a2a_send.bytes, (size_t)131072 * 128 * 2);
        ck_assert_uint_eq(p->mem.a2a_recv.bytes, (size_t)131072 * 128 * 2);
    }
    /* 8B refuses P = 64 (32 query heads) and P = 12 */
    config_t c = make_cfg(m, 131072, 1, 64, SAC_SAVE_ALL);
    ck_assert_int_eq(compile(p, &c, m, 64, bf16_target(0), err), -1);
    ck_assert_msg(strstr(err, "valid sequence_parallel_size for world 64: 1, 2, 4, 8, 16, 32") != NULL, "%s", err);
    free(p);
}
END_TEST

/* A packed tensor whose gradient is not the first written there (no Llama
 * graph has one, but the contract allows it) receives into staging and adds. */
START_TEST(test_sp_staging_accumulate) {
    model_t *m = get_model(M_TINY);
    plan_t *p = new_plan();
    char err[512];
    config_t c = make_cfg(m, 64, 2, 2, SAC_SAVE_ALL);
    ck_assert_msg(compile(p, &c, m, 2, bf16_target(0), err) == 0, "%s", err);
    graph_plan_t *gp = &p->layer;
    int q = find_tensor(&gp->g, "q"), s2h = -1;
    for (int s = 0; s < gp->g.ns; s++)
        if (gp->g.s[s].op == OP_A2A_SEQ_TO_HEAD && gp->g.s[s].in[0] == q) s2h = s;
    ck_assert_int_ge(s2h, 0);
    ck_assert_int_eq(gp->g.t[q].packed, 2);
    ck_assert_int_eq(gp->grad_first[s2h][0], 1);
    a2a_staging_t st = plan_a2a_staging(gp, s2h);
    ck_assert(!st.fwd_send && !st.bwd_recv);
    gp->grad_first[s2h][0] = 0;
    st = plan_a2a_staging(gp, s2h);
    ck_assert(!st.fwd_send && st.bwd_recv && !st.fwd_recv && !st.bwd_send);
    /* the memory plan then reserves the receive side only */
    memplan_regions(p, &c);
    ck_assert_uint_eq(p->mem.a2a_send.bytes, 0);
    ck_assert_uint_eq(p->mem.a2a_recv.bytes, gp->t[find_tensor(&gp->g, "q_h")].bytes);
    free(p);
}
END_TEST

START_TEST(test_sp_refusals) {
    model_t *m = get_model(M_3B);
    plan_t *p = new_plan();
    char err[512];
    config_t c = make_cfg(m, 65536, 16, 16, SAC_SAVE_ALL);
    ck_assert_int_eq(compile(p, &c, m, 16, bf16_target(0), err), -1);
    ck_assert_msg(strstr(err, "valid sequence_parallel_size for world 16: 1, 2, 4, 8 ") != NULL, "%s", err);
    ck_assert_ptr_nonnull(strstr(err, "24 query heads"));
    char valid[128];
    sp_valid_degrees(m, 0, valid, sizeof valid);
    ck_assert_str_eq(valid, "1, 2, 4, 8, 24");
    sp_valid_degrees(m, 48, valid, sizeof valid);
    ck_assert_str_eq(valid, "1, 2, 4, 8, 24");
    ck_assert(sp_degree_valid(m, 24));
    ck_assert(!sp_degree_valid(m, 3));   /* 8 KV heads */
    ck_assert(!sp_degree_valid(m, 12));
    /* SP must divide the world */
    c = make_cfg(m, 65536, 16, 8, SAC_SAVE_ALL);
    ck_assert_int_eq(compile(p, &c, m, 12, bf16_target(0), err), -1);
    ck_assert_msg(strstr(err, "for world 12: 1, 2, 4") != NULL, "%s", err);
    /* DP must divide the global batch */
    c = make_cfg(m, 65536, 3, 2, SAC_SAVE_ALL);
    ck_assert_int_eq(compile(p, &c, m, 8, bf16_target(0), err), -1);
    ck_assert_msg(strstr(err, "global_batch_size") != NULL && strstr(err, "multiple of 4") != NULL, "%s", err);
    free(p);
}
END_TEST

START_TEST(test_sp_padding) {
    model_t *m = get_model(M_8B);
    plan_t *p = new_plan();
    char err[512];
    config_t c = make_cfg(m, 1000, 1, 8, SAC_SAVE_ALL);
    ck_assert_msg(compile(p, &c, m, 8, bf16_target(0), err) == 0, "%s", err);
    ck_assert_int_eq(p->seq_pad, 1000);
    ck_assert_int_eq(p->seq_local, 125);
    c = make_cfg(m, 1001, 1, 4, SAC_SAVE_ALL);
    ck_assert_msg(compile(p, &c, m, 4, bf16_target(0), err) == 0, "%s", err);
    ck_assert_int_eq(p->seq_len, 1001);
    ck_assert_int_eq(p->seq_pad, 1004);
    ck_assert_int_eq(p->seq_local, 251);
    ck_assert_int_eq(p->layer.g.t[find_tensor(&p->layer.g, "q_h")].rows, ROWS_GLOBAL);
    ck_assert_uint_eq(p->layer.t[find_tensor(&p->layer.g, "q_h")].bytes, (size_t)1004 * 8 * 128 * 2);
    ck_assert_uint_eq(p->mem.tokens.bytes, 251 * 4);
    free(p);
}
END_TEST

START_TEST(test_sp_auto) {
    model_t *m = get_model(M_8B);
    plan_t *p = new_plan(), *q = new_plan();
    char err[512];
    /* unlimited: the smallest valid degree */
    config_t c = make_cfg(m, 131072, 8, 0, SAC_AUTO);
    ck_assert_msg(compile(p, &c, m, 8, bf16_target(0), err) == 0, "%s", err);
    ck_assert_int_eq(p->sp, 1);
    /* 80 GiB at S = 256K: small degrees do not fit; auto takes the smallest that does */
    c = make_cfg(m, 262144, 8, 0, SAC_AUTO);
    ck_assert_msg(compile(p, &c, m, 8, bf16_target(80 * GiB), err) == 0, "%s", err);
    ck_assert((double)p->mem.device_total <= 80 * GiB);
    ck_assert_int_gt(p->sp, 1);
    for (int P = 1; P < p->sp; P *= 2) {
        config_t f = c;
        f.parallel.sequence_parallel_size = P;
        ck_assert_int_eq(compile(q, &f, m, 8, bf16_target(80 * GiB), err), PLAN_NO_FIT);
        ck_assert_ptr_nonnull(strstr(err, "does not fit"));
    }
    /* batch 1 on 8 ranks: only SP 8 keeps DP dividing the batch */
    c = make_cfg(m, 4096, 1, 0, SAC_AUTO);
    ck_assert_msg(compile(p, &c, m, 8, bf16_target(0), err) == 0, "%s", err);
    ck_assert_int_eq(p->sp, 8);
    /* nothing fits: the message names the longest S of the best degree */
    c = make_cfg(m, 1 << 24, 8, 0, SAC_AUTO);
    ck_assert_int_eq(compile(p, &c, m, 8, bf16_target(80 * GiB), err), PLAN_NO_FIT);
    ck_assert_msg(strstr(err, "the longest seq_len that fits is") != NULL &&
                      strstr(err, "sequence_parallel_size 8") != NULL, "%s", err);
    free(p);
    free(q);
}
END_TEST

/* A world no SP degree fits with the batch: the refusal names settings that
 * work, and each one it names does compile. */
START_TEST(test_sp_auto_hints) {
    model_t *m = get_model(M_TINY);
    plan_t *p = new_plan();
    char err[512];
    int worlds[] = {3, 5, 6, 12};
    for (int wi = 0; wi < 4; wi++) {
        config_t c = make_cfg(m, 64, 7, 0, SAC_SAVE_ALL);
        ck_assert_int_eq(compile(p, &c, m, worlds[wi], bf16_target(0), err), -1);
        const char *h = strstr(err, "settings that work:");
        ck_assert_msg(h, "no hint in: %s", err);
        int tried = 0;
        for (const char *q = h; (q = strstr(q, "sequence_parallel_size ")) != NULL; q++) {
            int sp = 0;
            long long gbs = 0;
            if (sscanf(q, "sequence_parallel_size %d with train.global_batch_size %lld", &sp, &gbs) != 2) continue;
            config_t ok = make_cfg(m, 64, gbs, sp, SAC_SAVE_ALL);
            ck_assert_msg(compile(p, &ok, m, worlds[wi], bf16_target(0), err) == 0, "world %d SP %d batch %lld: %s",
                          worlds[wi], sp, gbs, err);
            tried++;
        }
        const char *w = strstr(h, "world ");
        if (w) {
            for (const char *q = w + 6; *q && *q != 'w'; q++) {
                if (*q < '0' || *q > '9') continue;
                int other = atoi(q);
                while (q[1] >= '0' && q[1] <= '9') q++;
                config_t same = make_cfg(m, 64, 7, 0, SAC_SAVE_ALL);
                ck_assert_msg(compile(p, &same, m, other, bf16_target(0), err) == 0, "world %d: %s", other, err);
                tried++;
            }
        }
        ck_assert_msg(tried > 0, "the hint names nothing to try: %s", err);
    }
    free(p);
}
END_TEST

/* ------------------------------------------------------------------ SAC */

static size_t saved_of(model_t *m, int64_t S, double budget, sac_policy_t pol, int offload, int *ok, uint64_t *set) {
    plan_t *p = new_plan();
    char err[512];
    config_t c = make_cfg(m, S, 8, 8, pol);
    c.checkpointing.offload = offload;
    *ok = compile(p, &c, m, 8, bf16_target(budget), err) == 0;
    size_t r = p->layer.saved_bytes;   /* on the device */
    if (set) {
        *set = 0;
        for (int t = 0; t < p->layer.g.nt; t++)
            if (p->layer.t[t].keep == KEEP_SAVE) *set |= 1ull << t;
    }
    free(p);
    return r;
}

START_TEST(test_sac_extremes) {
    model_t *m = get_model(M_8B);
    plan_t *p = new_plan();
    char err[512];
    config_t c = make_cfg(m, 131072, 8, 8, SAC_FULL);
    ck_assert(compile(p, &c, m, 8, bf16_target(0), err) == 0);
    const graph_plan_t *gp = &p->layer;
    for (int t = 0; t < gp->g.nt; t++) {
        if (t == gp->g.input) ck_assert_int_eq(gp->t[t].keep, KEEP_SAVE);
        else ck_assert_int_ne(gp->t[t].keep, KEEP_SAVE);
    }
    ck_assert_int_eq(gp->t[find_tensor(&gp->g, "lse")].keep, KEEP_RECOMPUTE);   /* attention too */
    ck_assert_int_eq(gp->t[find_tensor(&gp->g, "qkv")].keep, KEEP_NOT_NEEDED);
    int att = -1;
    for (int s = 0; s < gp->g.ns; s++)
        if (gp->g.s[s].op == OP_ATTENTION) att = s;
    ck_assert_int_eq(gp->recompute_step[att], 1);
    ck_assert_int_eq(gp->recompute_step[gp->g.ns - 1], 0);     /* the output is never rebuilt */
    ck_assert(p->recompute_flops_per_step > 0);
    size_t full = gp->saved_bytes;
    ck_assert_uint_eq(full, gp->t[gp->g.input].bytes);
    c.checkpointing.policy = SAC_SAVE_ALL;
    ck_assert(compile(p, &c, m, 8, bf16_target(0), err) == 0);
    size_t all = p->layer.saved_bytes;
    for (int s = 0; s < p->layer.g.ns; s++) ck_assert_int_eq(p->layer.recompute_step[s], 0);
    ck_assert(p->recompute_flops_per_step == 0);
    ck_assert_int_eq(p->layer.t[find_tensor(&p->layer.g, "q")].keep, KEEP_NOT_NEEDED);  /* read by no backward at P>1 */
    /* auto lies between the two at every budget; it saves everything when there is room */
    int ok;
    ck_assert_uint_eq(saved_of(m, 131072, 0, SAC_AUTO, 0, &ok, NULL), all);
    for (double gib = 20; gib <= 120; gib += 10) {
        for (int off = 0; off < 2; off++) {
            size_t a = saved_of(m, 131072, gib * GiB, SAC_AUTO, off, &ok, NULL);
            /* with offload the checkpoint itself may go to the host */
            ck_assert(a <= all && (off || a >= full));
        }
    }
    /* auto always keeps attention's outputs */
    c.checkpointing.policy = SAC_AUTO;
    ck_assert(compile(p, &c, m, 8, bf16_target(60 * GiB), err) == 0);
    ck_assert_int_eq(p->layer.t[find_tensor(&p->layer.g, "o_h")].keep, KEEP_SAVE);
    ck_assert_int_eq(p->layer.t[find_tensor(&p->layer.g, "lse")].keep, KEEP_SAVE);
    ck_assert(p->layer.saved_bytes < all);
    free(p);
}
END_TEST

START_TEST(test_sac_monotone) {
    model_t *m = get_model(M_8B);
    for (int off = 0; off < 2; off++) {
        /* larger S under a fixed budget: never more saved bytes per token, saved set shrinks */
        double prev = 1e300;
        uint64_t prev_set = ~0ull;
        int dropped = 0;
        for (int64_t S = 16384; S <= (1 << 21); S *= 2) {
            int ok;
            uint64_t set;
            size_t b = saved_of(m, S, 70 * GiB, SAC_AUTO, off, &ok, &set);
            double per_tok = (double)b / (double)(S / 8);
            ck_assert_msg(per_tok <= prev * (1 + 1e-9), "S %lld: %g bytes/token after %g", (long long)S, per_tok, prev);
            ck_assert((set & ~prev_set) == 0);
            if (set != prev_set && prev_set != ~0ull) dropped = 1;
            prev = per_tok;
            prev_set = set;
        }
        ck_assert(dropped);     /* the choice did change with S */
        /* smaller budget at a fixed S: never more saved bytes (which
         * tensors stay may change: what tiling frees is taken back by
         * the dearest rebuild that fits) */
        prev = 1e300;
        for (double gib = 160; gib >= 20; gib -= 5) {
            int ok;
            size_t b = saved_of(m, 262144, gib * GiB, SAC_AUTO, off, &ok, NULL);
            ck_assert((double)b <= prev);
            prev = (double)b;
        }
    }
}
END_TEST

START_TEST(test_sac_fits_when_possible) {
    model_t *m = get_model(M_8B);
    int checked_between = 0;
    for (int64_t S = 65536; S <= (1 << 21); S *= 2) {
        for (double gib = 20; gib <= 140; gib += 15) {
            int ok_all, ok_full, ok_auto, ok_off;
            saved_of(m, S, gib * GiB, SAC_SAVE_ALL, 0, &ok_all, NULL);
            saved_of(m, S, gib * GiB, SAC_FULL, 0, &ok_full, NULL);
            saved_of(m, S, gib * GiB, SAC_AUTO, 0, &ok_auto, NULL);
            saved_of(m, S, gib * GiB, SAC_AUTO, 1, &ok_off, NULL);
            if (ok_all || ok_full) {
                ck_assert_msg(ok_auto, "S %lld budget %g GiB: a policy fits but auto does not", (long long)S, gib);
                ck_assert_msg(ok_off, "S %lld budget %g GiB: offload auto does not fit", (long long)S, gib);
            }
            if (ok_full && !ok_all) checked_between++;
        }
    }
    ck_assert(checked_between > 0);
}
END_TEST

START_TEST(test_sac_offload) {
    model_t *m = get_model(M_8B);
    plan_t *p = new_plan();
    char err[512];
    config_t c = make_cfg(m, 262144, 8, 8, SAC_AUTO);
    c.checkpointing.offload = 1;
    ck_assert_msg(compile(p, &c, m, 8, bf16_target(70 * GiB), err) == 0, "%s", err);
    int n_off = 0;
    for (int t = 0; t < p->layer.g.nt; t++)
        if (p->layer.t[t].keep == KEEP_OFFLOAD) {
            n_off++;
            ck_assert_uint_ne(p->layer.t[t].saved_off, PLAN_NO_OFFSET);
        }
    ck_assert_int_gt(n_off, 0);
    /* the last layers' activations stay in their staging slots */
    ck_assert_uint_eq(p->mem.offload.bytes, (32 - PLAN_OFFLOAD_SLOTS) * p->layer.offload_bytes);
    ck_assert_uint_eq(p->mem.offload_stage.bytes, PLAN_OFFLOAD_SLOTS * p->mem.offload_slot_bytes);
    ck_assert_int_eq(p->mem.offload_stage.arena, ARENA_ACTIVATIONS);
    ck_assert_uint_eq(p->mem.host_total, p->mem.arena_bytes[ARENA_HOST]);
    ck_assert_int_eq(p->mem.offload.arena, ARENA_HOST);
    /* cheap elementwise results are recomputed, not offloaded */
    ck_assert_int_eq(p->layer.t[find_tensor(&p->layer.g, "act")].keep, KEEP_RECOMPUTE);
    free(p);
}
END_TEST

/* Take back: wherever auto recomputes or offloads a tensor of a single
 * layer plan, saving it instead would not fit (nothing that fits is left
 * dropped, e.g. after tiling freed room); with the host tier, the same for
 * sending the layer inputs back to the device. */
START_TEST(test_sac_takes_back) {
    struct { int model, world, sp; int64_t S; double gib; int off; } cases[] = {
        {M_1B, 1, 1, 131072, 139, 0}, {M_1B, 1, 1, 131072, 139, 1}, {M_1B, 1, 1, 262144, 60, 1},
        {M_1B, 1, 1, 786432, 139, 1}, {M_8B, 8, 8, 262144, 70, 1}, {M_8B, 8, 8, 262144, 60, 0},
    };
    plan_t *p = new_plan(), *q = new_plan();
    char err[512];
    int checked = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        model_t *m = get_model(cases[i].model);
        config_t c = make_cfg(m, cases[i].S, cases[i].world, cases[i].sp, SAC_AUTO);
        c.checkpointing.offload = cases[i].off;
        plan_target_t t = scratch_target(cases[i].gib * GiB);
        t.reserved_bytes = 2.65 * GiB;
        t.host_memory_bytes = 100 * GiB;
        ck_assert_msg(compile(p, &c, m, cases[i].world, t, err) == 0, "case %zu: %s", i, err);
        ck_assert((double)plan_host_bytes(p) <= t.host_memory_bytes);
        if (plan_layers_mixed(p)) continue;
        const graph_t *g = &p->layer.g;
        for (int u = 0; u < g->nt; u++) {
            keep_t k = p->layer.t[u].keep;
            if (k != KEEP_RECOMPUTE && k != KEEP_OFFLOAD) continue;
            *q = *p;
            q->layer.t[u].keep = KEEP_SAVE;
            sac_derive(q, &q->layer, NULL, 0);
            /* a recompute that saving would not shorten (k alone, while q and
             * v still need the rope step) may stay */
            int shorter = k == KEEP_OFFLOAD ||
                          sac_graph_recompute_flops(q, &q->layer) < sac_graph_recompute_flops(p, &p->layer);
            ck_assert_msg(!shorter || !memplan_all(q, &c), "case %zu: %s is %s but saving it fits too", i,
                          g->t[u].name, keep_name(k));
            checked++;
        }
        if (p->inputs_offloaded) {
            *q = *p;
            q->inputs_offloaded = 0;
            ck_assert_msg(!memplan_all(q, &c), "case %zu: the layer inputs are on the host but fit on the device", i);
        }
    }
    ck_assert_int_gt(checked, 0);
    free(p);
    free(q);
}
END_TEST

/* The host tier: with offload, Llama-3.2-1B at S = 262,144 under a 60 GiB
 * budget and at 786,432 on a whole 139 GiB card keeps attention's outputs
 * in every layer (without offload it recomputes attention in some); the
 * plan never places more on the host than its budget, and with no host room
 * it falls back to the device-only plan. */
START_TEST(test_sac_host_tier) {
    model_t *m = get_model(M_1B);
    plan_t *p = new_plan();
    char err[512];
    struct { int64_t S; double gib; } cases[] = {{262144, 60}, {786432, 139}};
    for (size_t i = 0; i < 2; i++) {
        config_t c = make_cfg(m, cases[i].S, 1, 1, SAC_AUTO);
        c.checkpointing.attention_pieces = 1;   /* whole attention: pieces would keep it on the device */
        plan_target_t t = scratch_target(cases[i].gib * GiB);
        t.reserved_bytes = 2.65 * GiB;
        c.checkpointing.offload = 0;
        ck_assert_msg(compile(p, &c, m, 1, t, err) == 0, "%s", err);
        ck_assert_msg(plan_recomputes_attention(p), "S %lld without offload", (long long)cases[i].S);
        ck_assert_uint_eq(plan_host_bytes(p), 0);
        c.checkpointing.offload = 1;
        double budgets[] = {0, 102.4 * GiB, 40 * GiB, 8 * GiB, 1 << 20};
        for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++) {
            t.host_memory_bytes = budgets[b];
            ck_assert_msg(compile(p, &c, m, 1, t, err) == 0, "%s", err);
            if (budgets[b] > 0)
                ck_assert_msg((double)plan_host_bytes(p) <= budgets[b], "S %lld: %zu host bytes over %g",
                              (long long)cases[i].S, plan_host_bytes(p), budgets[b]);
            if (b < 2) ck_assert_msg(!plan_recomputes_attention(p), "S %lld host %g", (long long)cases[i].S, budgets[b]);
            ck_assert_uint_eq(plan_host_bytes(p), p->mem.offload.bytes);
            ck_assert_uint_eq(p->mem.offload.bytes,
                              plan_layer_host_off(p, p->mem.offload_host_layers));
        }
        /* a host tier too small for any layer: the device-only plan */
        ck_assert_uint_eq(plan_host_bytes(p), 0);
        ck_assert(plan_recomputes_attention(p));
    }
    free(p);
}
END_TEST

/* ------------------------------------------------------------------ memory plan */

START_TEST(test_memplan_hand) {
    model_t *m = get_model(M_8B);
    plan_t *p = new_plan();
    char err[512];
    config_t c = make_cfg(m, 131072, 8, 8, SAC_SAVE_ALL);
    plan_target_t t = bf16_target(0);
    t.grad_bytes = 4;   /* fp32 gradients */
    ck_assert_msg(plan_compile(p, &c, m, 8, &t, err, sizeof err) == 0, "%s", err);
    /* parameters: the embedding (525,336,576), each layer (218,112,000) and the
     * tail (norm + LM head, 525,340,672) are multiples of 8 * 64: no padding */
    const size_t N = 8030261248u, shard = N / 8;
    ck_assert_uint_eq(p->n_params_padded, N);
    ck_assert_uint_eq(p->shard_len, 1003782656u);
    ck_assert_uint_eq(p->mem.params.bytes, N * 2);
    ck_assert_uint_eq(p->mem.grads.bytes, N * 4);
    ck_assert_uint_eq(p->mem.master.bytes, shard * 4);
    ck_assert_uint_eq(p->bucket_len[0], 525336576u);
    ck_assert_uint_eq(p->bucket_len[1], 218112000u);
    ck_assert_uint_eq(p->bucket_len[2], 525340672u);
    /* one layer's saved slot, S/P = 16384 tokens, bf16:
     *   x, xn, o, h, hn       [16384, 4096]            5 x 134,217,728
     *   q_h, o_h              [131072, 4, 128]         2 x 134,217,728
     *   k_h, v_h              [131072, 1, 128]         2 x  33,554,432
     *   lse                   [4, 131072] fp32             2,097,152
     *   gu                    [16384, 28672]             939,524,096
     *   act                   [16384, 14336]             469,762,048 */
    const size_t tok = 134217728u;
    const size_t slot = 7 * tok + 2 * 33554432u + 2097152u + 939524096u + 469762048u;
    ck_assert_uint_eq(slot, 2418016256u);
    ck_assert_uint_eq(p->layer.saved_bytes, slot);
    ck_assert_uint_eq(p->mem.saved_layers.bytes, 32 * slot);
    /* workspace peak: backward of SWIGLU holds d(act), d(gu) and d(h) */
    const size_t ws = 469762048u + 939524096u + tok;
    ck_assert_uint_eq(p->mem.workspace.bytes, ws);
    /* loss chunk: largest power of two with chunk * V * 2 <= 939,524,096 (gu) -> 2048 */
    ck_assert_int_eq(p->loss_chunk, 2048);
    const size_t logits = 2048u * 128256u * 2u;
    /* the logits share the workspace region, after the epilogue's xf and d(xf) */
    ck_assert_uint_eq(p->mem.logits.bytes, logits);
    ck_assert_uint_eq(p->mem.logits.offset, p->mem.workspace.offset + 2 * tok);
    ck_assert(2 * tok + logits <= ws);
    /* no all-to-all staging: q, k, v and o are stored packed (8 and 32 heads over 8 ranks) */
    ck_assert_uint_eq(p->mem.a2a_send.bytes, 0);
    ck_assert_uint_eq(p->mem.a2a_recv.bytes, 0);
    const size_t params_arena = N * 2 + N * 4;
    const size_t opt_arena = 3 * shard * 4;   /* master, m, v; gradients reduce in place */
    const size_t act_arena = 32 * slot + tok;
    /* workspace arena: workspace (holding the logits), 2 resid grads, 3 x int32[16384],
     * rope fp64[64] (512), scalars 64 B rounded to 256 */
    const size_t ws_arena = ws + 2 * tok + 3 * 65536 + 512 + 256;
    ck_assert_uint_eq(p->mem.arena_bytes[ARENA_PARAMS], params_arena);
    ck_assert_uint_eq(p->mem.arena_bytes[ARENA_OPTIMIZER], opt_arena);
    ck_assert_uint_eq(p->mem.arena_bytes[ARENA_ACTIVATIONS], act_arena);
    ck_assert_uint_eq(p->mem.arena_bytes[ARENA_WORKSPACE], ws_arena);
    ck_assert_uint_eq(p->mem.arena_bytes[ARENA_HOST], 0);
    ck_assert_uint_eq(p->mem.device_total, params_arena + opt_arena + act_arena + ws_arena);
    /* 144,358,736,640 B before the logits moved into the workspace, the
     * reduced-gradient shard (shard * 4) went and q, k, v, o were packed in
     * place (two staging buffers of tok bytes) */
    const size_t total = 144358736640u - logits - shard * 4 - 2 * tok;
    ck_assert_uint_eq(p->mem.device_total, total);
    /* reserved bytes count, regions are 256-aligned and disjoint within an arena */
    t.reserved_bytes = 3 * GiB;
    ck_assert(plan_compile(p, &c, m, 8, &t, err, sizeof err) == 0);
    ck_assert_uint_eq(p->mem.device_total, total + 3221225472u);
    const region_t *r[] = {&p->mem.params, &p->mem.grads, &p->mem.master, &p->mem.adam_m, &p->mem.adam_v,
                           &p->mem.saved_layers, &p->mem.final_hidden, &p->mem.workspace,
                           &p->mem.resid_grad[0], &p->mem.resid_grad[1], &p->mem.a2a_send,
                           &p->mem.a2a_recv, &p->mem.tokens, &p->mem.targets, &p->mem.positions,
                           &p->mem.rope_freq, &p->mem.scalars, &p->mem.offload};
    int n = sizeof r / sizeof r[0];
    for (int i = 0; i < n; i++) {
        ck_assert_uint_eq(r[i]->offset % 256, 0);
        ck_assert(r[i]->offset + r[i]->bytes <= p->mem.arena_bytes[r[i]->arena]);
        for (int j = 0; j < i; j++)
            if (r[i]->arena == r[j]->arena && r[i]->bytes && r[j]->bytes)
                ck_assert(r[i]->offset >= r[j]->offset + r[j]->bytes || r[j]->offset >= r[i]->offset + r[i]->bytes);
    }
    ck_assert(p->mem.logits.offset >= p->mem.workspace.offset &&
              p->mem.logits.offset + p->mem.logits.bytes <= p->mem.workspace.offset + p->mem.workspace.bytes);
    /* ZeRO-0: full optimizer state, no gradient shard */
    c.parallel.zero_stage = 0;
    ck_assert(plan_compile(p, &c, m, 8, &t, err, sizeof err) == 0);
    ck_assert_uint_eq(p->shard_len, N);
    ck_assert_uint_eq(p->mem.master.bytes, N * 4);
    /* 6N + attention */
    double fpt = 6.0 * model_matmul_params(m) + 6.0 * 32 * 131072.0 * 4096;
    ck_assert(fabs(plan_flops_per_token(m, 131072) - fpt) < 1e-6 * fpt);
    ck_assert(fabs(p->flops_per_step - fpt * 131072.0 * 8) < 1e-6 * p->flops_per_step);
    free(p);
}
END_TEST

START_TEST(test_memplan_padding_zero1) {
    model_t *m = get_model(M_TINY);
    plan_t *p = new_plan();
    char err[512];
    config_t c = make_cfg(m, 100, 6, 2, SAC_SAVE_ALL);
    ck_assert_msg(compile(p, &c, m, 6, bf16_target(0), err) == 0, "%s", err);
    ck_assert_uint_eq(p->n_params_padded % (6 * 64), 0);
    /* each of the three bucket kinds pads to 6 * 64 */
    ck_assert(p->n_params_padded >= m->n_params &&
              p->n_params_padded < m->n_params + (size_t)(m->L + 2) * 6 * 64);
    ck_assert_uint_eq(p->shard_len * 6, p->n_params_padded);
    ck_assert_uint_eq(p->shard_len % 64, 0);
    ck_assert_int_eq(p->loss_chunk, 50);    /* seq_local < 128: the whole shard */
    c.checkpointing.loss_chunk_tokens = 16;
    ck_assert(compile(p, &c, m, 6, bf16_target(0), err) == 0);
    ck_assert_int_eq(p->loss_chunk, 16);
    ck_assert_uint_eq(p->mem.logits.bytes, 16 * 256 * 2);
    free(p);
}
END_TEST

/* Every model element has exactly one flat index, inside its bucket, and
 * every bucket splits into equal 64-multiple slices laid end to end in the
 * shard; the padding is the only flat space no element maps to. */
START_TEST(test_buckets) {
    struct { int model, world, zero; int64_t S; } cases[] = {
        {M_TINY, 1, 1, 64}, {M_TINY, 6, 1, 100}, {M_TINY, 4, 0, 64}, {M_3B, 8, 1, 8192}, {M_8B, 16, 1, 32768},
    };
    plan_t *p = new_plan();
    char err[512];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        model_t *m = get_model(cases[c].model);
        config_t cfg = make_cfg(m, cases[c].S, cases[c].world, 1, SAC_SAVE_ALL);
        cfg.parallel.zero_stage = cases[c].zero;
        ck_assert_msg(compile(p, &cfg, m, cases[c].world, bf16_target(0), err) == 0, "%s", err);
        int shards = cases[c].zero ? cases[c].world : 1;
        ck_assert_int_eq(p->shards, shards);
        ck_assert_int_eq(plan_n_buckets(p), (int)m->L + 2);
        size_t model_next = 0, flat_next = 0, shard_next = 0;
        for (int bi = 0; bi < plan_n_buckets(p); bi++) {
            plan_bucket_t b;
            plan_bucket(p, bi, &b);
            ck_assert_uint_eq(b.model_begin, model_next);
            ck_assert_uint_eq(b.flat_begin, flat_next);
            ck_assert_uint_eq(b.shard_off, shard_next);
            ck_assert(b.flat_len >= b.model_len && b.flat_len < b.model_len + 64 * (size_t)shards);
            ck_assert_uint_eq(b.slice_len * (size_t)shards, b.flat_len);
            ck_assert_uint_eq(b.slice_len % 64, 0);
            /* first, last and a middle element map into the bucket, in order */
            size_t probe[3] = {b.model_begin, b.model_begin + b.model_len / 2, b.model_begin + b.model_len - 1};
            for (int k = 0; k < 3; k++)
                ck_assert_uint_eq(plan_flat_index(p, probe[k]), b.flat_begin + (probe[k] - b.model_begin));
            model_next += b.model_len;
            flat_next += b.flat_len;
            shard_next += b.slice_len;
        }
        ck_assert_uint_eq(model_next, m->n_params);
        ck_assert_uint_eq(flat_next, p->n_params_padded);
        ck_assert_uint_eq(shard_next, p->shard_len);
        /* a layer's parameters are its bucket */
        plan_bucket_t b;
        plan_bucket(p, plan_layer_bucket(p, (int)m->L - 1), &b);
        ck_assert_uint_eq(b.model_begin, model_param_offset(m, (int)m->L - 1, LP_INPUT_NORM));
        ck_assert_uint_eq(b.model_len, m->layer_stride);
    }
    free(p);
}
END_TEST

/* ------------------------------------------------------------------ longest S, explain */

START_TEST(test_longest_seq) {
    model_t *m = get_model(M_8B);
    plan_t *p = new_plan();
    char err[512];
    config_t c = make_cfg(m, 8192, 8, 8, SAC_AUTO);
    plan_target_t t = bf16_target(80 * GiB);
    int64_t L = plan_longest_seq(&c, m, 8, &t, 8192);
    ck_assert(L > 0 && L % 8192 == 0);
    c.train.seq_len = L;
    ck_assert_msg(plan_compile(p, &c, m, 8, &t, err, sizeof err) == 0, "%s", err);
    c.train.seq_len = L + 8192;
    ck_assert_int_eq(plan_compile(p, &c, m, 8, &t, err, sizeof err), PLAN_NO_FIT);
    ck_assert_msg(strstr(err, "does not fit") && strstr(err, "the longest seq_len that fits is"), "%s", err);
    /* save_all fits less than auto, full at least as much */
    c.checkpointing.policy = SAC_SAVE_ALL;
    int64_t Ls = plan_longest_seq(&c, m, 8, &t, 8192);
    c.checkpointing.policy = SAC_FULL;
    int64_t Lf = plan_longest_seq(&c, m, 8, &t, 8192);
    ck_assert(Ls < L);
    ck_assert(Lf >= L);
    /* a config budget overrides the device's */
    c.checkpointing.policy = SAC_AUTO;
    c.checkpointing.memory_budget_gib = 40;
    ck_assert(plan_longest_seq(&c, m, 8, &t, 8192) < L);
    free(p);
}
END_TEST

START_TEST(test_explain_70b) {
    model_t *m = get_model(M_70B);
    plan_t *p = new_plan();
    char err[512];
    config_t c = make_cfg(m, 1 << 20, 32, 0, SAC_AUTO);
    /* on the device alone (an unlimited host tier would let a lower SP degree fit) */
    c.checkpointing.offload = 0;
    /* ZeRO-1 keeps full bf16 weights and gradients on every rank: 263 GiB for 70B */
    plan_target_t t = bf16_target(320 * GiB);
    t.reserved_bytes = 4 * GiB;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    ck_assert_msg(plan_compile(p, &c, m, 64, &t, err, sizeof err) == 0, "%s", err);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    plan_explain(p, &c, f);
    fclose(f);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double sec = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    ck_assert_msg(sec < 1.0 * test_time_scale(), "compile + explain took %.3f s", sec);
    ck_assert_ptr_nonnull(strstr(buf, "all-to-all q:"));
    ck_assert_ptr_nonnull(strstr(buf, "all-to-all o:"));
    ck_assert_ptr_nonnull(strstr(buf, "all-to-all dq:"));
    ck_assert_ptr_nonnull(strstr(buf, "all-to-all do:"));
    /* auto picks SP 64 here: 64 query heads split (packed), 8 KV heads are replicated (staged) */
    ck_assert_ptr_nonnull(strstr(buf, "world        64 ranks = SP 64"));
    ck_assert_ptr_nonnull(strstr(buf, "layout       packed for the all-to-alls (per-peer blocks, no staging copy): "
                                      "q, o; staged through heads_pack/heads_unpack (KV replication): k, v\n"));
    ck_assert_ptr_nonnull(strstr(buf, "all-to-all q: [16384, 64, 128] -> [1048576, 1, 128], 256.00 MiB per rank, "
                                      "sent from its packed buffer"));
    ck_assert_ptr_nonnull(strstr(buf, "all-to-all k: [16384, 8, 128] -> [1048576, 1, 128], 256.00 MiB per rank, "
                                      "staged through heads_pack"));
    ck_assert_ptr_nonnull(strstr(buf, "all-to-all dk: [1048576, 1, 128] -> [16384, 8, 128], 256.00 MiB per rank, "
                                      "staged through heads_unpack"));
    ck_assert_ptr_nonnull(strstr(buf, "all-to-all do: [16384, 64, 128] -> [1048576, 1, 128], 256.00 MiB per rank, "
                                      "sent from its packed buffer"));
    ck_assert_uint_eq(p->mem.a2a_send.bytes, (size_t)1048576 * 128 * 2);
    ck_assert_ptr_nonnull(strstr(buf, "per rank"));
    ck_assert_ptr_nonnull(strstr(buf, "SAC"));
    ck_assert_ptr_nonnull(strstr(buf, "predicted device peak"));
    ck_assert_ptr_nonnull(strstr(buf, "LONGEST S"));
    ck_assert_ptr_nonnull(strstr(buf, "70553706496"));
    if (getenv("PLAN_EXPLAIN_PRINT")) fputs(buf, stdout);
    free(buf);
    free(p);
}
END_TEST


/* The target's op scratch: shapes as the executor will run them, bytes in
 * the workspace arena and in the budget check. */
static op_shapes_t seen_shapes;
static size_t fake_scratch(const op_shapes_t *sh) {
    seen_shapes = *sh;
    return (size_t)sh->attn_rows * (size_t)sh->hq * (size_t)sh->hd * 4 * 3; /* a dq accumulator and more */
}

START_TEST(test_memplan_op_scratch) {
    model_t *m = get_model(M_8B);
    plan_t *p = new_plan(), *q = new_plan();
    char err[512];
    config_t c = make_cfg(m, 131072, 1, 8, SAC_AUTO);
    plan_target_t t = bf16_target(0);
    ck_assert_msg(plan_compile(q, &c, m, 8, &t, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(q->mem.scratch.bytes, 0);
    t.scratch_bytes = fake_scratch;
    ck_assert_msg(plan_compile(p, &c, m, 8, &t, err, sizeof err) == 0, "%s", err);
    /* attention sees the whole padded sequence at its local heads */
    ck_assert_int_eq(seen_shapes.attn_rows, 131072);
    ck_assert_int_eq(seen_shapes.rows, 16384);
    ck_assert_int_eq(seen_shapes.hq, 4);
    ck_assert_int_eq(seen_shapes.hkv, 1);
    ck_assert_int_eq(seen_shapes.hd, 128);
    ck_assert_int_eq(seen_shapes.vocab, 128256);
    ck_assert_int_eq(seen_shapes.max_width, 28672);
    size_t want = (size_t)131072 * 4 * 128 * 4 * 3;
    ck_assert_uint_eq(p->mem.scratch.bytes, want);
    ck_assert_int_eq(p->mem.scratch.arena, ARENA_WORKSPACE);
    ck_assert_uint_ge(p->mem.device_total, q->mem.device_total + want);
    ck_assert_uint_le(p->mem.device_total, q->mem.device_total + want + 256);
    /* a budget between the two: fits without scratch, not with it */
    t.memory_bytes = (double)q->mem.device_total + (double)want / 2;
    t.scratch_bytes = NULL;
    c.checkpointing.policy = SAC_SAVE_ALL;
    ck_assert_msg(plan_compile(q, &c, m, 8, &t, err, sizeof err) == 0, "%s", err);
    t.scratch_bytes = fake_scratch;
    ck_assert_int_eq(plan_compile(p, &c, m, 8, &t, err, sizeof err), PLAN_NO_FIT);
    free(p);
    free(q);
}
END_TEST

int main(void) {
    Suite *s = suite_create("plan");
    TCase *sp = tcase_create("sp");
    tcase_add_test(sp, test_sp_collectives);
    tcase_add_test(sp, test_sp_kv_replication);
    tcase_add_test(sp, test_sp_staging_accumulate);
    tcase_add_test(sp, test_sp_refusals);
    tcase_add_test(sp, test_sp_padding);
    tcase_add_test(sp, test_sp_auto);
    tcase_add_test(sp, test_sp_auto_hints);
    suite_add_tcase(s, sp);
    TCase *sac = tcase_create("sac");
    tcase_set_timeout(sac, 60);
    tcase_add_test(sac, test_sac_extremes);
    tcase_add_test(sac, test_sac_monotone);
    tcase_add_test(sac, test_sac_fits_when_possible);
    tcase_add_test(sac, test_sac_offload);
    tcase_add_test(sac, test_sac_takes_back);
    tcase_add_test(sac, test_sac_host_tier);
    suite_add_tcase(s, sac);
    TCase *mem = tcase_create("memplan");
    tcase_set_timeout(mem, 60);
    tcase_add_test(mem, test_memplan_hand);
    tcase_add_test(mem, test_memplan_padding_zero1);
    tcase_add_test(mem, test_buckets);
    tcase_add_test(mem, test_memplan_op_scratch);
    tcase_add_test(mem, test_longest_seq);
    tcase_add_test(mem, test_explain_70b);
    suite_add_tcase(s, mem);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
