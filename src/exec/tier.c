/* The activation tier: saved activations that the plan sends to pinned host
 * memory (checkpointing.offload) and brings back for the backward.
 * Owns the offload fields of struct exec (offload, offload_stage); reads the
 * plan and the workspace; touches no weight, gradient or optimizer state.
 *
 * Layer l's offloaded tensors pass through device staging slot
 * l % PLAN_OFFLOAD_SLOTS (copy tag = slot). Forward: at the end of the
 * layer, wait until the slot's previous copy to the host is done, copy the
 * tensors into the slot, and send the slot to the host on the copy stream.
 * Backward: wait for the slot's copy back, take the tensors from it, then
 * start the copy back of the layer below into its slot, which the layer
 * above has just emptied. The last PLAN_OFFLOAD_SLOTS layers never leave
 * their slots. */
#include <stdint.h>

#include "exec/internal.h"

uint8_t *ex_stage_slot(exec_t *e, int layer) {
    return e->offload_stage + (size_t)(layer % PLAN_OFFLOAD_SLOTS) * e->plan->mem.offload_slot_bytes;
}

static int goes_to_host(const exec_t *e, int layer) {
    return layer >= 0 && layer < e->plan->mem.offload_host_layers && plan_layer_plan(e->plan, layer)->offload_bytes;
}

void ex_offload_layer(exec_t *e, int layer) {
    const graph_plan_t *gp = plan_layer_plan(e->plan, layer);
    const int tag = layer % PLAN_OFFLOAD_SLOTS;
    uint8_t *slot = ex_stage_slot(e, layer);
    if (goes_to_host(e, layer - PLAN_OFFLOAD_SLOTS)) e->be->copy_wait(tag);
    for (int t = 0; t < gp->g.nt; t++)
        if (gp->t[t].keep == KEEP_OFFLOAD) e->be->copy(slot + gp->t[t].saved_off, e->ws + gp->t[t].fwd_off, gp->t[t].bytes);
    if (goes_to_host(e, layer))
        e->be->copy_async(e->offload + plan_layer_host_off(e->plan, layer), slot, gp->offload_bytes, 1, tag);
}

static void prefetch_layer(exec_t *e, int layer) {
    if (!goes_to_host(e, layer)) return;
    const graph_plan_t *gp = plan_layer_plan(e->plan, layer);
    e->be->copy_async(ex_stage_slot(e, layer), e->offload + plan_layer_host_off(e->plan, layer), gp->offload_bytes, 0,
                      layer % PLAN_OFFLOAD_SLOTS);
}

void ex_reload_layer(exec_t *e, int layer) {
    const graph_plan_t *gp = plan_layer_plan(e->plan, layer);
    if (gp->offload_bytes) {
        const uint8_t *slot = ex_stage_slot(e, layer);
        if (goes_to_host(e, layer)) e->be->copy_wait(layer % PLAN_OFFLOAD_SLOTS);
        for (int t = 0; t < gp->g.nt; t++)
            if (gp->t[t].keep == KEEP_OFFLOAD)
                e->be->copy(e->ws + gp->t[t].bwd_off, slot + gp->t[t].saved_off, gp->t[t].bytes);
    }
    /* one layer ahead of its backward */
    prefetch_layer(e, layer - 1);
}

/* Before a graph writes `layer`'s input into that layer's staging slot: the
 * slot's previous layer must have reached the host. */
void ex_before_layer_input(exec_t *e, int layer) {
    if (layer >= (int)e->model->L || !plan_input_offloaded(e->plan, plan_layer_plan(e->plan, layer))) return;
    if (goes_to_host(e, layer - PLAN_OFFLOAD_SLOTS)) e->be->copy_wait(layer % PLAN_OFFLOAD_SLOTS);
}
