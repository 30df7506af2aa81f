/* The plan compiler: turns (config, model, world size, target) into the
 * executable sequence-parallel plan that the executor walks.
 *
 *   SP pass    (sp.c)      degrees, padding, head sharding, inserted all-to-alls
 *   SAC pass   (sac.c)     save / recompute / offload per tensor, under a budget
 *   memory plan(memplan.c) exact bytes and offsets of every buffer, per rank
 *   explain    (explain.c) the human-readable report (--explain)
 *
 * The plan knows no GPU: the target only says how many bytes an element takes
 * and how much memory a rank has. */
#ifndef AUTOSP_PLAN_H
#define AUTOSP_PLAN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "model/model.h"
#include "opshapes.h"
#include "plan/profile.h"

#define PLAN_NO_OFFSET ((size_t)-1)
/* Device slots the offloaded activations pass through (see memplan_t). Two:
 * a layer's copy to the host runs during the next layer's forward, its copy
 * back during the backward of the layer above it. */
#define PLAN_OFFLOAD_SLOTS 2
/* PCIe bandwidth each way between a GPU and its host, bytes/s, when the
 * config gives none (checkpointing.host_bandwidth_gbs): PCIe Gen5 x16 as an
 * H100/H200 reaches it with pinned memory (about 50 GB/s of the 64 GB/s). */
#define PLAN_HOST_BANDWIDTH 50e9

typedef struct {
    int act_bytes;          /* bytes per activation element: 4 (cpu fp32) or 2 (cuda bf16) */
    int param_bytes;        /* compute copy of the weights */
    int grad_bytes;         /* gradient buffer element */
    double memory_bytes;    /* per-rank device memory the plan must fit in; 0 = unlimited */
    double reserved_bytes;  /* kept free for the device context, NCCL and library handles */
    double host_memory_bytes; /* pinned host memory this rank may use (its share of the node); 0 = unlimited */
    int host_is_device;       /* 1: the device's memory is host memory (the cpu backend): auto never offloads */
    /* Scratch the target's ops need at the plan's shapes (e.g. the attention
     * library's workspace); NULL when unknown (planning without the device). */
    size_t (*scratch_bytes)(const op_shapes_t *shapes);
    /* Attention's scratch at its shapes (attn_rows, hq, hkv, hd), placed in
     * the layer workspace at the attention steps; NULL: none. */
    size_t (*attention_scratch_bytes)(const op_shapes_t *shapes);
    /* The card's rates, which `auto` prices placements with (predict.h);
     * NULL: the built-in h100 profile. */
    const card_profile_t *profile;
} plan_target_t;

typedef enum {
    KEEP_NOT_NEEDED = 0,    /* no backward step reads it */
    KEEP_SAVE,              /* kept in the layer's saved slot from forward to backward */
    KEEP_RECOMPUTE,         /* dropped after forward, rebuilt before this layer's backward */
    KEEP_OFFLOAD,           /* copied to host after forward, copied back before backward */
} keep_t;

const char *keep_name(keep_t k);

typedef struct {
    keep_t keep;
    size_t bytes;           /* size of this tensor for one layer on one rank */
    size_t saved_off;       /* KEEP_SAVE / GRAPH_INPUT: offset in the layer's saved slot;
                               KEEP_OFFLOAD: offset in the layer's host slot */
    size_t fwd_off;         /* workspace offset of the forward instance (PLAN_NO_OFFSET: lives in the saved slot) */
    size_t bwd_off;         /* workspace offset of the backward instance (recomputed / reloaded); PLAN_NO_OFFSET if none */
    size_t grad_off;        /* workspace offset of its gradient; PLAN_NO_OFFSET if it has none */
    double recompute_flops; /* cost of rebuilding it (0 unless KEEP_RECOMPUTE) */
    size_t recompute_comm_bytes; /* all-to-all bytes a recompute moves */
    int tiled;              /* 1: an intermediate of the graph's tiled region, its buffers one tile tall */
    /* Attention in pieces (graph_plan_t.pieces > 1): 1 for a tensor made
     * inside the pieced region. It is stored piece-major: piece j's part is
     * the j-th of `pieces` equal contiguous parts of its bytes (its heads
     * j H/G .. (j+1) H/G - 1, in the layout the ops give a piece). */
    int pieced;
    int piece_buf;          /* 1: pieced and neither saved nor offloaded: its workspace buffers hold one piece */
    /* 1 (pieced plans): an addend of the residual add that makes the graph
     * output, read by nothing else: its gradient is the output's, so it has
     * no buffer of its own (the executor reads the residual gradient) */
    int grad_is_output;
    /* 1 (pieced plans): the other addend of an ADD_RMSNORM whose first addend
     * is the graph input: the fused backward writes the same gradient to
     * both, the input's first, and every reader of this one comes before the
     * next write to the input's gradient, so it is read there (no buffer) */
    int grad_is_input;
    size_t pre_off;         /* a piece_buf tensor rebuilt before the backward (plan_piece_prepass): the
                               workspace offset of that rebuild's piece, live through it only */
} tensor_plan_t;

typedef struct {
    graph_t g;                          /* the graph after the SP pass */
    tensor_plan_t t[GRAPH_MAX_TENSORS];
    int recompute_step[GRAPH_MAX_STEPS];/* 1: run this forward step again before the backward */
    int grad_first[GRAPH_MAX_STEPS][GRAPH_MAX_IO];
                                        /* 1: this step's backward is the first to write the
                                           gradient of its input i (overwrite), 0: accumulate */
    size_t saved_bytes;                 /* size of one saved slot (per layer for the layer graph) */
    size_t offload_bytes;               /* host bytes per layer */
    size_t workspace_bytes;             /* workspace this graph needs (its offsets are below this) */
    /* Tiled region (plan_tile_region): steps tile_begin..tile_end run tile by
     * tile over the sequence, tile_rows tokens at a time (the last tile may be
     * shorter), forward and backward, their recompute inside the backward's
     * tile loop. tile_rows 0: no region. */
    int tile_begin, tile_end;
    int64_t tile_rows;
    /* Attention in pieces (plan_piece_region): steps piece_begin..piece_end
     * (the QKV projection through o_proj) run once per group of KV heads,
     * forward, recompute and backward; pieces 1: no region. */
    int pieces, piece_begin, piece_end;
    /* The most workspace bytes live at one time of the layer timeline
     * (memplan.c: forward steps, offload, reload, recompute, backward, with
     * the pieced region's rebuild inside the backward's piece loop) and that
     * time; workspace_bytes (the packing) is at least this. */
    size_t ws_live_peak;
    int ws_peak_phase, ws_peak_step;    /* WS_AT_* (passes.h) and the step, when the peak is at a step */
    /* Attention's scratch (target.attention_scratch_bytes) inside the
     * workspace, one buffer for each time the attention step runs: its
     * forward, its recompute, its backward (PLAN_NO_OFFSET where it does not
     * run); attn_scratch_bytes 0: none. */
    size_t attn_scratch_bytes;
    size_t attn_scratch_off[4];     /* [3]: its rebuild inside the backward's piece loop (pieced region) */
} graph_plan_t;

typedef enum {
    ARENA_PARAMS = 0,       /* compute weights, gradients */
    ARENA_OPTIMIZER,        /* ZeRO shard: fp32 master, AdamW m and v */
    ARENA_ACTIVATIONS,      /* saved activations of all layers, final hidden */
    ARENA_WORKSPACE,        /* reused per-layer workspace, loss chunk, staging, token ids */
    ARENA_HOST,             /* pinned host memory for offloaded activations */
    ARENA_HOST_STATE,       /* pinned host memory for model state (optimizer offload) */
    ARENA__COUNT
} arena_t;

const char *arena_name(arena_t a);

/* Bucket buffer slots: 0 the embedding's (tied embeddings keep it from the
 * LM head's backward to the embedding's), 1 the tail's (and the embedding's
 * when untied: they are never live together), 2 and 3 the layers', alternating. */
#define PLAN_BUCKET_SLOTS 4
#define PLAN_PARAM_STAGES 4

typedef struct {
    int arena;
    size_t offset;          /* bytes from the arena's base */
    size_t bytes;
} region_t;

typedef struct {
    region_t params;        /* ZeRO 0-2: n_params_padded * param_bytes; ZeRO-3: this rank's shard, shard_len
                               (on the host with params_offload) */
    region_t param_dev_stage; /* params_offload: one bucket slice on the device, the shard's part copied in
                               just before the bucket's gather reads it */
    region_t grads;         /* ZeRO 0-1: n_params_padded * grad_bytes; ZeRO 2-3: none (bucket buffers) */
    region_t master;        /* shard_len fp32 (device, or host with optimizer offload) */
    region_t adam_m, adam_v;/* shard_len fp32 each (same tier as master) */
    /* Bucket buffers, by slot (plan_bucket_slot): ZeRO-3 gathers a bucket's
     * weights into param_buf[slot] just before they are used; ZeRO 2-3
     * produce a bucket's gradient into grad_buf[slot]. */
    region_t param_buf[PLAN_BUCKET_SLOTS], grad_buf[PLAN_BUCKET_SLOTS];
    region_t grad_shard;    /* ZeRO 2-3, or optimizer offload: this rank's reduced gradient, shard_len elements
                               of host_grad_bytes on the host with offload, else fp32 on the device */
    region_t grad_stage[PLAN_BUCKET_SLOTS]; /* optimizer offload: pinned staging of each slot's slice of the
                               gradient (fp32) coming off the device */
    region_t param_stage[PLAN_PARAM_STAGES]; /* optimizer offload: pinned bucket-slice staging, updated
                               weights going back (a ring: AdamW runs ahead of the next forward) */
    region_t saved_layers;  /* L slots of layer.saved_bytes, slot l at offset + l * layer.saved_bytes */
    region_t final_hidden;  /* epilogue input [seq_local, d] */
    region_t workspace;     /* graph workspaces (all three share it; size = max) */
    region_t resid_grad[2]; /* ping-pong gradient of the residual stream between layers [seq_local, d] */
    region_t logits;        /* one loss chunk [loss_chunk, V]: inside the workspace, after the epilogue's buffers */
    region_t a2a_send, a2a_recv; /* Ulysses staging for the largest all-to-all */
    region_t tokens, targets, positions; /* int32 [seq_local] */
    region_t doc_start, doc_cu; /* data.documents eos: int32 [seq_pad] and [seq_pad + 1] (attn_docs_t) */
    region_t rope_freq;     /* fp64 [hd/2] inverse frequencies */
    region_t scalars;       /* fp32 scalars: loss sum, gradient sum of squares (16 floats) */
    region_t scratch;       /* the backend's op scratch (target.scratch_bytes at op_shapes) */
    region_t offload;       /* host: one slot per layer 0 .. offload_host_layers-1 (plan_layer_host_off) */
    /* Device staging of the offloaded tensors: PLAN_OFFLOAD_SLOTS slots of
     * offload_slot_bytes, layer l in slot l % PLAN_OFFLOAD_SLOTS. A layer's
     * offloaded tensors are copied there at the end of its forward and go to
     * the host from there on the copy stream; the last PLAN_OFFLOAD_SLOTS
     * layers' never leave it (their backward comes first). */
    region_t offload_stage;
    size_t offload_slot_bytes;
    int offload_host_layers;
    size_t arena_bytes[ARENA__COUNT];
    size_t device_total;    /* predicted peak device bytes of the engine's arenas */
    size_t host_total;      /* pinned host bytes (both host arenas: plan_host_bytes) */
    size_t host_state;      /* of which model state (ARENA_HOST_STATE) */
    double pcie_bytes;      /* bytes the model state moves between host and device per optimizer step */
    double pcie_s;          /* the time the plan expects them to take (at plan_t.host_bandwidth) */
} memplan_t;

typedef struct {
    /* inputs */
    const model_t *model;
    plan_target_t target;
    sac_policy_t policy;
    /* degrees */
    int world, sp, dp, zero_stage;
    int zero_auto;          /* 1: the stage (and offload) were chosen by the plan */
    int optim_offload;      /* 1: master, moments and gradient shard in pinned host memory, AdamW on the CPU */
    int params_offload;     /* 1 (ZeRO-3 with optim_offload): the bf16 weight shard in pinned host memory too */
    int host_grad_bytes;    /* element size of the host gradient shard: 4, or 2 (bf16) when fp32 does not fit */
    int64_t seq_len;        /* S as configured */
    int64_t seq_pad;        /* S rounded up to a multiple of sp (padded targets are masked) */
    int64_t seq_local;      /* seq_pad / sp: tokens per rank */
    int64_t q_heads_local;  /* Hq / sp */
    int64_t kv_heads_local; /* Hkv / sp, or 1 when replicated */
    int kv_replication;     /* ranks holding each KV head (1: no replication) */
    int64_t micro_steps;    /* samples each DP rank processes per optimizer step */
    int64_t loss_chunk;     /* tokens per LM head + loss chunk */
    int64_t mlp_tile_tokens;/* checkpointing.mlp_tile_tokens (0: the plan chooses) */
    int attn_pieces;        /* G, the KV-head groups attention runs in (1: whole; plan_compile chooses for auto) */
    int attn_pieces_lean;   /* 1: a pieced region rebuilt before the backward keeps no attention output whole
                               through it (the piece loop rebuilds attention again); 0: it keeps them */
    int documents;          /* 1: samples are packed documents (data.documents eos) */
    /* parameters and ZeRO: the flat parameter and gradient buffers hold the
     * model's parameters in gradient buckets (plan_bucket), each padded to a
     * multiple of 64 * shards elements so that it splits evenly over the ranks */
    size_t n_params;        /* model elements */
    size_t n_params_padded; /* elements of the flat buffers: the sum of the padded buckets */
    int shards;             /* ranks splitting each bucket's optimizer state (world for ZeRO-1, else 1) */
    size_t shard_len;       /* elements of the optimizer state each rank owns (n_params_padded / shards) */
    size_t bucket_len[3];   /* padded lengths: the embedding bucket, each layer's, the tail's */
    /* graphs and decisions */
    graph_plan_t prologue, layer, epilogue;
    /* Per-layer SAC: layers 0 .. layers_rich-1 run `layer`; the others run
     * `layer_lean`, the full-recompute plan (attention rebuilt too). Equal to
     * L unless memory only allows some layers to keep attention's outputs. */
    graph_plan_t layer_lean;
    int layers_rich;
    /* 1: every layer's input (the checkpoint, saved_off 0 of its host slot)
     * goes to the host tier like the offloaded tensors: the layer below
     * writes it straight into its staging slot, where its forward and
     * backward read it */
    int inputs_offloaded;
    memplan_t mem;
    op_shapes_t op_shapes;  /* largest operand shapes, for the backend's scratch */
    /* cost figures */
    double flops_per_step;  /* model FLOPs of one optimizer step, whole job (6N + attention, see docs) */
    double recompute_flops_per_step; /* extra FLOPs the SAC choice spends, whole job */
    double host_bandwidth;  /* bytes/s each way to the host tier (checkpointing.host_bandwidth_gbs) */
} plan_t;

/* 1 when recomputing step si of gp runs only a norm: an ADD_RMSNORM whose h
 * (first output) is kept, saved or offloaded, rebuilds hn = rmsnorm(h) from
 * that h and needs neither addend (the executor, SAC costs and the memory
 * plan all follow this). */
int plan_recompute_norm_only(const graph_plan_t *gp, int si);

/* 1 when tensor t's gradient is written over t's own backward instance:
 * t is rebuilt (recomputed or reloaded), its only reader is a SWIGLU (whose
 * backward reads each gate/up pair before writing its gradient there) or a
 * MATMUL on the unpacked layout (whose backward forms the weight gradient
 * before the input gradient), and no other backward reads t. The backends'
 * swiglu_bwd and matmul_bwd may run in place. At long S these are the
 * largest buffers of the layer's backward (gu is [S, 2f], act [S, f]). */
int plan_grad_in_place(const graph_plan_t *gp, int t);

/* The tiled region of a graph plan, from its keeps: a MATMUL -> SWIGLU ->
 * MATMUL chain (the MLP) whose two intermediates are both recomputed and
 * read by nothing else. Every op in it works row by row, so it can run over
 * the sequence in tiles: its intermediates then take one tile of memory
 * instead of the whole sequence, and their recompute moves into the
 * backward's tile loop. Sets gp->tile_begin/tile_end/tile_rows and the
 * tensors' `tiled` flags (tile_rows 0 when there is no such chain).
 * tile_rows: mlp_tile_tokens if set, else seq_local / ceil(2f / d) (the
 * intermediates' tiles no larger than a [seq_local, d] activation), never
 * below 4096 tokens; no tiling when that is a single tile. */
void plan_tile_region(const plan_t *p, graph_plan_t *gp);

/* The pieced region of a graph plan (attention in KV-head groups): with
 * p->attn_pieces = G > 1 dividing the KV heads per rank (no replication),
 * the steps from the QKV projection to o_proj run once per group, the
 * group's rows of W_qkv and columns of W_o; the tensors made inside
 * (qkv, q, k, v, the head-sharded ones, o, lse) are `pieced`, and those
 * neither saved nor offloaded hold one piece (`piece_buf`). o_proj's output
 * and the QKV projection's input gradient add up over the pieces. Sets
 * gp->pieces (1: none), piece_begin/end and the tensors' flags. */
void plan_piece_region(const plan_t *p, graph_plan_t *gp);
/* 1 when the pieced region's recompute runs before the backward too (a
 * recompute step after the region needs o_proj's output): each piece's
 * steps then run again in the backward's piece loop. */
int plan_piece_prepass(const graph_plan_t *gp);
/* The step that rebuilds the pieced region's input (xn) once more just
 * before the backward's piece loop, or -1: with a prepass, when that input
 * is recomputed, read only inside the region, and made by a step of one
 * output, it is not kept from the prepass through the backward of the steps
 * after the region (its prepass copy is a buffer of its own, pre_off). */
int plan_piece_input_rebuild(const graph_plan_t *gp);
/* 1 when the backward's piece loop rebuilds step si of the pieced region:
 * a recompute step before o_proj with an output held one piece at a time
 * (attention's outputs rebuilt before the backward are kept whole). */
int plan_piece_loop_rebuilds(const graph_plan_t *gp, int si);
/* 1 when gp's pieced region holds step si. */
int plan_in_pieces(const graph_plan_t *gp, int si);
/* 1 when G is a piece count the plan can use: G divides the KV heads per
 * rank (1 with KV replication). */
int plan_pieces_valid(const plan_t *p, int G);

/* Whether all-to-all step si of a graph plan goes through the staging
 * buffers (a2a_send, a2a_recv) in its forward and in its backward. A tensor
 * the SP pass stored packed is sent from, or received into, its own buffer
 * (and its gradient likewise); the others are packed into a2a_send or
 * unpacked from a2a_recv (KV replication), as is a gradient that must be
 * added to one already there. The executor and the memory plan both ask. */
typedef struct {
    int fwd_send, fwd_recv, bwd_send, bwd_recv;
} a2a_staging_t;
a2a_staging_t plan_a2a_staging(const graph_plan_t *gp, int si);

/* 1 when the laid-out plan fits both tiers: device_total within
 * target.memory_bytes and host_total within target.host_memory_bytes. */
int plan_fits(const plan_t *p);

/* plan_compile's result when a plan exists but does not fit the budget: `p`
 * is then the leanest plan found (for --explain to show) and err says why. */
#define PLAN_NO_FIT (-2)

/* Compile the plan for `world` ranks. Returns 0; -1 with one message naming
 * the problem and the valid choices for impossible degrees (p unusable); or
 * PLAN_NO_FIT when nothing fits target->memory_bytes. */
int plan_compile(plan_t *p, const config_t *cfg, const model_t *m, int world,
                 const plan_target_t *target, char *err, size_t errlen);

/* --explain: degrees, layer steps with collectives, SAC table, memory table,
 * longest sequence that fits. */
void plan_explain(const plan_t *p, const config_t *cfg, FILE *out);

/* Longest S (multiple of `granule`) for which plan_compile succeeds with the
 * same config, world and target; 0 if none. */
int64_t plan_longest_seq(const config_t *cfg, const model_t *m, int world,
                         const plan_target_t *target, int64_t granule);
/* The same, counting only plans in which no layer recomputes attention. */
int64_t plan_longest_seq_no_attention_recompute(const config_t *cfg, const model_t *m, int world,
                                                const plan_target_t *target, int64_t granule);

/* Gradient buckets, in the order of the flat buffers: 0 the embedding
 * (model.embed_tokens), 1..L layer l-1, L+1 the tail (final norm, and the LM
 * head when it is not tied). A bucket's gradient is complete once the
 * backward has left its graph, so its reduction can start then. Rank r owns
 * the slice [flat_begin + r * slice_len, + slice_len) of every bucket (ZeRO-1;
 * with one shard the whole bucket), kept at shard_off in its optimizer shard. */
typedef struct {
    size_t model_begin, model_len; /* the bucket's elements in the model's parameter table */
    size_t flat_begin, flat_len;   /* where they sit in the flat buffers (flat_len padded) */
    size_t slice_len;              /* flat_len / shards */
    size_t shard_off;              /* where each rank's slice sits in its optimizer shard */
} plan_bucket_t;

int plan_n_buckets(const plan_t *p);
/* Slot of bucket b's buffers (param_buf / grad_buf, PLAN_BUCKET_SLOTS). */
int plan_bucket_slot(const plan_t *p, int b);
/* Elements of the largest padded bucket that uses slot s (0 when none does). */
size_t plan_slot_len(const plan_t *p, int s);
void plan_bucket(const plan_t *p, int b, plan_bucket_t *out);
/* Bucket of a parameter graph: the layer graph's bucket is layer + 1. */
int plan_layer_bucket(const plan_t *p, int layer);
/* Flat buffer index of model parameter element `model_index`. */
size_t plan_flat_index(const plan_t *p, size_t model_index);

/* The graph plan layer l runs (`layer` or `layer_lean`, see layers_rich),
 * and where its saved slot (in saved_layers) and host slot (in offload)
 * begin: the rich layers' slots first, then the lean layers'. */
const graph_plan_t *plan_layer_plan(const plan_t *p, int layer);
size_t plan_layer_saved_off(const plan_t *p, int layer);
size_t plan_layer_host_off(const plan_t *p, int layer);
/* 1 when graph plan gp (one of p's) keeps its input in its host slot. */
int plan_input_offloaded(const plan_t *p, const graph_plan_t *gp);
/* Host bytes the plan uses per rank (every region of the host arena); what
 * target.host_memory_bytes bounds. */
size_t plan_host_bytes(const plan_t *p);
/* 1 when some layer's plan recomputes attention. */
int plan_recomputes_attention(const plan_t *p);
/* The expected time of one layer's offload copies (per rank, seconds) at the
 * plan's PCIe figure, and the part of it the layer's compute does not hide. */
void plan_offload_times(const plan_t *p, const graph_plan_t *gp, double *copy_s, double *exposed_s);
/* 1 when layers use two different plans (0 < layers_rich < L). */
int plan_layers_mixed(const plan_t *p);

/* Model FLOPs per token at sequence length S: 6*N + 6*L*S*d' where N are the
 * matmul weights (LM head included) and the second term is causal attention
 * (d' = Hq * head_dim). Used for TFLOP/s and MFU. */
double plan_flops_per_token(const model_t *m, double seq_len);

#endif
