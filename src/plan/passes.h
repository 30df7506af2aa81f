/* Entry points of the individual plan passes, so that each can be run and
 * tested on its own. plan_compile (plan.c) chains them:
 *   sp_pass -> sac_pass (which drives sac_apply + memplan_* per candidate)
 * Files depend one way: graphcost.c <- memplan.c <- sac.c <- plan.c, explain.c. */
#ifndef AUTOSP_PLAN_PASSES_H
#define AUTOSP_PLAN_PASSES_H

#include <stddef.h>
#include <stdint.h>

#include "plan/plan.h"

/* ---------------------------------------------------------------- SP pass (sp.c) */

/* 1 when P ranks can shard this model's heads: Hq % P == 0 and either
 * Hkv % P == 0 or (P > Hkv and P % Hkv == 0, KV heads replicated). */
int sp_degree_valid(const model_t *m, int64_t P);

/* "1, 2, 4, 8": the valid degrees, restricted to divisors of world when world > 0. */
void sp_valid_degrees(const model_t *m, int world, char *buf, size_t len);

/* Degrees, padding and the rewritten graphs for SP degree `sp` at sequence
 * length `seq_len`. Fills p->model, target, world/sp/dp/zero_stage, seq_*,
 * head counts, micro_steps, the three graphs and every tensor's bytes (keeps
 * and offsets are left for the SAC pass and memory plan). Returns 0, or -1
 * with a message listing the valid choices. */
int sp_pass(plan_t *p, const config_t *cfg, const model_t *m, int world, int sp, int64_t seq_len,
            const plan_target_t *target, char *err, size_t errlen);

/* Rewrite one layer graph for P > 1 ranks (copy when P == 1): all-to-alls
 * around attention; attention works on hq_local / hkv_local heads; q, k, v
 * and o are marked packed (tensor_desc_t.packed = P) where their head count
 * divides by P, so the all-to-alls send and receive them in place. */
void sp_rewrite_layer(const graph_t *in, graph_t *out, int64_t P, int64_t hq_local, int64_t hkv_local);

/* Bytes of one tensor on one rank for the plan's sequence lengths and dtype. */
size_t plan_tensor_bytes(const plan_t *p, const tensor_desc_t *t);

/* ---------------------------------------------------------------- graph facts and costs (graphcost.c) */

/* 1 when the BACKWARD of step s reads tensor t (the executor contract). */
int sac_bwd_reads(const graph_step_t *s, int t);
/* Step index producing tensor t, -1 for the graph input. */
int sac_producer(const graph_t *g, int t);
/* 1 when any step's backward reads tensor t. */
int sac_read_by_backward(const graph_t *g, int t);
/* Per-rank forward FLOPs and all-to-all bytes of one step. */
double sac_step_flops(const plan_t *p, const graph_t *g, int s);
size_t sac_step_comm_bytes(const plan_t *p, const graph_t *g, int s);
/* FLOPs of recomputing step s under gp's keeps (a norm only, see
 * plan_recompute_norm_only, or the whole step). */
double sac_recompute_step_flops(const plan_t *p, const graph_plan_t *gp, int s);
/* FLOPs one run of gp's recompute steps costs (per rank). */
double sac_graph_recompute_flops(const plan_t *p, const graph_plan_t *gp);

/* Given keeps already set in gp->t[].keep, derive recompute_step (the closure
 * of steps that rebuild every KEEP_RECOMPUTE tensor), grad_first, and the
 * per-tensor recompute costs (attributed in `order`: each recomputed step is
 * charged to the first tensor of `order` that needs it; order may be NULL =
 * tensor id order). */
void sac_derive(const plan_t *p, graph_plan_t *gp, const int *order, int norder);

/* Mark (in rstep) every step needed to rebuild tensor t under the keeps, and
 * add the newly marked steps' FLOPs and all-to-all bytes to *flops and *comm
 * (either may be NULL). */
void sac_closure(const plan_t *p, const graph_t *g, const keep_t *keep, int t, int *rstep, double *flops,
                 size_t *comm);

/* ---------------------------------------------------------------- SAC pass (sac.c) */



/* Set the keeps of all three graphs for a fixed policy (save_all or full),
 * derive, and lay out memory. */
void sac_apply_policy(plan_t *p, const config_t *cfg, sac_policy_t policy);

/* The SAC pass: decide keeps per the configured policy under the budget and
 * lay out memory for the result. Returns 1 when the result fits the budget
 * (or no budget is set), 0 when it does not. */
int sac_pass(plan_t *p, const config_t *cfg);

/* What rebuilding tensor t would cost on its own, given the other keeps of
 * the plan (for --explain): FLOPs and all-to-all bytes per rank and layer. */
void sac_standalone_cost(const plan_t *p, const graph_plan_t *gp, int t, double *flops, size_t *comm);

/* ---------------------------------------------------------------- memory plan (memplan.c) */

/* Saved-slot, host-slot and workspace offsets of one graph from its keeps and
 * recompute steps; sets saved_bytes, offload_bytes, workspace_bytes. */
void memplan_graph(const plan_t *p, graph_plan_t *gp);

/* ZeRO sizes, loss chunk and every region of p->mem from the graph plans. */
void memplan_regions(plan_t *p, const config_t *cfg);

/* Lay out all three graphs and the regions; 1 when device_total fits the budget. */
int memplan_all(plan_t *p, const config_t *cfg);

/* Interval model used for workspace liveness (documented in docs/plan.md). */
enum { WS_FWD = 0, WS_BWD, WS_GRAD, WS_PRE, WS_SCRATCH_FWD, WS_SCRATCH_RECOMP, WS_SCRATCH_BWD, WS_SCRATCH_LOOP };
/* The times of the layer timeline, as graph_plan_t.ws_peak_phase names them. */
enum { WS_AT_FWD = 0, WS_AT_OFFLOAD, WS_AT_RELOAD, WS_AT_RECOMP, WS_AT_LOOP, WS_AT_BWD };

const char *plan_policy_name(sac_policy_t s);

#endif
