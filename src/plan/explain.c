/* --explain: the compiled plan as a report, the same on every rank. */
#include <stdio.h>
#include <string.h>

#include "plan/passes.h"
#include "plan/predict.h"
#include "util.h"

static const char *fmtb(char *buf, size_t len, double bytes) { return asp_fmt_bytes(buf, len, bytes); }

static const char *shape(const plan_t *p, const tensor_desc_t *t, char *buf, size_t len) {
    long long rows = (long long)(t->rows == ROWS_GLOBAL ? p->seq_pad : p->seq_local);
    if (t->stats) snprintf(buf, len, "[%lld, %lld] fp32", (long long)t->heads, rows);
    else if (t->heads > 0 && t->head_dim > 0)
        snprintf(buf, len, "[%lld, %lld, %lld]", rows, (long long)t->heads, (long long)t->head_dim);
    else snprintf(buf, len, "[%lld, %lld]", rows, (long long)t->width);
    return buf;
}

static void io_list(const plan_t *p, const graph_t *g, const int *ids, int n, char *buf, size_t len) {
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < n && o < len; i++) {
        char sh[64];
        int w = snprintf(buf + o, len - o, "%s%s %s", i ? ", " : "", g->t[ids[i]].name, shape(p, &g->t[ids[i]], sh, sizeof sh));
        if (w < 0) break;
        o += (size_t)w;
    }
    if (n == 0) snprintf(buf, len, "-");
}

/* The sequence-sharded side of an all-to-all (q, k, v, o), as the model knows it. */
static const tensor_desc_t *a2a_seq_side(const graph_t *g, const graph_step_t *s) {
    return s->op == OP_A2A_SEQ_TO_HEAD ? &g->t[s->in[0]] : &g->t[s->out[0]];
}

static void a2a_line(const plan_t *p, const graph_plan_t *gp, int si, int backward, FILE *out) {
    char a[64], b[64], sz[32];
    const graph_t *g = &gp->g;
    const graph_step_t *s = &g->s[si];
    const tensor_desc_t *src = &g->t[s->in[0]], *dst = &g->t[s->out[0]];
    const tensor_desc_t *glob = src->rows == ROWS_GLOBAL ? src : dst;
    if (backward) {
        const tensor_desc_t *x = src;
        src = dst;
        dst = x;
    }
    const tensor_desc_t *loc = a2a_seq_side(g, s);
    /* how the sequence-sharded side meets the collective */
    a2a_staging_t st = plan_a2a_staging(gp, si);
    int to_heads = (s->op == OP_A2A_SEQ_TO_HEAD) != backward;   /* sending from the sequence side */
    int staged = to_heads ? (backward ? st.bwd_send : st.fwd_send) : (backward ? st.bwd_recv : st.fwd_recv);
    const char *how = !staged ? (to_heads ? "sent from its packed buffer" : "received into its packed buffer")
                      : to_heads ? "staged through heads_pack"
                      : loc->packed > 1 ? "staged, then added to the packed gradient"
                      : "staged through heads_unpack";
    fprintf(out, "        all-to-all %s%s: %s -> %s, %s per rank, %s\n", backward ? "d" : "", loc->name,
            shape(p, src, a, sizeof a), shape(p, dst, b, sizeof b),
            fmtb(sz, sizeof sz, (double)plan_tensor_bytes(p, glob)), how);
}

static void graph_steps(const plan_t *p, const graph_plan_t *gp, FILE *out) {
    const graph_t *g = &gp->g;
    char in[256], o[256];
    fprintf(out, "  forward:\n");
    for (int s = 0; s < g->ns; s++) {
        const graph_step_t *st = &g->s[s];
        io_list(p, g, st->in, st->nin, in, sizeof in);
        io_list(p, g, st->out, st->nout, o, sizeof o);
        fprintf(out, "    %2d %-16s %-36s %s -> %s\n", s, op_name(st->op), st->label, in, o);
        if (st->op == OP_A2A_SEQ_TO_HEAD || st->op == OP_A2A_HEAD_TO_SEQ) a2a_line(p, gp, s, 0, out);
    }
    int any = 0;
    for (int t = 0; t < g->nt; t++)
        if (gp->t[t].keep == KEEP_OFFLOAD) {
            if (!any) fprintf(out, "    after forward: copy to host:");
            fprintf(out, " %s", g->t[t].name);
            any = 1;
        }
    if (any) fprintf(out, "\n");
    fprintf(out, "  backward:\n");
    any = 0;
    for (int t = 0; t < g->nt; t++)
        if (gp->t[t].keep == KEEP_OFFLOAD) {
            if (!any) fprintf(out, "    copy back from host:");
            fprintf(out, " %s", g->t[t].name);
            any = 1;
        }
    if (any) fprintf(out, "\n");
    any = 0;
    for (int s = 0; s < g->ns; s++)
        if (gp->recompute_step[s]) {
            if (!any) fprintf(out, "    recompute (forward again):");
            if (plan_recompute_norm_only(gp, s))
                fprintf(out, " %d %s (%s: only the norm, from the kept %s);", s, op_name(g->s[s].op),
                        g->s[s].label, g->t[g->s[s].out[0]].name);
            else
                fprintf(out, " %d %s (%s);", s, op_name(g->s[s].op), g->s[s].label);
            any = 1;
        }
    if (any) fprintf(out, "\n");
    for (int s = g->ns - 1; s >= 0; s--) {
        const graph_step_t *st = &g->s[s];
        char reads[256] = "";
        size_t r = 0;
        for (int t = 0; t < g->nt && r < sizeof reads; t++)
            if (sac_bwd_reads(st, t)) {
                int w = snprintf(reads + r, sizeof reads - r, "%s%s(%s)", r ? ", " : "", g->t[t].name,
                                 keep_name(gp->t[t].keep));
                if (w < 0) break;
                r += (size_t)w;
            }
        fprintf(out, "    %2d %-16s %-36s reads %s\n", s, op_name(st->op), st->label, r ? reads : "gradients only");
        if (st->op == OP_A2A_SEQ_TO_HEAD || st->op == OP_A2A_HEAD_TO_SEQ) a2a_line(p, gp, s, 1, out);
    }
}

/* The placement of model state: ZeRO stage, optimizer, weights. */
static void explain_state(const plan_t *p, const config_t *cfg, FILE *out) {
    const char *what = p->zero_stage == 0 ? "nothing sharded: every rank holds all model state"
                       : p->zero_stage == 1 ? "fp32 master weights and AdamW moments sharded"
                       : p->zero_stage == 2 ? "optimizer state and gradients sharded"
                                            : "optimizer state, gradients and weights sharded";
    fprintf(out, "  ZeRO         stage %d (%s): %s over %d rank%s, %zu elements each (%zu padded)\n", p->zero_stage,
            cfg->parallel.zero_stage < 0 || cfg->optimizer.offload < 0
                ? "chosen by auto: of the placements that fit, the one expected to cost least" : "as configured",
            what, p->shards,
            p->shards > 1 ? "s" : "", p->shard_len, p->n_params_padded);
    if (p->optim_offload)
        fprintf(out, "  optimizer    on the host: master weights, AdamW moments and the %s gradient shard in pinned "
                     "host memory; AdamW on the CPU bucket by bucket, each bucket's gradient copied off the "
                     "device as soon as it is final and its updated weights %s\n",
                p->host_grad_bytes == 4 ? "fp32" : "bf16 (fp32 does not fit the host)",
                p->params_offload ? "written into the host weight shard" : "copied back");
    else
        fprintf(out, "  optimizer    on the %s\n", p->target.param_bytes == 2 ? "GPU" : "backend's device");
    if (p->zero_stage >= 3)
        fprintf(out, "  weights      each bucket's gathered into a buffer just before its forward and its backward "
                     "(prefetched one bucket ahead on the communication stream); %d buffers, not the model\n",
                PLAN_BUCKET_SLOTS);
    if (p->params_offload)
        fprintf(out, "  weights      this rank's shard in pinned host memory (optimizer.offload_params): AdamW "
                     "writes it there, and each bucket's part is copied to the device just before its gather "
                     "reads it, %s a step\n",
                "twice");
}

/* The PLAN section: model, world, model state, gradients, sequence, heads,
 * layout, batch, loss, documents, RoPE, checkpointing, budget, FLOPs. */
static void explain_plan(const plan_t *p, const config_t *cfg, FILE *out) {
    const model_t *m = p->model;
    char b1[32], b2[32];
    fprintf(out, "PLAN\n");
    fprintf(out, "  model        llama: %zu parameters (d %lld, ffn %lld, %lld layers, %lld query / %lld KV heads of %lld, "
                 "vocab %lld, %s embeddings)\n",
            m->n_params, (long long)m->d, (long long)m->f, (long long)m->L, (long long)m->hq, (long long)m->hkv,
            (long long)m->hd, (long long)m->V, m->cfg.tie_word_embeddings ? "tied" : "untied");
    fprintf(out, "  world        %d rank%s = SP %d x DP %d%s\n", p->world, p->world == 1 ? "" : "s", p->sp, p->dp,
            cfg->parallel.sequence_parallel_size == 0 ? " (SP chosen by auto)" : "");
    explain_state(p, cfg, out);
    fprintf(out, "  gradients    %d buckets (embedding, one per layer, tail), each %s as soon as the backward "
                 "leaves it%s\n",
            plan_n_buckets(p),
            p->world == 1 ? "final (one rank: nothing to reduce)"
            : p->shards > 1 ? "reduce-scattered on the communication stream"
                            : "all-reduced on the communication stream",
            p->zero_stage >= 2 ? ", produced in a bucket buffer and added to the rank's gradient shard (no "
                                 "full-size gradient)" : "");
    fprintf(out, "  sequence     S %lld, padded %lld, %lld tokens per rank\n", (long long)p->seq_len,
            (long long)p->seq_pad, (long long)p->seq_local);
    fprintf(out, "  heads        %lld query and %lld KV heads per rank in attention, KV replication %d\n",
            (long long)p->q_heads_local, (long long)p->kv_heads_local, p->kv_replication);
    if (p->sp > 1) {
        /* which all-to-alls send and receive in place (packed) and which are staged */
        char packed[128] = "", staged[128] = "";
        const graph_t *g = &p->layer.g;
        for (int si = 0; si < g->ns; si++) {
            const graph_step_t *st = &g->s[si];
            if (st->op != OP_A2A_SEQ_TO_HEAD && st->op != OP_A2A_HEAD_TO_SEQ) continue;
            const tensor_desc_t *t = a2a_seq_side(g, st);
            char *list = t->packed > 1 ? packed : staged;
            size_t o = strlen(list);
            snprintf(list + o, sizeof packed - o, "%s%s", o ? ", " : "", t->name);
        }
        fprintf(out, "  layout       packed for the all-to-alls (per-peer blocks, no staging copy): %s",
                packed[0] ? packed : "none");
        if (staged[0]) fprintf(out, "; staged through heads_pack/heads_unpack (KV replication): %s", staged);
        fprintf(out, "\n");
    }
    fprintf(out, "  batch        global %lld samples, %lld micro-steps per DP rank per optimizer step\n",
            (long long)cfg->train.global_batch_size, (long long)p->micro_steps);
    fprintf(out, "  loss         LM head + cross entropy in chunks of %lld tokens; loss = sum over valid targets / "
                 "global count of valid targets (padded targets masked)\n",
            (long long)p->loss_chunk);
    if (config_documents_eos(cfg)) {
        fprintf(out, "  documents    the EOS token ends a document: attention block-diagonal causal over the whole "
                     "sample's documents (every SP rank holds their %lld starts), the EOS input's target masked\n",
                (long long)p->seq_pad);
        fprintf(out, "  rope         positions restart at 0 at every document start\n");
    } else {
        fprintf(out, "  rope         global positions: rank r's tokens are r*%lld .. r*%lld+%lld\n",
                (long long)p->seq_local, (long long)p->seq_local, (long long)p->seq_local - 1);
    }
    fprintf(out, "  checkpoint   policy %s%s\n", plan_policy_name(cfg->checkpointing.policy),
            cfg->checkpointing.offload ? ", host offload allowed" : ", host offload off");
    if (cfg->checkpointing.offload)
        fprintf(out, "  host tier    %s per rank, PCIe %.0f GB/s each way, %d device staging slots\n",
                p->target.host_memory_bytes > 0 ? fmtb(b1, sizeof b1, p->target.host_memory_bytes) : "unlimited",
                p->host_bandwidth / 1e9, PLAN_OFFLOAD_SLOTS);
    if (p->target.memory_bytes > 0)
        fprintf(out, "  budget       %s per rank (%s reserved for libraries)\n",
                fmtb(b1, sizeof b1, p->target.memory_bytes), fmtb(b2, sizeof b2, p->target.reserved_bytes));
    else fprintf(out, "  budget       unlimited\n");
    fprintf(out, "  flops        %.3e per optimizer step (6N + causal attention%s), recompute adds %.3e\n",
            p->flops_per_step, config_documents_eos(cfg) ? " as one document: a step counts its documents' own" : "",
            p->recompute_flops_per_step);

}

/* The SAC section: each tensor's decision, tier and costs; offload, tiles
 * and the lean layers. */

/* A time of the layer timeline (memplan.c) in words. */
static void timeline_label(const graph_plan_t *gp, char *buf, size_t len) {
    const int s = gp->ws_peak_step;
    const char *label = gp->g.s[s].label;
    switch (gp->ws_peak_phase) {
    case WS_AT_FWD: snprintf(buf, len, "forward of step %d (%s)", s, label); break;
    case WS_AT_OFFLOAD: snprintf(buf, len, "offload copy"); break;
    case WS_AT_RELOAD: snprintf(buf, len, "reload"); break;
    case WS_AT_RECOMP: snprintf(buf, len, "recompute of step %d (%s)", s, label); break;
    case WS_AT_LOOP: snprintf(buf, len, "rebuild of step %d (%s) in the backward's piece loop", s, label); break;
    default: snprintf(buf, len, "backward of step %d (%s)", s, label); break;
    }
}

/* Attention in pieces: the region, the bytes of one piece, the workspace's peak. */
static void explain_pieces(const plan_t *p, const graph_plan_t *gp, const char *who, FILE *out) {
    char b1[32], b2[32], b3[32], when[160];
    timeline_label(gp, when, sizeof when);
    if (gp->pieces > 1) {
        double piece = 0;   /* one piece's buffers: the piece-sized instances and every pieced gradient */
        for (int t = 0; t < gp->g.nt; t++) {
            const tensor_plan_t *tp = &gp->t[t];
            if (!tp->pieced) continue;
            double one = (double)tp->bytes / gp->pieces;
            if (tp->piece_buf) piece += one;
            if (gp->g.t[t].dtype == TENSOR_ACT) piece += one;
        }
        const graph_step_t *att = NULL;
        for (int s = gp->piece_begin; s <= gp->piece_end; s++)
            if (gp->g.s[s].op == OP_ATTENTION) att = &gp->g.s[s];
        fprintf(out, "  %sattention in %d pieces: steps %d-%d (%s .. %s) run once per group of %lld KV heads (%lld "
                     "query heads) per rank, forward, recompute and backward%s; one piece's tensors and gradients "
                     "%s, attention scratch %s\n",
                who, gp->pieces, gp->piece_begin, gp->piece_end, gp->g.s[gp->piece_begin].label,
                gp->g.s[gp->piece_end].label, (long long)(p->kv_heads_local / gp->pieces),
                (long long)(att ? att->heads / gp->pieces : 0),
                !plan_piece_prepass(gp) ? ""
                : p->attn_pieces_lean ? " (rebuilt before the backward for o_proj's output, and lean: again per "
                                        "piece in the backward's loop, attention included)"
                                      : " (rebuilt before the backward for o_proj's output, attention's outputs "
                                        "kept whole from there; the backward's loop rebuilds the projections "
                                        "only)",
                fmtb(b1, sizeof b1, piece), fmtb(b2, sizeof b2, (double)gp->attn_scratch_bytes));
    }
    fprintf(out, "  %sworkspace peak: %s live at the %s; %s laid out\n", who,
            fmtb(b3, sizeof b3, (double)gp->ws_live_peak), when, fmtb(b1, sizeof b1, (double)gp->workspace_bytes));
}

static void explain_sac(const plan_t *p, const config_t *cfg, FILE *out) {
    const model_t *m = p->model;
    char b1[32], b2[32], b3[32];
    const int mixed = plan_layers_mixed(p);
    if (mixed && p->layers_rich == 1)
        fprintf(out, "\nSAC (layer 0, one rank)\n");
    else if (mixed)
        fprintf(out, "\nSAC (layers 0-%d, one layer, one rank)\n", p->layers_rich - 1);
    else
        fprintf(out, "\nSAC (one layer, one rank)\n");
    fprintf(out, "  %-10s %12s  %-11s %-7s %14s %12s %10s   %s\n", "tensor", "bytes", "decision", "tier", "recompute GF",
            "comm", "copy ms", "cost if rebuilt alone");
    const graph_plan_t *gp = &p->layer;
    for (int t = 0; t < gp->g.nt; t++) {
        const tensor_plan_t *tp = &gp->t[t];
        if (tp->keep == KEEP_NOT_NEEDED && t != gp->g.input) continue;
        double fl;
        size_t cm;
        sac_standalone_cost(p, gp, t, &fl, &cm);
        const int in_host = tp->keep == KEEP_OFFLOAD || (t == gp->g.input && plan_input_offloaded(p, gp));
        const char *tier = in_host ? "host" : t == gp->g.input || tp->keep == KEEP_SAVE ? "device" : "-";
        char copy[32] = "-";
        if (in_host) snprintf(copy, sizeof copy, "%.1f", 1e3 * (double)tp->bytes / p->host_bandwidth);
        fprintf(out, "  %-10s %12s  %-11s %-7s %14.2f %12s %10s   %.2f GFLOP, %s all-to-all\n", gp->g.t[t].name,
                fmtb(b1, sizeof b1, (double)tp->bytes), t == gp->g.input ? "save (in)" : keep_name(tp->keep), tier,
                tp->recompute_flops / 1e9, fmtb(b2, sizeof b2, (double)tp->recompute_comm_bytes), copy, fl / 1e9,
                fmtb(b3, sizeof b3, (double)cm));
    }
    if (gp->offload_bytes) {
        double copy_s, exposed_s;
        plan_offload_times(p, gp, &copy_s, &exposed_s);
        const int out_layers = p->mem.offload_host_layers < (mixed ? p->layers_rich : (int)m->L)
                                   ? p->mem.offload_host_layers : (mixed ? p->layers_rich : (int)m->L);
        fprintf(out, "  offload: %s per layer to the host and back (%.1f ms each way at %.0f GB/s), in %d of %lld "
                     "layers (the last %d stay in their device staging slots); expected %.1f ms of copies per layer, "
                     "%.1f ms not hidden by the layer's compute (%.1f ms per step)\n",
                fmtb(b1, sizeof b1, (double)gp->offload_bytes), 1e3 * (double)gp->offload_bytes / p->host_bandwidth,
                p->host_bandwidth / 1e9, out_layers, (long long)m->L,
                PLAN_OFFLOAD_SLOTS, copy_s * 1e3, exposed_s * 1e3,
                exposed_s * 1e3 * (double)out_layers * (double)p->micro_steps);
    }
    if (cfg->checkpointing.policy == SAC_AUTO && !mixed)
        for (int s = 0; s < gp->g.ns; s++)
            if (gp->g.s[s].op == OP_ATTENTION && gp->recompute_step[s])
                fprintf(out, "  auto: no mix that keeps attention's outputs fits the budget; attention is "
                             "recomputed too (as policy full)\n");
    fprintf(out, "  saved slot %s per layer, host slot %s per layer, workspace %s\n",
            fmtb(b1, sizeof b1, (double)gp->saved_bytes), fmtb(b2, sizeof b2, (double)gp->offload_bytes),
            fmtb(b3, sizeof b3, (double)gp->workspace_bytes));
    if (gp->attn_scratch_bytes)
        fprintf(out, "  attention scratch %s, inside the workspace at each run of the attention step (forward, "
                     "recompute, backward)\n", fmtb(b1, sizeof b1, (double)gp->attn_scratch_bytes));
    const graph_plan_t *tps[2] = {gp, mixed ? &p->layer_lean : NULL};
    for (int k = 0; k < 2; k++) {
        const graph_plan_t *tp = tps[k];
        if (!tp || !tp->tile_rows) continue;
        int64_t tiles = (p->seq_local + tp->tile_rows - 1) / tp->tile_rows;
        fprintf(out, "  %stiled: steps %d-%d (%s .. %s) run in %lld tiles of %lld tokens, forward and backward; their "
                     "recomputed intermediates are held one tile at a time\n",
                k ? "lean layers: " : "", tp->tile_begin, tp->tile_end, tp->g.s[tp->tile_begin].label,
                tp->g.s[tp->tile_end].label, (long long)tiles, (long long)tp->tile_rows);
    }
    for (int k = 0; k < 2; k++)
        if (tps[k]) explain_pieces(p, tps[k], k ? "lean layers: " : "", out);
    if (mixed) {
        const graph_plan_t *lp = &p->layer_lean;
        double rc = sac_graph_recompute_flops(p, lp);
        fprintf(out, "  auto, per layer: attention's outputs fit in %d of %lld layers; layers %d-%lld recompute "
                     "everything from their input, attention included (%.2f GFLOP per layer): saved slot %s, "
                     "host slot %s, workspace %s\n",
                p->layers_rich, (long long)m->L, p->layers_rich, (long long)m->L - 1, rc / 1e9,
                fmtb(b1, sizeof b1, (double)lp->saved_bytes), fmtb(b3, sizeof b3, (double)lp->offload_bytes),
                fmtb(b2, sizeof b2, (double)lp->workspace_bytes));
    }

}

/* The MEMORY section: every region, the arenas, the peaks against the budgets. */
static void explain_memory(const plan_t *p, FILE *out) {
    char b1[32], b2[32], b3[32];
    fprintf(out, "\nMEMORY (per rank)\n");
    const memplan_t *mem = &p->mem;
    struct { const char *name; const region_t *r; } rows[] = {
        {"params", &mem->params},       {"grads", &mem->grads},           {"grad_shard", &mem->grad_shard},
        {"param_dev_stage", &mem->param_dev_stage},
        {"master", &mem->master},       {"adam_m", &mem->adam_m},         {"adam_v", &mem->adam_v},
        {"param_buf[0]", &mem->param_buf[0]}, {"param_buf[1]", &mem->param_buf[1]},
        {"param_buf[2]", &mem->param_buf[2]}, {"param_buf[3]", &mem->param_buf[3]},
        {"grad_buf[0]", &mem->grad_buf[0]},   {"grad_buf[1]", &mem->grad_buf[1]},
        {"grad_buf[2]", &mem->grad_buf[2]},   {"grad_buf[3]", &mem->grad_buf[3]},
        {"grad_stage[0]", &mem->grad_stage[0]}, {"grad_stage[1]", &mem->grad_stage[1]},
        {"grad_stage[2]", &mem->grad_stage[2]}, {"grad_stage[3]", &mem->grad_stage[3]},
        {"param_stage[0]", &mem->param_stage[0]}, {"param_stage[1]", &mem->param_stage[1]},
        {"param_stage[2]", &mem->param_stage[2]}, {"param_stage[3]", &mem->param_stage[3]},
        {"saved_layers", &mem->saved_layers}, {"final_hidden", &mem->final_hidden}, {"workspace", &mem->workspace},
        {"  logits", &mem->logits},   {"resid_grad[0]", &mem->resid_grad[0]}, {"resid_grad[1]", &mem->resid_grad[1]},
        {"a2a_send", &mem->a2a_send},   {"a2a_recv", &mem->a2a_recv},     {"tokens", &mem->tokens},
        {"targets", &mem->targets},     {"positions", &mem->positions},   {"rope_freq", &mem->rope_freq},
        {"scalars", &mem->scalars},     {"op scratch", &mem->scratch}, {"offload stage", &mem->offload_stage},
        {"offload", &mem->offload},
    };
    /* the logits lie inside the workspace region (row above), so the rows do not add up to the arenas */
    fprintf(out, "  %-14s %-6s %-12s %14s    %12s\n", "region", "tier", "arena", "bytes", "");
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const region_t *r = rows[i].r;
        if (!r->bytes && rows[i].name[0] != 'p' && rows[i].name[0] != 'm') continue; /* absent in this plan */
        int host = r->arena == ARENA_HOST || r->arena == ARENA_HOST_STATE;
        fprintf(out, "  %-14s %-6s %-12s %14zu B  %12s%s\n", rows[i].name, host ? "host" : "device",
                arena_name((arena_t)r->arena), r->bytes, fmtb(b1, sizeof b1, (double)r->bytes),
                r == &mem->logits ? "  (inside the workspace)" : "");
    }
    for (int a = 0; a < ARENA__COUNT; a++)
        fprintf(out, "  arena %-20s %14zu B  %12s\n", arena_name((arena_t)a), mem->arena_bytes[a],
                fmtb(b1, sizeof b1, (double)mem->arena_bytes[a]));
    fprintf(out, "  predicted device peak  %14zu B  %12s (arenas + %s reserved)\n", mem->device_total,
            fmtb(b1, sizeof b1, (double)mem->device_total), fmtb(b2, sizeof b2, p->target.reserved_bytes));
    fprintf(out, "  pinned host            %14zu B  %12s (activations %s, model state %s)\n", mem->host_total,
            fmtb(b1, sizeof b1, (double)mem->host_total), fmtb(b2, sizeof b2, (double)mem->arena_bytes[ARENA_HOST]),
            fmtb(b3, sizeof b3, (double)mem->host_state));
    if (mem->pcie_bytes > 0) {
        double rate = p->host_bandwidth > 0 ? p->host_bandwidth : PLAN_HOST_BANDWIDTH;
        fprintf(out, "  PCIe (model state)     %14.0f B  %12s per optimizer step, %.2f s at %.0f GB/s (gradients "
                     "off during the backward, %s)\n",
                mem->pcie_bytes, fmtb(b1, sizeof b1, mem->pcie_bytes), mem->pcie_s, rate / 1e9,
                p->params_offload ? "each bucket's weights over before its forward and its backward gather"
                                  : "weights back after AdamW");
    }
    if (p->target.memory_bytes > 0)
        fprintf(out, "  budget (device)        %14.0f B  %12s (%s)\n", p->target.memory_bytes,
                fmtb(b1, sizeof b1, p->target.memory_bytes),
                (double)mem->device_total <= p->target.memory_bytes ? "fits" : "DOES NOT FIT");
    if (p->target.host_memory_bytes > 0)
        fprintf(out, "  budget (host)          %14.0f B  %12s (%s)\n", p->target.host_memory_bytes,
                fmtb(b1, sizeof b1, p->target.host_memory_bytes),
                (double)plan_host_bytes(p) <= p->target.host_memory_bytes ? "fits" : "DOES NOT FIT");
    fprintf(out, "  tiers                  device %s, host %s; attention %s\n",
            fmtb(b1, sizeof b1, (double)mem->device_total), fmtb(b2, sizeof b2, (double)plan_host_bytes(p)),
            plan_recomputes_attention(p) ? "recomputed in some layers" : "never recomputed");
}

/* The longest S that fits the budgets, with and without recomputing attention. */
static void explain_longest(const plan_t *p, const config_t *cfg, FILE *out) {
    const model_t *m = p->model;
    if (p->target.memory_bytes > 0 || p->target.host_memory_bytes > 0) {
        int64_t g = (int64_t)p->sp * 1024;
        config_t fixed = *cfg;
        fixed.parallel.zero_stage = p->zero_stage;
        fixed.optimizer.offload = p->optim_offload;
        fixed.optimizer.offload_params = p->params_offload;
        int64_t longest = plan_longest_seq(&fixed, m, p->world, &p->target, g);
        fprintf(out, "\nLONGEST S that fits the budget on %d rank%s (multiple of %lld): %lld tokens with ZeRO-%d and the "
                     "optimizer on the %s%s",
                p->world, p->world == 1 ? "" : "s", (long long)g, (long long)longest, p->zero_stage,
                p->optim_offload ? "host" : "device", p->params_offload ? " (weights too)" : "");
        if (p->zero_auto) {
            int64_t any = plan_longest_seq(cfg, m, p->world, &p->target, g);
            fprintf(out, "; %lld tokens with the placement auto chooses there", (long long)any);
        }
        fprintf(out, "\n");
        int64_t kept = plan_longest_seq_no_attention_recompute(cfg, m, p->world, &p->target, g);
        fprintf(out, "LONGEST S with no layer recomputing attention: %lld tokens\n", (long long)kept);
    }
}

void plan_explain(const plan_t *p, const config_t *cfg, FILE *out) {
    explain_plan(p, cfg, out);
    fprintf(out, "\nPROLOGUE (shapes per rank)\n");
    graph_steps(p, &p->prologue, out);
    fprintf(out, "\nLAYER (x %lld, shapes per rank)\n", (long long)p->model->L);
    graph_steps(p, &p->layer, out);
    fprintf(out, "\nEPILOGUE (shapes per rank)\n");
    graph_steps(p, &p->epilogue, out);

    explain_sac(p, cfg, out);
    explain_memory(p, out);
    explain_longest(p, cfg, out);
}

/* The PREDICTED STEP section: seconds by kind on a card profile. */
void plan_explain_predicted(const plan_t *p, const card_profile_t *prof, double doc_len, FILE *out) {
    step_prediction_t o;
    plan_predict(p, prof, doc_len, &o);
    fprintf(out, "\nPREDICTED STEP on %s (card profile; one optimizer step%s)\n", prof->card,
            doc_len > 0 ? ", documents of the given length" : "");
    for (int k = 0; k < PRED__COUNT; k++)
        fprintf(out, "  %-24s %10.3f s  %5.1f%%\n", pred_kind_name((pred_kind_t)k), o.s[k],
                o.step_s > 0 ? 100 * o.s[k] / o.step_s : 0);
    fprintf(out, "  %-24s %10.3f s\n", "step", o.step_s);
    fprintf(out, "  tokens/s %.0f, %.1f TFLOP/s per GPU, MFU %.1f%% of %.0f TFLOP/s\n", o.tokens_per_s,
            o.tflops_per_gpu, 100 * o.mfu, prof->peak_tflops);
    if (o.offload_copy_s > 0 || o.state_copy_s > 0)
        fprintf(out, "  PCIe busy: activations %.3f s, model state %.3f s (exposed above)\n", o.offload_copy_s,
                o.state_copy_s);
    if (o.host_adamw_s > 0) fprintf(out, "  host AdamW: %.3f s of work (exposed above)\n", o.host_adamw_s);
    if (p->world > 1)
        fprintf(out, "  communication: all-to-alls %.3f s, gradient reduction and weight gathers %.3f s%s\n", o.a2a_s,
                o.grad_comm_s, o.no_collective_rates ? " (the profile has no rate for this GPU count: counted 0)" : "");
}
