/* plan_compile: SP degree choice (given or auto), then the SP pass, SAC pass
 * and memory plan; plan_longest_seq searches S against the budget. */
#include <stdlib.h>
#include <string.h>

#include "plan/passes.h"
#include "plan/predict.h"
#include "util.h"

#define LONGEST_SEQ_MAX ((int64_t)1 << 26)

/* A budget in the config wins over the device's memory given by the caller. */
static plan_target_t effective_target(const config_t *cfg, const plan_target_t *target) {
    plan_target_t t = *target;
    if (cfg->checkpointing.memory_budget_gib > 0) t.memory_bytes = cfg->checkpointing.memory_budget_gib * 1073741824.0;
    return t;
}

/* One placement of the model state: ZeRO stage, optimizer on the host or
 * not, and the host gradient shard's element size. */
typedef struct {
    int stage, offload, host_grad_bytes, params;
} placement_t;

/* The placements plan_compile tries, in order: the configured ones, or for
 * auto the lowest stage first, the optimizer on the GPU before the host, an
 * fp32 host gradient before a bf16 one (only for a bf16 GPU run with one
 * micro-step, where the gradient is not accumulated there), and under
 * ZeRO-3 with the optimizer on the host the weight shard on the device
 * before the host. ZeRO 2-3 on one rank with the optimizer on the GPU, and
 * ZeRO-3 on one rank with the weights on the device, only add bucket
 * buffers, so auto skips them. */
#define PLACEMENTS_MAX 32
static int placements(const config_t *cfg, int world, int64_t micro_steps, const plan_target_t *t,
                      placement_t *out) {
    int n = 0;
    const int want_stage = cfg->parallel.zero_stage, want_off = cfg->optimizer.offload;
    const int want_prm = cfg->optimizer.offload_params;
    for (int off = 0; off <= 1; off++) {
        if (want_off >= 0 && off != want_off) continue;
        if (want_off < 0 && off && t->host_is_device) continue;
        for (int st = 0; st <= 3; st++) {
            if (want_stage >= 0 && st != want_stage) continue;
            if (want_stage < 0 && world == 1 && st >= 2 && !off) continue;
            for (int prm = 0; prm <= 1; prm++) {
                if (prm && (st != 3 || !off)) continue;
                if (want_prm >= 0 && prm != want_prm) continue;
                if (want_prm < 0 && prm && t->host_is_device) continue;
                if (want_stage < 0 && world == 1 && st == 3 && !prm) continue;
                out[n++] = (placement_t){st, off, 4, prm};
                if (off && t->param_bytes == 2 && t->grad_bytes == 4 && micro_steps == 1)
                    out[n++] = (placement_t){st, off, 2, prm};
            }
        }
    }
    return n;
}

static double layers_recompute_flops(const plan_t *p) {
    double rc = 0;
    for (int l = 0; l < (int)p->model->L; l++) rc += sac_graph_recompute_flops(p, plan_layer_plan(p, l));
    return rc;
}

/* What a placement is expected to cost a step beyond the model's own work,
 * in predicted seconds on the target's card profile (predict.c): its
 * recompute, the host copies the compute does not hide, the host AdamW the
 * next forward waits for, and exposed communication. */
static double placement_cost_s(const plan_t *p) { return plan_predicted_overhead_s(p, plan_cost_profile(p)); }

/* What running attention in G > 1 pieces costs a step beyond its FLOPs, in
 * seconds per rank: each extra piece launches the region's steps again in
 * the forward, the recompute and the backward (about 10 us each, with the
 * smaller GEMMs' lower efficiency folded in), in every layer and micro-step.
 * Small against any recompute of attention, so auto takes G = 1 when that
 * fits and keeps attention, and otherwise the fewest pieces that do best. */
#define PIECE_STEP_S 10e-6
static double piece_cost_s(const plan_t *p) {
    if (p->attn_pieces <= 1) return 0;
    const graph_plan_t *gp = &p->layer;
    int steps = gp->pieces > 1 ? gp->piece_end - gp->piece_begin + 1 : 0;
    return (double)(p->attn_pieces - 1) * (double)steps * 3.0 * PIECE_STEP_S * (double)p->model->L *
           (double)p->micro_steps;
}

static void set_placement(plan_t *p, const config_t *cfg, const placement_t *pl) {
    p->zero_stage = pl->stage;
    p->optim_offload = pl->offload;
    p->host_grad_bytes = pl->host_grad_bytes;
    p->params_offload = pl->params;
    p->zero_auto = cfg->parallel.zero_stage < 0 || cfg->optimizer.offload < 0 || cfg->optimizer.offload_params < 0;
}

/* The piece counts compile_at tries (attention in KV-head groups): the
 * configured one, refused when it does not divide the KV heads per rank;
 * for auto 1 and then every count that does, ascending. */
static int piece_counts(const plan_t *p, const config_t *cfg, int *out, char *err, size_t errlen) {
    const int want = cfg->checkpointing.attention_pieces;
    if (want > 0) {
        if (plan_pieces_valid(p, want)) {
            out[0] = want;
            return 1;
        }
        char valid[128] = "1";
        for (int G = 2; G <= p->kv_heads_local && strlen(valid) + 8 < sizeof valid; G++)
            if (plan_pieces_valid(p, G)) snprintf(valid + strlen(valid), sizeof valid - strlen(valid), ", %d", G);
        asp_errf(err, errlen,
                 "checkpointing.attention_pieces: %d does not divide the %lld KV head%s per rank (sequence_parallel_size "
                 "%d%s); valid counts: %s (or auto)",
                 want, (long long)p->kv_heads_local, p->kv_heads_local == 1 ? "" : "s", p->sp,
                 p->kv_replication > 1 ? ", KV heads replicated" : "", valid);
        return -1;
    }
    int n = 0;
    for (int G = 1; G <= p->kv_heads_local && n < 64; G++)
        if (plan_pieces_valid(p, G)) out[n++] = G;
    return n;
}

/* 0: compiled and fits; 1: compiled, does not fit; -1: impossible (err set).
 * With several placements and piece counts to try (auto), the one that fits
 * at the least expected cost wins (placement_cost_s + piece_cost_s; within
 * 0.1%, the earlier: lower stage, fewer pieces); more pieces are tried only
 * while nothing fits or the best plan recomputes attention. Without a fit p
 * is left at the last one tried. */
static int compile_at(plan_t *p, const config_t *cfg, const model_t *m, int world, const plan_target_t *t, int sp,
                      int64_t seq_len, char *err, size_t errlen) {
    if (sp_pass(p, cfg, m, world, sp, seq_len, t, err, errlen)) return -1;
    int gs[64];
    int ng = piece_counts(p, cfg, gs, err, errlen);
    if (ng < 0) return -1;
    placement_t list[PLACEMENTS_MAX];
    int n = placements(cfg, world, p->micro_steps, t, list);
    int best = -1, best_g = 1, best_lean = 0, best_att = 0, tried = 0;
    double best_cost = 0;
    /* each count G > 1 twice: attention's outputs kept whole through a rebuild
     * before the backward (fewer FLOPs), then lean (less memory) */
    for (int gl = 0; gl < 2 * ng && (best < 0 || best_att); gl++) {
        const int G = gs[gl / 2], lean = gl % 2;
        if (lean && G == 1) continue;
        for (int i = 0; i < n; i++) {
            if (tried++ && sp_pass(p, cfg, m, world, sp, seq_len, t, err, errlen)) return -1;
            set_placement(p, cfg, &list[i]);
            p->attn_pieces = G;
            p->attn_pieces_lean = lean;
            if (!sac_pass(p, cfg)) continue;
            double cost = placement_cost_s(p) + piece_cost_s(p);
            if (best < 0 || cost < best_cost * 0.999) {
                best = i;
                best_g = G;
                best_lean = lean;
                best_cost = cost;
                best_att = plan_recomputes_attention(p);
            }
            if (cost == 0) break;   /* nothing to gain from a higher placement */
        }
    }
    if (best >= 0 && (p->zero_stage != list[best].stage || p->optim_offload != list[best].offload ||
                      p->host_grad_bytes != list[best].host_grad_bytes || p->params_offload != list[best].params ||
                      p->attn_pieces != best_g || p->attn_pieces_lean != best_lean)) {
        sp_pass(p, cfg, m, world, sp, seq_len, t, err, errlen);
        set_placement(p, cfg, &list[best]);
        p->attn_pieces = best_g;
        p->attn_pieces_lean = best_lean;
        sac_pass(p, cfg);
    }
    p->recompute_flops_per_step = layers_recompute_flops(p) * (double)p->micro_steps * (double)p->world;
    p->flops_per_step = plan_flops_per_token(m, (double)seq_len) * (double)seq_len * (double)cfg->train.global_batch_size;
    return best >= 0 ? 0 : 1;
}

/* SP degrees `auto` may choose: valid for the model, dividing the world, with
 * DP dividing the global batch; ascending. */
static int auto_degrees(const model_t *m, int world, int64_t gbs, int *list) {
    int n = 0;
    for (int P = 1; P <= world; P++)
        if (world % P == 0 && sp_degree_valid(m, P) && gbs > 0 && gbs % (world / P) == 0) list[n++] = P;
    return n;
}

/* Settings that work when no SP degree does for this world and batch: each
 * head-valid degree with the smallest batch above the given one that its
 * data-parallel degree divides, and the nearest world sizes that take the
 * batch as it is. */
static void degree_hint(const model_t *m, int world, int64_t gbs, char *out, size_t len) {
    size_t o = (size_t)snprintf(out, len, "settings that work:");
    int any = 0;
    for (int P = 1; P <= world && o < len; P++) {
        if (world % P != 0 || !sp_degree_valid(m, P)) continue;
        int64_t dp = world / P, ok = gbs > 0 ? (gbs + dp - 1) / dp * dp : dp;
        o += (size_t)snprintf(out + o, len - o, "%s sequence_parallel_size %d with train.global_batch_size %lld (a "
                              "multiple of %lld)", any ? ";" : "", P, (long long)ok, (long long)dp);
        any = 1;
    }
    int list[1024], shown = 0;
    for (int d = 1; d < world && shown < 4 && o < len; d++)
        for (int w = world - d; w <= world + d; w += 2 * d)
            if (w >= 1 && w <= 1024 && shown < 4 && auto_degrees(m, w, gbs, list) > 0 && o < len) {
                if (shown) o += (size_t)snprintf(out + o, len - o, ", %d", w);
                else o += (size_t)snprintf(out + o, len - o, "%s world %d", any ? "; or" : "", w);
                shown++;
            }
    if (shown && o < len) snprintf(out + o, len - o, " with this batch");
    else if (!any && !shown && o < len) snprintf(out + o, len - o, " none near world %d", world);
}

/* compile_at == 0, and with `kept` also no layer recomputing attention */
static int good_at(plan_t *p, const config_t *cfg, const model_t *m, int world, const plan_target_t *t, int sp,
                   int64_t seq_len, int kept) {
    char err[512];
    if (compile_at(p, cfg, m, world, t, sp, seq_len, err, sizeof err) != 0) return 0;
    return !kept || !plan_recomputes_attention(p);
}

static int64_t longest_fixed_kept(plan_t *scratch, const config_t *cfg, const model_t *m, int world,
                                  const plan_target_t *t, int sp, int64_t granule, int kept) {
    if (granule < 1) granule = 1;
    int64_t lo = 0, hi = LONGEST_SEQ_MAX / granule;
    if (good_at(scratch, cfg, m, world, t, sp, hi * granule, kept)) return hi * granule;
    while (hi - lo > 1) {   /* good(lo) (or lo == 0), !good(hi) */
        int64_t mid = lo + (hi - lo) / 2;
        if (good_at(scratch, cfg, m, world, t, sp, mid * granule, kept)) lo = mid;
        else hi = mid;
    }
    return lo * granule;
}

static int64_t longest_fixed(plan_t *scratch, const config_t *cfg, const model_t *m, int world,
                             const plan_target_t *t, int sp, int64_t granule) {
    return longest_fixed_kept(scratch, cfg, m, world, t, sp, granule, 0);
}

static int64_t granule_for(int sp, int64_t seq_len) {
    return seq_len >= (int64_t)sp * 1024 ? (int64_t)sp * 1024 : sp;
}

static int64_t longest_seq(const config_t *cfg, const model_t *m, int world, const plan_target_t *target,
                           int64_t granule, int kept) {
    plan_target_t t = effective_target(cfg, target);
    plan_t *scratch = asp_malloc(sizeof *scratch, "plan search");
    int64_t best = 0;
    if (cfg->parallel.sequence_parallel_size > 0) {
        best = longest_fixed_kept(scratch, cfg, m, world, &t, (int)cfg->parallel.sequence_parallel_size, granule, kept);
    } else {
        int list[1024];
        int n = world <= 1024 ? auto_degrees(m, world, cfg->train.global_batch_size, list) : 0;
        for (int i = 0; i < n; i++) {
            int64_t s = longest_fixed_kept(scratch, cfg, m, world, &t, list[i], granule, kept);
            if (s > best) best = s;
        }
    }
    free(scratch);
    return best;
}

int64_t plan_longest_seq(const config_t *cfg, const model_t *m, int world, const plan_target_t *target,
                         int64_t granule) {
    return longest_seq(cfg, m, world, target, granule, 0);
}

int64_t plan_longest_seq_no_attention_recompute(const config_t *cfg, const model_t *m, int world,
                                                const plan_target_t *target, int64_t granule) {
    return longest_seq(cfg, m, world, target, granule, 1);
}

static void no_fit_message(const plan_t *p, const config_t *cfg, int64_t longest, int sp, char *err, size_t errlen) {
    char have[32], budget[32], fixed[32];
    const memplan_t *mem = &p->mem;
    asp_fmt_bytes(have, sizeof have, (double)mem->device_total);
    asp_fmt_bytes(budget, sizeof budget, p->target.memory_bytes);
    if (longest > 0) {
        /* name the tier that overflows: device memory, pinned host memory, or both */
        const int dev_over = p->target.memory_bytes > 0 && (double)mem->device_total > p->target.memory_bytes;
        const int host_over = p->target.host_memory_bytes > 0 && (double)plan_host_bytes(p) > p->target.host_memory_bytes;
        char what[200];
        if (host_over) {
            char hneed[32], hbud[32];
            asp_fmt_bytes(hneed, sizeof hneed, (double)plan_host_bytes(p));
            asp_fmt_bytes(hbud, sizeof hbud, p->target.host_memory_bytes);
            if (dev_over)
                snprintf(what, sizeof what, "%s of device memory per rank (budget %s) and %s of pinned host memory "
                         "(budget %s)", have, budget, hneed, hbud);
            else
                snprintf(what, sizeof what, "%s of pinned host memory per rank but the host budget is %s (device: %s "
                         "of %s)", hneed, hbud, have, budget);
        } else {
            snprintf(what, sizeof what, "%s per rank but the budget is %s", have, budget);
        }
        const char *advice = host_over && !dev_over
                                 ? "lower train.seq_len, or add ranks on more nodes (each brings its host memory)"
                                 : "lower train.seq_len, use checkpointing.policy auto (with offload), or add ranks";
        asp_errf(err, errlen,
                 "train.seq_len %lld does not fit: the plan needs %s (sequence_parallel_size %d, policy %s); the "
                 "longest seq_len that fits is %lld with sequence_parallel_size %d on %d rank%s; %s",
                 (long long)cfg->train.seq_len, what, p->sp, plan_policy_name(cfg->checkpointing.policy),
                 (long long)longest, sp, p->world, p->world == 1 ? "" : "s", advice);
        return;
    }
    /* Not even the shortest sequence fits: say what the model state costs, per tier. */
    double weights = (double)(mem->params.bytes + mem->grads.bytes + mem->grad_shard.bytes + mem->master.bytes +
                              mem->adam_m.bytes + mem->adam_v.bytes);
    for (int k = 0; k < PLAN_BUCKET_SLOTS; k++) weights += (double)(mem->param_buf[k].bytes + mem->grad_buf[k].bytes);
    double host = (double)mem->host_state, dev = weights - host;
    char hostb[32], hbudget[32];
    asp_fmt_bytes(fixed, sizeof fixed, dev);
    asp_fmt_bytes(hostb, sizeof hostb, host);
    if (p->target.host_memory_bytes > 0) asp_fmt_bytes(hbudget, sizeof hbudget, p->target.host_memory_bytes);
    else snprintf(hbudget, sizeof hbudget, "unlimited");
    asp_errf(err, errlen,
             "this model does not fit at any seq_len on %d rank%s: its weights, gradients and optimizer state take "
             "%s of device memory per rank (budget %s) and %s of pinned host memory (budget %s) with the "
             "least-memory placement tried (ZeRO-%d, optimizer %s); give more memory per rank "
             "(checkpointing.memory_budget_gib, --gpu-memory, --host-memory), add ranks, or set "
             "parallel.zero_stage and optimizer.offload to auto",
             p->world, p->world == 1 ? "" : "s", fixed, budget, hostb, hbudget, p->zero_stage, p->optim_offload ? "on the host" : "on the GPU");
}

int plan_compile(plan_t *p, const config_t *cfg, const model_t *m, int world, const plan_target_t *target,
                 char *err, size_t errlen) {
    plan_target_t t = effective_target(cfg, target);
    const int64_t S = cfg->train.seq_len;
    int64_t want = cfg->parallel.sequence_parallel_size;
    if (want < 0) return asp_errf(err, errlen, "parallel.sequence_parallel_size: %lld; use a positive degree or auto",
                                  (long long)want);
    if (want > 0) {
        int r = compile_at(p, cfg, m, world, &t, (int)want, S, err, errlen);
        if (r <= 0) return r;
        plan_t *scratch = asp_malloc(sizeof *scratch, "plan search");
        int64_t longest = longest_fixed(scratch, cfg, m, world, &t, (int)want, granule_for((int)want, S));
        free(scratch);
        compile_at(p, cfg, m, world, &t, (int)want, S, err, errlen);
        no_fit_message(p, cfg, longest, (int)want, err, errlen);
        return PLAN_NO_FIT;
    }
    if (world < 1 || world > 1024)
        return asp_errf(err, errlen, "world size %d: expected 1 to 1024 ranks", world);
    int list[1024];
    int n = auto_degrees(m, world, cfg->train.global_batch_size, list);
    if (n == 0) {
        char hint[384];
        degree_hint(m, world, cfg->train.global_batch_size, hint, sizeof hint);
        return asp_errf(err, errlen,
                        "parallel.sequence_parallel_size auto: no degree works for world %d and "
                        "train.global_batch_size %lld (the data-parallel degree world/SP must divide the batch); %s",
                        world, (long long)cfg->train.global_batch_size, hint);
    }
    for (int i = 0; i < n; i++)
        if (compile_at(p, cfg, m, world, &t, list[i], S, err, errlen) == 0) return 0;
    /* nothing fits: report the best degree's longest S */
    plan_t *scratch = asp_malloc(sizeof *scratch, "plan search");
    int64_t best = -1;
    int best_sp = list[n - 1];
    for (int i = 0; i < n; i++) {
        int64_t s = longest_fixed(scratch, cfg, m, world, &t, list[i], granule_for(list[i], S));
        if (s > best) {
            best = s;
            best_sp = list[i];
        }
    }
    free(scratch);
    compile_at(p, cfg, m, world, &t, best_sp, S, err, errlen);
    no_fit_message(p, cfg, best, best_sp, err, errlen);
    return PLAN_NO_FIT;
}
