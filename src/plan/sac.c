/* SAC pass: per tensor of the layer graph, keep it in the saved slot,
 * recompute it before the layer's backward, or offload it to the host.
 * The cost model and its constants are described in docs/plan.md. */
#include <stdlib.h>
#include <string.h>

#include "plan/passes.h"
#include "util.h"

/* An all-to-all byte costs as much time as this many FLOPs (about the ratio of
 * dense bf16 throughput to all-to-all bandwidth inside a node). */
#define COMM_FLOP_PER_BYTE 2048.0
/* The compute rate the offload copies hide behind: what a layer's forward
 * and backward achieve on an H100/H200 at long S (about 400 TFLOP/s,
 * GPU.md), so that a copy's exposed seconds convert to FLOP equivalents. */
#define COMPUTE_FLOP_PER_S 400e12
/* An offloaded byte also crosses device memory four times (into the staging
 * slot and out in the forward, in and out again in the backward), at about
 * 4.3 TB/s on an H200: in FLOP equivalents at the rate above. */
#define OFFLOAD_HBM_FLOP_PER_BYTE (4 * COMPUTE_FLOP_PER_S / 4.3e12)

const char *plan_policy_name(sac_policy_t s) {
    switch (s) {
    case SAC_AUTO: return "auto";
    case SAC_SAVE_ALL: return "save_all";
    case SAC_FULL: return "full";
    }
    return "?";
}


/* Keeps for a fixed policy: the graph input is the checkpoint; what a
 * backward reads is saved (save_all) or recomputed (full). */
static void policy_keeps(graph_plan_t *gp, sac_policy_t policy) {
    const graph_t *g = &gp->g;
    for (int t = 0; t < g->nt; t++) {
        if (t == g->input) gp->t[t].keep = KEEP_SAVE;
        else if (!sac_read_by_backward(g, t)) gp->t[t].keep = KEEP_NOT_NEEDED;
        else gp->t[t].keep = policy == SAC_FULL ? KEEP_RECOMPUTE : KEEP_SAVE;
    }
}

void sac_apply_policy(plan_t *p, const config_t *cfg, sac_policy_t policy) {
    graph_plan_t *gps[3] = {&p->prologue, &p->layer, &p->epilogue};
    for (int i = 0; i < 3; i++) {
        policy_keeps(gps[i], policy);
        sac_derive(p, gps[i], NULL, 0);
    }
    memplan_all(p, cfg);
}

/* Offload copies of one layer (bytes each way) against its compute: the copy
 * to the host runs during the next layer's forward, the copy back during
 * the backward of the layer above; what the compute does not cover is
 * exposed. fwd_flops: the layer's forward; bwd_flops: its backward and
 * recompute. */
static void offload_exposure(const plan_t *p, double bytes, double fwd_flops, double bwd_flops, double *copy_s,
                             double *exposed_s) {
    double bw = p->host_bandwidth > 0 ? p->host_bandwidth : PLAN_HOST_BANDWIDTH;
    double one = bytes / bw, tf = fwd_flops / COMPUTE_FLOP_PER_S, tb = bwd_flops / COMPUTE_FLOP_PER_S;
    *copy_s = 2 * one;
    *exposed_s = (one > tf ? one - tf : 0) + (one > tb ? one - tb : 0);
}

static double graph_fwd_flops(const plan_t *p, const graph_t *g) {
    double f = 0;
    for (int s = 0; s < g->ns; s++) f += sac_step_flops(p, g, s);
    return f;
}

/* Time cost (in FLOP equivalents) of a layer's keeps: recompute plus the
 * offload copies' exposed time. */
static double keeps_cost(const plan_t *p, const graph_t *g, const keep_t *keep) {
    int rstep[GRAPH_MAX_STEPS] = {0};
    double flops = 0, offload = 0;
    size_t comm = 0;
    for (int t = 0; t < g->nt; t++) {
        if (keep[t] == KEEP_RECOMPUTE) sac_closure(p, g, keep, t, rstep, &flops, &comm);
        if (keep[t] == KEEP_OFFLOAD) offload += (double)plan_tensor_bytes(p, &g->t[t]);
    }
    if (p->inputs_offloaded && g->input >= 0) offload += (double)plan_tensor_bytes(p, &g->t[g->input]);
    double cost = flops + COMM_FLOP_PER_BYTE * (double)comm;
    if (offload > 0) {
        double fwd = graph_fwd_flops(p, g), copy_s, exposed_s;
        offload_exposure(p, offload, fwd, 2 * fwd + cost, &copy_s, &exposed_s);
        cost += exposed_s * COMPUTE_FLOP_PER_S + OFFLOAD_HBM_FLOP_PER_BYTE * offload;
    }
    return cost;
}

void plan_offload_times(const plan_t *p, const graph_plan_t *gp, double *copy_s, double *exposed_s) {
    double bytes = 0;
    for (int t = 0; t < gp->g.nt; t++)
        if (gp->t[t].keep == KEEP_OFFLOAD) bytes += (double)gp->t[t].bytes;
    if (plan_input_offloaded(p, gp)) bytes += (double)gp->t[gp->g.input].bytes;
    *copy_s = *exposed_s = 0;
    if (bytes <= 0) return;
    double fwd = graph_fwd_flops(p, &gp->g), rc = sac_graph_recompute_flops(p, gp);
    offload_exposure(p, bytes, fwd, 2 * fwd + rc, copy_s, exposed_s);
}

int plan_recomputes_attention(const plan_t *p) {
    for (int l = 0; l < (int)p->model->L; l++) {
        const graph_plan_t *gp = plan_layer_plan(p, l);
        for (int s = 0; s < gp->g.ns; s++)
            if (gp->g.s[s].op == OP_ATTENTION && gp->recompute_step[s]) return 1;
    }
    return 0;
}

void sac_standalone_cost(const plan_t *p, const graph_plan_t *gp, int t, double *flops, size_t *comm) {
    const graph_t *g = &gp->g;
    keep_t keep[GRAPH_MAX_TENSORS];
    int rstep[GRAPH_MAX_STEPS] = {0};
    for (int u = 0; u < g->nt; u++) keep[u] = gp->t[u].keep;
    keep[t] = KEEP_RECOMPUTE;
    *flops = 0;
    *comm = 0;
    sac_closure(p, g, keep, t, rstep, flops, comm);
}

/* 1 when the host tier has room for tensor t of the layer graph in every
 * layer that sends its activations there. */
static int host_room(const plan_t *p, const graph_plan_t *gp, int t) {
    if (p->target.host_memory_bytes <= 0) return 1;
    int L = (int)p->model->L, host_layers = L > PLAN_OFFLOAD_SLOTS ? L - PLAN_OFFLOAD_SLOTS : 0;
    double more = (double)host_layers * (double)asp_align_up(gp->t[t].bytes, 256);
    return (double)plan_host_bytes(p) + more <= p->target.host_memory_bytes;
}

/* The tensors that move with t from `from`: t and the other outputs of its
 * producing step kept the same way (q, k and v come from one rope step:
 * saving one of them alone saves no rebuild). */
static int group_of(const plan_t *p, int t, keep_t from, int *members) {
    const graph_t *g = &p->layer.g;
    int n = 0, s = sac_producer(g, t);
    members[n++] = t;
    for (int i = 0; s >= 0 && i < g->s[s].nout; i++) {
        int u = g->s[s].out[i];
        if (u != t && u >= 0 && u != g->output && p->layer.t[u].keep == from) members[n++] = u;
    }
    return n;
}

/* Set the layer tensors `members` to `k` and lay the plan out again; 1 if it fits. */
static int try_keep_group(plan_t *p, const config_t *cfg, const int *members, int n, keep_t k, const int *order,
                          int norder) {
    for (int i = 0; i < n; i++) p->layer.t[members[i]].keep = k;
    sac_derive(p, &p->layer, order, norder);
    return memplan_all(p, cfg);
}

static int try_keep(plan_t *p, const config_t *cfg, int t, keep_t k, const int *order, int norder) {
    return try_keep_group(p, cfg, &t, 1, k, order, norder);
}

/* The change in the layer's cost if the tensors `members` became `k`. */
static double cost_delta(const plan_t *p, const int *members, int n, keep_t k) {
    const graph_t *g = &p->layer.g;
    keep_t keep[GRAPH_MAX_TENSORS];
    for (int u = 0; u < g->nt; u++) keep[u] = p->layer.t[u].keep;
    double base = keeps_cost(p, g, keep);
    for (int i = 0; i < n; i++) keep[members[i]] = k;
    return keeps_cost(p, g, keep) - base;
}

/* One pass of improvements that must keep the plan fitting: among the
 * tensors kept `from` (with the rest of their step's outputs), take the one
 * whose change to `to` saves the most time, try it, keep it if the plan
 * still fits (device and host), and go on until none is left to try. */
static void improve(plan_t *p, const config_t *cfg, keep_t from, keep_t to, int *order, int norder) {
    int tried[GRAPH_MAX_TENSORS] = {0};
    const graph_t *g = &p->layer.g;
    for (;;) {
        int best = -1, members[GRAPH_MAX_IO + 1], nm = 0;
        double best_gain = 0;
        for (int t = 0; t < g->nt; t++) {
            if (tried[t] || t == g->input || p->layer.t[t].keep != from) continue;
            if (to == KEEP_OFFLOAD && !host_room(p, &p->layer, t)) continue;
            int grp[GRAPH_MAX_IO + 1], n = group_of(p, t, from, grp);
            double gain = -cost_delta(p, grp, n, to);
            if (gain > 0 && (best < 0 || gain > best_gain)) {
                best = t;
                best_gain = gain;
                nm = n;
                memcpy(members, grp, sizeof grp);
            }
        }
        if (best < 0) return;
        tried[best] = 1;
        if (!try_keep_group(p, cfg, members, nm, to, order, norder)) {
            try_keep_group(p, cfg, members, nm, from, order, norder);
            /* alone, then */
            if (nm > 1 && -cost_delta(p, &best, 1, to) > 0 && !try_keep(p, cfg, best, to, order, norder))
                try_keep(p, cfg, best, from, order, norder);
        }
    }
}

static double layers_recompute_flops(const plan_t *p) {
    double rc = 0;
    for (int l = 0; l < (int)p->model->L; l++) rc += sac_graph_recompute_flops(p, plan_layer_plan(p, l));
    return rc;
}

int sac_pass(plan_t *p, const config_t *cfg) {
    p->host_bandwidth = cfg->checkpointing.host_bandwidth_gbs > 0 ? cfg->checkpointing.host_bandwidth_gbs * 1e9
                                                                  : PLAN_HOST_BANDWIDTH;
    sac_policy_t policy = cfg->checkpointing.policy;
    p->inputs_offloaded = 0;
    if (policy != SAC_AUTO) {
        sac_apply_policy(p, cfg, policy);
        return memplan_all(p, cfg);
    }
    sac_apply_policy(p, cfg, SAC_SAVE_ALL);
    graph_plan_t *gp = &p->layer;
    const graph_t *g = &gp->g;
    const int offload = cfg->checkpointing.offload;
    /* attention's outputs are never recomputed here: rebuilding them reruns
     * O(S^2) attention (the host tier may take them) */
    int protect[GRAPH_MAX_TENSORS] = {0};
    protect[g->input] = 1;
    for (int s = 0; s < g->ns; s++)
        if (g->s[s].op == OP_ATTENTION)
            for (int i = 0; i < g->s[s].nout; i++) protect[g->s[s].out[i]] = 1;
    int order[GRAPH_MAX_TENSORS], norder = 0;
    int fits = memplan_all(p, cfg);
    /* 1. drop what is cheapest to rebuild per byte, until the plan fits */
    while (!fits) {
        keep_t keep[GRAPH_MAX_TENSORS];
        for (int t = 0; t < g->nt; t++) keep[t] = gp->t[t].keep;
        double base = keeps_cost(p, g, keep), best_ratio = 0;
        int best = -1;
        for (int t = 0; t < g->nt; t++) {
            if (protect[t] || keep[t] != KEEP_SAVE) continue;
            keep[t] = KEEP_RECOMPUTE;
            double ratio = (keeps_cost(p, g, keep) - base) / (double)gp->t[t].bytes;
            keep[t] = KEEP_SAVE;
            if (best < 0 || ratio < best_ratio) {
                best = t;
                best_ratio = ratio;
            }
        }
        if (best < 0) break;
        gp->t[best].keep = KEEP_RECOMPUTE;
        order[norder++] = best;
        sac_derive(p, gp, order, norder);
        fits = memplan_all(p, cfg);
    }
    if (offload) {
        /* 2. still too large: what is left on the device (attention's
         * outputs first, then the largest) goes to the host. Past the host
         * budget too: then only some layers can run this plan, and the
         * per-layer step below finds how many */
        while (!fits) {
            int best = -1;
            for (int t = 0; t < g->nt; t++) {
                if (t == g->input || gp->t[t].keep != KEEP_SAVE) continue;
                if (best < 0 || protect[t] > protect[best] ||
                    (protect[t] == protect[best] && gp->t[t].bytes > gp->t[best].bytes))
                    best = t;
            }
            /* the layer inputs (the checkpoints) right after attention's outputs */
            if (!p->inputs_offloaded && (best < 0 || !protect[best])) {
                p->inputs_offloaded = 1;
                fits = memplan_all(p, cfg);
                continue;
            }
            if (best < 0) break;
            order[norder++] = best;
            fits = try_keep(p, cfg, best, KEEP_OFFLOAD, order, norder);
        }
        /* 3. a recompute the copies can hide, within the budgets, goes to the host instead */
        if (fits) improve(p, cfg, KEEP_RECOMPUTE, KEEP_OFFLOAD, order, norder);
    }
    /* 4. take back what tiling and offload left room for: on the device again */
    if (fits) {
        improve(p, cfg, KEEP_OFFLOAD, KEEP_SAVE, order, norder);
        improve(p, cfg, KEEP_RECOMPUTE, KEEP_SAVE, order, norder);
        if (p->inputs_offloaded) {
            p->inputs_offloaded = 0;
            if (!memplan_all(p, cfg)) {
                p->inputs_offloaded = 1;
                memplan_all(p, cfg);
            }
        }
    }
    if (!fits) {
        /* Attention's outputs no longer fit in every layer. Per layer: the
         * first n layers keep the plan found so far (attention's outputs
         * saved), the others recompute attention too (policy full), with n
         * as large as fits; the saved bytes grow with n, so the first n
         * down from L that fits is the largest. Last resort: full recompute
         * in every graph (fits whenever any policy does). */
        plan_t *trial = asp_malloc(sizeof *trial, "plan trial");
        *trial = *p;
        sac_apply_policy(trial, cfg, SAC_FULL);
        int full_fits = memplan_all(trial, cfg);
        if (full_fits) {
            p->layer_lean = trial->layer;
            for (int n = (int)p->model->L - 1; n > 0 && !fits; n--) {
                p->layers_rich = n;
                fits = memplan_all(p, cfg);
            }
            if (!fits) p->layers_rich = (int)p->model->L;
        }
        if (!fits && (full_fits || trial->mem.device_total < p->mem.device_total)) {
            *p = *trial;
            fits = memplan_all(p, cfg);
        }
        /* When the host budget is what limits the offloading layers, keeping
         * attention's outputs on the device may serve more layers: take the
         * mix without offload if it recomputes less. */
        if (offload && plan_host_bytes(p) > 0) {
            config_t no_off = *cfg;
            no_off.checkpointing.offload = 0;
            *trial = *p;
            trial->layers_rich = (int)p->model->L;
            int alt_fits = sac_pass(trial, &no_off);
            if (alt_fits && (!fits || layers_recompute_flops(trial) < layers_recompute_flops(p))) {
                *p = *trial;
                fits = memplan_all(p, cfg);
            }
        }
        free(trial);
    }
    p->policy = SAC_AUTO;
    return fits;
}
